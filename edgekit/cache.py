"""Where edgekit keeps derived files: bundled models made into checkpoints, pickle conversions, the
summarizer's default model, measured copy rates and profiles."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """EDGEKIT_CACHE if set, else the platform's user cache directory (~/.cache/edgekit on Linux,
    which honours XDG_CACHE_HOME). Every file edgekit caches lives under it."""
    root = os.environ.get("EDGEKIT_CACHE")
    if root:
        return Path(root).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("edgekit"))


def cache_dir(*parts: str) -> Path:
    """A folder under cache_root(), created on demand."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# Where each local checkpoint was converted from. The portable manifest names a local source by its
# folder's name only (artifacts get shared); this record, on this machine, finds the folder again by
# the files' hashes, which verification checks again before it trusts it.
_SOURCES = "sources.json"


def _source_key(files: dict[str, str]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:32]


def remember_source(files: dict[str, str], path: Path) -> None:
    """Note that the checkpoint of these file hashes is at `path` (best effort: a read-only or full
    cache only costs `edgekit verify` its guess)."""
    import json
    import tempfile

    if not files:
        return
    record = cache_root() / _SOURCES
    try:
        known = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        if not isinstance(known, dict):
            known = {}
        known[_source_key(files)] = str(Path(path).resolve())
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=".sources.", dir=record.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(known, f, indent=1)
        os.replace(partial, record)
    except (OSError, ValueError):
        pass


def recall_source(files: dict[str, str]) -> Path | None:
    """The folder remember_source() noted for these file hashes, if it is still there."""
    import json

    if not files:
        return None
    try:
        known = json.loads((cache_root() / _SOURCES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    where = known.get(_source_key(files)) if isinstance(known, dict) else None
    return Path(where) if isinstance(where, str) and Path(where).is_dir() else None
