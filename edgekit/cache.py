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
