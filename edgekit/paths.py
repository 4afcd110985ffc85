"""Paths inside an artifact: the one check every reader of a name from a file goes through."""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import UnsafePathError


def safe_member(root: Path, name: str) -> Path:
    """Resolve `name` inside `root`, refusing absolute paths and anything that escapes it."""
    root = Path(root).resolve()
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePathError(f"{root}: path {name!r} is empty or holds a NUL byte")
    candidate = (root / name).resolve()
    if Path(name).is_absolute() or not candidate.is_relative_to(root):
        raise UnsafePathError(f"{root}: path '{name}' escapes the artifact directory")
    return candidate
