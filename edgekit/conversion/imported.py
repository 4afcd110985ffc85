"""A GGUF made elsewhere (llama.cpp's scripts, a hub download, a model store's blob) as an edgekit
artifact: the file hard-linked (or copied) into a folder with an edgekit.json built from the file's own
header: architecture, context length, chat template, special tokens, quantization. Nothing is
converted and nothing is verified (the manifest has no fidelity report, so rankings go by precision)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.artifact import file_entry, output_lock, staged_output, write_manifest
from edgekit.errors import ArtifactError

IMPORTED = "imported GGUF"  # the manifest's "exporter": what made the file is not known


def wrap_gguf(path: Path, out: Path, say: Callable[[str], None] | None = None) -> Path:
    """`out` as an artifact holding `path` (a .gguf file) and its manifest; returns `out`. The file
    is checked as edgekit.load would check it (llama.cpp aborts on some malformed files) first."""
    from edgekit.runtimes.gguf_preflight import preflight

    path = Path(path)
    header = preflight(path)
    facts = _facts(path, header)
    with output_lock(out), staged_output(out) as stage:
        target = stage / path.name
        try:
            os.link(path, target)  # no second copy of gigabytes; the file is only read
        except OSError:  # another file system, or links not allowed
            if say is not None:
                say(f"copying {path} into {out} ({path.stat().st_size / 2**20:.0f} MB)")
            shutil.copyfile(path, target)
        write_manifest(stage, {**facts, "model_file": path.name, "files": [file_entry(stage, path.name)]})
    return out


def _text(value: Any) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else None


def _facts(path: Path, header) -> dict[str, Any]:
    import gguf

    from edgekit.converters.gguf_info import gguf_stats, precision_note
    from edgekit.converters.quant import GGUF_QUANTS
    from edgekit.version import __version__

    meta = header.metadata
    arch = _text(meta.get("general.architecture")) or ""
    tokens = meta["tokenizer.ggml.tokens"]
    keys = {"bos": "bos", "eos": "eos", "unk": "unknown", "pad": "padding"}  # GGUF's key names
    ids = {ours: meta.get(f"tokenizer.ggml.{theirs}_token_id") for ours, theirs in keys.items()}
    ids = {k: v for k, v in ids.items() if isinstance(v, int)}
    if ids.get("eos") is None:
        raise ArtifactError(f"{path}: tokenizer.ggml.eos_token_id is missing: generation would never stop")
    file_type = meta.get("general.file_type")
    scheme = label = "unknown"
    if isinstance(file_type, int):
        known = {q.file_type: q for q in GGUF_QUANTS.values()}
        if file_type in known:
            scheme, label = known[file_type].name, known[file_type].label
        else:
            try:
                scheme = label = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
            except ValueError:
                pass
    tensors = [(ne, kind) for ne, kind, _ in header.tensors.values()]
    stats = gguf_stats(tensors)
    note = precision_note(tensors, scheme, label)
    context = meta.get(f"{arch}.context_length")
    embedder = f"{arch}.pooling_type" in meta
    facts: dict[str, Any] = {
        "edgekit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "format": "gguf",
        "task": "feature-extraction" if embedder else "text-generation",
        "source": {"id": str(path.resolve()), "kind": "gguf-file"},
        "exporter": IMPORTED,
        "gguf_architecture": arch,
        "chat_template": _text(meta.get("tokenizer.chat_template")),
        "context_length": context if isinstance(context, int) else None,
        "quantization": {"scheme": scheme, "label": label, "bits_per_weight": stats["bits_per_weight"],
                         "tensor_types": stats["tensor_types"], **({"note": note} if note else {})},
        "tokenizer": {
            "model": _text(meta.get("tokenizer.ggml.model")), "pre": _text(meta.get("tokenizer.ggml.pre")),
            "vocab_size": len(tokens), "special_ids": ids,
            "add_bos": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            "add_eos": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
            "bos_text": _text(tokens[ids["bos"]]) if "bos" in ids else None,
            "eos_text": _text(tokens[ids["eos"]]),
        },
    }
    if embedder:  # llama.cpp's pooling types: 1 mean, 2 CLS, 3 last
        mode = {1: "mean", 2: "cls", 3: "last"}.get(meta.get(f"{arch}.pooling_type"), "mean")
        facts["pooling"] = {"mode": mode, "normalize": True}
    return facts
