"""The artifact contract (DESIGN.md section 3): a directory of model files plus edgekit.json.

Writers stage everything in a hidden temporary sibling and rename it into place only when the
manifest is complete, so an error, Ctrl-C or kill leaves nothing a later run could mistake for a
finished artifact. Readers trust the manifest only after checking every file's size and sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ManifestMismatch, OutputExistsError, UnsafePathError

MANIFEST = "edgekit.json"
SCHEMA_VERSION = 1


@contextlib.contextmanager
def staged_output(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory that becomes `final` only if the block succeeds."""
    final = Path(final).absolute()
    refuse_existing(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the artifact should look like any directory
    try:
        with _sigterm_as_interrupt():
            yield stage
        if final.exists():
            old = final.with_name(f".{final.name}.old-{stage.name[-8:]}")
            final.rename(old)
            stage.rename(final)
            _remove(old)
        else:
            stage.rename(final)
    finally:
        if stage.exists():
            _remove(stage)


def refuse_existing(final: Path, overwrite: bool) -> None:
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final}: output already exists; choose another path or pass overwrite=True (--overwrite)")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A `kill` during a conversion unwinds like Ctrl-C, so the staging directory is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def safe_member(root: Path, name: str) -> Path:
    """Resolve `name` inside `root`, refusing absolute paths and anything that escapes it."""
    root = Path(root).resolve()
    candidate = (root / name).resolve()
    if Path(name).is_absolute() or not candidate.is_relative_to(root):
        raise UnsafePathError(f"{root}: path '{name}' escapes the artifact directory")
    return candidate


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(root: Path, name: str) -> dict[str, Any]:
    path = safe_member(root, name)
    return {"name": name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    path = Path(root) / MANIFEST
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, **manifest}, indent=2) + "\n", encoding="utf-8")
    return path


def read_manifest(root: str | Path, verify: bool = True) -> dict[str, Any]:
    """Load edgekit.json; with verify, check every listed file's size and sha256 first."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{root}: no {MANIFEST}; not an edgekit artifact (convert one with `edgekit convert`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: unsupported manifest schema (expected version {SCHEMA_VERSION})")
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise ArtifactError(f"{path}: 'files' is missing or empty")
    if verify:
        for entry in files:
            member = safe_member(root, str(entry.get("name", "")))
            if not member.is_file():
                raise ManifestMismatch(f"{member}: listed in {MANIFEST} but missing")
            size = member.stat().st_size
            if size != entry.get("size"):
                raise ManifestMismatch(f"{member}: size {size} differs from the manifest's {entry.get('size')}")
            digest = file_entry(root, entry["name"])["sha256"]
            if digest != entry.get("sha256"):
                raise ManifestMismatch(f"{member}: sha256 differs from the manifest; the file was altered or corrupted")
    if manifest.get("format") == "onnx":
        check_external_data(root, str(manifest.get("model_file", "model.onnx")))
    return manifest


def check_external_data(root: Path, model_file: str) -> None:
    """Every external-data location of an ONNX model must stay inside the artifact directory.

    ONNX Runtime would otherwise open whatever path the file names (../../secret, /etc/...).
    """
    import onnx

    path = safe_member(root, model_file)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ArtifactError(f"{path}: not a readable ONNX model ({exc})") from exc
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            safe_member(root, location)
