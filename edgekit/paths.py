"""Paths inside an artifact (the one check every reader of a name from a file goes through), and
files written into folders others may write to (reports), never through a link planted there."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgekit.errors import InvalidOptionError, UnsafePathError


def safe_member(root: Path, name: str) -> Path:
    """Resolve `name` inside `root`, refusing absolute paths and anything that escapes it."""
    root = Path(root).resolve()
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePathError(f"{root}: path {name!r} is empty or holds a NUL byte")
    candidate = (root / name).resolve()
    if Path(name).is_absolute() or not candidate.is_relative_to(root):
        raise UnsafePathError(f"{root}: path '{name}' escapes the artifact directory")
    return candidate


def writable_folder(folder: str | os.PathLike[str], what: str) -> Path:
    """`folder`, created if need be, checked before any work is done for it: a file there, or a place
    this user cannot write, is an error now rather than after the work."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise InvalidOptionError(f"{path}: exists and is not a folder; {what} takes a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidOptionError(f"{path}: cannot create this folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InvalidOptionError(f"{path}: this user cannot write into this folder")
    return path


def replace_file(path: Path, data: bytes) -> None:
    """Write `path` as a new file renamed into place: a link someone planted at that name is replaced,
    never written through, and a reader never sees half a file."""
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)  # mkstemp makes 0600; a report is as readable as any file
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
