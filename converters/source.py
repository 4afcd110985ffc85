"""Resolve a conversion source (local directory or hub id) and inspect it into a Checkpoint.

The Checkpoint holds the parsed config, the tokenizer files and lazy tensor references; nothing
heavy is read here. All safety refusals (remote code, pickle weights) happen here, once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.artifact import sha256_file
from edgekit.errors import (
    CheckpointFormatError,
    RemoteCodeRefused,
    SourceNotFoundError,
    TokenizerError,
)

from .safetensors_io import TensorRef, read_index
from .validate import check_config, check_tensors, check_tokenizer

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")  # owner/name
# Files a conversion can use; anything else in a hub repo (other formats, images) is not fetched.
_HUB_PATTERNS = [
    "config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
]
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model-*.bin", "*.pt", "*.pth", "*.ckpt")


@dataclass
class Checkpoint:
    """A Hugging Face checkpoint on disk, inspected but not loaded."""

    path: Path
    revision: str | None
    config: dict[str, Any]
    tensors: dict[str, TensorRef] = field(repr=False)
    weight_files: list[Path] = field(repr=False)  # the source's own weight files (hashed in the manifest)

    @property
    def architecture(self) -> str:
        return self.config["architectures"][0]

    def json_file(self, name: str) -> dict[str, Any] | None:
        """Read an optional JSON side file (tokenizer_config.json ...), validating it."""
        return _read_json(self.path / name, required=False)

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def tensor(self, name: str) -> np.ndarray:
        try:
            return self.tensors[name].load()
        except KeyError:
            raise CheckpointFormatError(f"{self.path}: tensor '{name}' is missing from the weights") from None

    def file_hashes(self, stop: threading.Event | None = None) -> dict[str, str]:
        """sha256 of each source file converted (for the manifest); `stop` ends it early."""
        names = ["config.json", *(p.name for p in self.weight_files)]
        names += [n for n in ("tokenizer.json", "tokenizer.model", "vocab.txt", "tokenizer_config.json")
                  if self.has(n)]
        return {n: sha256_file(self.path / n, stop=stop) for n in names}


def _read_json(path: Path, required: bool) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise CheckpointFormatError(f"{path.parent}: no {path.name} found; "
                                        "is this a Hugging Face checkpoint directory?")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointFormatError(f"{path}: not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                                    f"{exc.msg}") from exc
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def resolve(source: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local directory as is, or a hub id through huggingface_hub's cache (HF_HUB_OFFLINE honoured)."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SourceNotFoundError(f"{path}: expected a checkpoint directory, found a file")
        return path.resolve()
    text = str(source)
    if not HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise SourceNotFoundError(f"{text}: no such directory, and not a hub id of the form 'owner/name'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        local = snapshot_download(text, revision=revision, allow_patterns=_HUB_PATTERNS,
                                  local_files_only=offline)
    except LocalEntryNotFoundError as exc:
        where = "HF_HUB_OFFLINE is set and the cache has no copy" if offline else "it could not be fetched"
        raise SourceNotFoundError(
            f"{text}: {where}. Download it once with network access, or pass a local directory"
        ) from exc
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as exc:
        raise SourceNotFoundError(f"{text}: not available on the hub ({type(exc).__name__})") from exc
    except OSError as exc:
        raise SourceNotFoundError(f"{text}: could not fetch from the hub ({exc})") from exc
    return Path(local)


def inspect(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    allow_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Checkpoint:
    """Resolve and validate a source; raise a typed SourceError for anything unusable."""
    path = resolve(source, revision)
    config = _read_json(path / "config.json", required=True)
    if config is None:  # required=True raises first; this keeps type checkers informed
        raise CheckpointFormatError(f"{path}: no config.json")
    if "auto_map" in config and not allow_remote_code:
        raise RemoteCodeRefused(
            f"{path / 'config.json'}: 'auto_map' asks to run the model's own Python code. "
            "edgekit never runs it; pass allow_remote_code=True (--allow-remote-code) to convert "
            "the weights anyway"
        )
    archs = config.get("architectures")
    if not (isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs)):
        raise CheckpointFormatError(f"{path / 'config.json'}: 'architectures' must be a non-empty "
                                    "list of names")
    check_config(path / "config.json", config)
    weight_files, tensors = _load_weight_index(path, allow_pickle)
    if not any(path.joinpath(n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.txt")):
        raise TokenizerError(f"{path}: no tokenizer found "
                             "(expected tokenizer.json, tokenizer.model or vocab.txt)")
    check_tensors(path, config, archs[0], {n: (r.shape, r.file) for n, r in tensors.items()})
    check_tokenizer(path, config, archs[0])
    return Checkpoint(path, revision, config, tensors, weight_files)


def _load_weight_index(path: Path, allow_pickle: bool) -> tuple[list[Path], dict[str, TensorRef]]:
    index = _read_json(path / "model.safetensors.index.json", required=False)
    if index is not None:
        wm = index.get("weight_map")
        if not isinstance(wm, dict):
            raise CheckpointFormatError(f"{path / 'model.safetensors.index.json'}: missing 'weight_map'")
        files = sorted({path / f for f in wm.values()})
        for f in files:
            if f.parent != path:
                raise CheckpointFormatError(f"{path / 'model.safetensors.index.json'}: shard '{f.name}' "
                                            "is outside the checkpoint")
            if not f.is_file():
                raise CheckpointFormatError(f"{path}: shard {f.name} listed in the index is missing")
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted({p.name for pat in _PICKLE_WEIGHTS for p in path.glob(pat)})
        if pickles and not allow_pickle:
            raise CheckpointFormatError(
                f"{path}: only pickle weights ({', '.join(pickles)}); "
                "loading pickles can run arbitrary code. "
                "Convert them to safetensors, or pass allow_pickle=True (--allow-pickle) "
                "if you trust the source"
            )
        if pickles:
            return [path / p for p in pickles], _pickle_to_safetensors(path, pickles)
        raise CheckpointFormatError(f"{path}: no weights found (expected *.safetensors)")
    tensors: dict[str, TensorRef] = {}
    for f in files:
        tensors.update(read_index(f))
    return files, tensors


def _pickle_to_safetensors(path: Path, pickles: list[str]) -> dict[str, TensorRef]:
    """Opted-in pickle checkpoints: load with torch (weights_only) into a cached safetensors copy."""
    from edgekit.errors import require

    torch = require("torch", "torch", "test", "Reading a pickle (.bin) checkpoint")
    from safetensors.torch import save_file

    from edgekit.cache import cache_dir

    key = hashlib.sha256("|".join(str((path / p).stat().st_mtime_ns) + p
                                  for p in pickles).encode()).hexdigest()[:16]
    out = cache_dir("pickle") / f"{key}.safetensors"
    if not out.is_file():
        state: dict[str, Any] = {}
        for name in pickles:
            try:
                state.update(torch.load(path / name, map_location="cpu", weights_only=True))
            except Exception as exc:  # torch raises many types for a bad pickle
                raise CheckpointFormatError(f"{path / name}: cannot load pickle weights ({exc})") from exc
        tmp = out.with_suffix(".partial")
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(tmp))
        tmp.replace(out)
    return read_index(out)


def sentence_pooling(ckpt: Checkpoint) -> dict[str, Any]:
    """Pooling mode and normalization from sentence-transformers' modules.json, else mean."""
    mode, normalize = "mean", False
    if ckpt.has("modules.json"):
        try:
            entries = json.loads((ckpt.path / "modules.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointFormatError(f"{ckpt.path / 'modules.json'}: invalid JSON ({exc})") from exc
        for entry in entries if isinstance(entries, list) else []:
            kind = str(entry.get("type", ""))
            if kind.endswith("Pooling"):
                cfg = ckpt.json_file(f"{entry.get('path', '1_Pooling')}/config.json") or {}
                mode = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
            elif kind.endswith("Normalize"):
                normalize = True
    return {"mode": mode, "normalize": normalize}
