"""convert(): one call from a Hugging Face checkpoint to a finished, verified-on-load artifact."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .artifact import file_entry, staged_output, write_manifest
from .errors import ConversionError

FORMATS = ("gguf",)
# Side files every artifact carries so runtimes can render chat templates and read generation defaults.
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
               "chat_template.jinja")
BUNDLED_PREFIX = "bundled:"

Progress = Callable[[str, int, int], None]


@dataclass
class ConversionResult:
    path: Path
    format: str
    quant: str  # scheme actually written, e.g. "Q4_K_M"
    label: str  # what was asked for in family words, e.g. "int4"
    architecture: str
    files: list[dict[str, Any]]
    size_bytes: int
    bits_per_weight: float
    tensor_types: dict[str, int]
    seconds: float
    manifest: dict[str, Any] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data.pop("manifest")
        return data


def _parse_formats(to: str | list[str] | tuple[str, ...]) -> list[str]:
    items = [p.strip().lower() for p in (to.split(",") if isinstance(to, str) else to) if p.strip()]
    if not items:
        raise ConversionError("no output format given; use to='gguf'")
    for item in items:
        if item == "onnx":
            raise ConversionError("the ONNX path is not available in this version yet; use to='gguf'")
        if item not in FORMATS:
            raise ConversionError(f"unknown format '{item}'; supported: {', '.join(FORMATS)}")
    return list(dict.fromkeys(items))


def _resolve_bundled(source: str | os.PathLike[str]) -> str | os.PathLike[str]:
    if isinstance(source, str) and source.startswith(BUNDLED_PREFIX):
        from . import bundled

        return bundled.path(source[len(BUNDLED_PREFIX):] or bundled.DEFAULT)
    return source


def _basename(source: str | os.PathLike[str], ckpt_path: Path) -> str:
    text = str(source)
    name = text[len(BUNDLED_PREFIX):] if text.startswith(BUNDLED_PREFIX) else Path(text).name or ckpt_path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower() or "model"


def convert(
    source: str | os.PathLike[str],
    to: str | list[str] = "gguf",
    quant: str = "int4",
    output: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    revision: str | None = None,
    allow_remote_code: bool = False,
    allow_pickle: bool = False,
    progress: Progress | None = None,
) -> ConversionResult:
    """Convert a Hugging Face checkpoint (directory, hub id or 'bundled:NAME') into an artifact.

    quant: "fp32", "fp16", "bf16", "int8" (Q8_0), "int4" (Q4_K_M) or a llama.cpp type name.
    The artifact directory holds the model file, tokenizer side files and edgekit.json; it appears
    only when complete. Raises an EdgekitError subclass for every problem with the inputs.
    """
    from edgekit.converters.gguf_info import gguf_stats
    from edgekit.converters.quant import gguf_quant
    from edgekit.converters.source import inspect

    start = time.perf_counter()
    _parse_formats(to)  # only GGUF exists in this version; anything else fails here, before work starts
    scheme = gguf_quant(quant)
    if progress:
        progress("inspect", 0, 1)
    ckpt = inspect(_resolve_bundled(source), revision=revision, allow_remote_code=allow_remote_code,
                   allow_pickle=allow_pickle)
    from edgekit.converters.gguf_convert import spec_for

    spec_for(ckpt)  # unsupported architectures fail before anything is created
    if progress:
        progress("inspect", 1, 1)
    base = _basename(source, ckpt.path)
    final = Path(output) if output is not None else Path.cwd() / f"{base}-{scheme.name.lower()}"
    # Hash the source on the other core while converting (hashlib releases the GIL).
    hasher = ThreadPoolExecutor(max_workers=1)
    source_hashes = hasher.submit(ckpt.file_hashes)
    with hasher, staged_output(final, overwrite=overwrite) as stage:
        model_file = f"{base}.{scheme.name}.gguf"
        info = _write_gguf(ckpt, stage, model_file, scheme, base, progress)
        side = [n for n in _SIDE_FILES if ckpt.has(n)]
        for name in side:
            shutil.copyfile(ckpt.path / name, stage / name)
        if progress:
            progress("hash", 0, 1)
        files = [file_entry(stage, n) for n in [model_file, *side]]
        stats = gguf_stats(stage / model_file)  # from the file: llama.cpp chose the real types
        manifest = {
            "edgekit_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "format": "gguf",
            "task": info["task"],
            "architecture": ckpt.architecture,
            "gguf_architecture": info["arch"],
            "source": {"id": str(source), "path": str(ckpt.path), "revision": ckpt.revision,
                       "files": source_hashes.result()},
            "quantization": {"scheme": scheme.name, "label": scheme.label,
                             "bits_per_weight": stats["bits_per_weight"], "tensor_types": stats["tensor_types"]},
            "model_file": model_file,
            "files": files,
            "tokenizer": {**{k: info[k] for k in ("model", "pre", "vocab_size", "special_ids", "add_bos", "add_eos")},
                          **_special_texts(ckpt)},
            "chat_template": info["chat_template_text"],
            "context_length": ckpt.config.get("max_position_embeddings"),
            "tool_versions": _tool_versions(),
            "fidelity": None,
            "profile": None,
        }
        write_manifest(stage, manifest)
        if progress:
            progress("hash", 1, 1)
    return ConversionResult(
        path=final.absolute(), format="gguf", quant=scheme.name, label=scheme.label,
        architecture=ckpt.architecture, files=files, size_bytes=sum(f["size"] for f in files),
        bits_per_weight=stats["bits_per_weight"], tensor_types=stats["tensor_types"],
        seconds=round(time.perf_counter() - start, 3), manifest=manifest,
    )


def _write_gguf(ckpt, stage: Path, model_file: str, scheme, base: str, progress: Progress | None) -> dict[str, Any]:
    from edgekit.converters.gguf_convert import source_precision, write_gguf

    if scheme.direct is not None:
        info = write_gguf(ckpt, stage / model_file, scheme.direct, scheme.file_type, base, progress)
    else:
        import gguf

        from edgekit.converters.llama_quantize import quantize

        inter_type = source_precision(ckpt)
        inter_ft = {gguf.GGMLQuantizationType.F32: gguf.LlamaFileType.ALL_F32,
                    gguf.GGMLQuantizationType.BF16: gguf.LlamaFileType.MOSTLY_BF16,
                    gguf.GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16}[inter_type]
        intermediate = stage / f".intermediate.{inter_type.name}.gguf"
        try:
            info = write_gguf(ckpt, intermediate, inter_type, inter_ft, base, progress)
            if progress:
                progress("quantize", 0, 1)
            quantize(intermediate, stage / model_file, scheme.file_type)
            if progress:
                progress("quantize", 1, 1)
        finally:
            intermediate.unlink(missing_ok=True)
    info["chat_template_text"] = _chat_template(ckpt)
    return info


def _chat_template(ckpt) -> str | None:
    if ckpt.has("chat_template.jinja"):
        return (ckpt.path / "chat_template.jinja").read_text(encoding="utf-8")
    config = ckpt.json_file("tokenizer_config.json") or {}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def _special_texts(ckpt) -> dict[str, str]:
    """BOS/EOS as text, for chat templates that write them (Llama-3's does)."""
    config = ckpt.json_file("tokenizer_config.json") or {}
    out = {}
    for typ in ("bos", "eos"):
        value = config.get(f"{typ}_token")
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[f"{typ}_text"] = value
    return out


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("gguf", "numpy", "tokenizers", "llama-cpp-python"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out
