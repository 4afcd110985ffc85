"""Where edgekit keeps derived files (materialized bundled models, pickle conversions)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """EDGEKIT_CACHE if set, else the platform's user cache directory; created on demand."""
    root = os.environ.get("EDGEKIT_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        from platformdirs import user_cache_dir

        base = Path(user_cache_dir("edgekit"))
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
