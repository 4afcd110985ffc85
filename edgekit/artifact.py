"""The artifact contract: a directory of model files plus edgekit.json.

Writers stage everything in a hidden temporary sibling and rename it into place only when the
manifest is complete, so an error, Ctrl-C or kill leaves nothing a later run could mistake for a
finished artifact. Readers trust the manifest only after checking every file's size and sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError, ManifestMismatch, OutputExistsError, UnsafePathError
from edgekit.paths import safe_member
from edgekit.signals import deferred_signals

MANIFEST = "edgekit.json"
SCHEMA_VERSION = 1
_NONE = type(None)
# edgekit.json: field -> (allowed types, required). Written by edgekit.conversion.pipeline, read here first:
# a field of the wrong type is refused by name instead of failing deep inside a runtime.
MANIFEST_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema_version": ((int,), True),
    "format": ((str,), True),  # "gguf" or "onnx"
    "model_file": ((str,), True),  # a hashed member of the artifact
    "files": ((list,), True),  # [{name, size, sha256}]
    "task": ((str,), False),  # "text-generation" (default) or "feature-extraction"
    "edgekit_version": ((str,), False),
    "created": ((str,), False),
    "architecture": ((str,), False),  # the Hugging Face architecture converted
    "source": ((dict,), False),  # id (hub id, bundled:NAME or the directory's name), revision, file sha256s
    "exporter": ((str,), False),  # "edgekit" or "optimum-onnx"
    "chat_template": ((str, _NONE), False),
    "context_length": ((int, _NONE), False),
    "tool_versions": ((dict,), False),
    "quantization": ((dict,), False),  # scheme (words), label, bits_per_weight, tensor_types
    "tokenizer": ((dict,), False),  # special ids and texts, GGUF vocabulary facts
    "onnx": ((dict,), False),  # graph I/O facts (ONNX only)
    "gguf_architecture": ((str,), False),
    "pooling": ((dict,), False),  # embedders: mode and normalization
    "fidelity": ((dict,), False),  # the verification report (edgekit.quality.fidelity.FidelityReport)
}
# what the ONNX decoder runtime reads from manifest["onnx"]
ONNX_DECODER_FACTS = ("num_layers", "num_kv_heads", "head_dim", "vocab_size", "context_length")


STAGING_MARKER = ".edgekit-staging"  # inside a staging directory: the final path it is meant for
_log = logging.getLogger("edgekit")


def check_output(final: Path, overwrite: bool, source: Path | None = None) -> None:
    """Refuse an output path that edgekit must not replace (raises before any work is done).

    Only an edgekit artifact (a directory with edgekit.json) is ever replaced, and only with
    overwrite; never the source checkpoint, a directory holding it, or a path inside it.
    """
    final = Path(final).absolute()
    if source is not None:
        src, out = Path(source).resolve(), final.resolve()
        if out == src or src.is_relative_to(out) or out.is_relative_to(src):
            what = "is" if out == src else "contains" if src.is_relative_to(out) else "lies inside"
            raise OutputExistsError(f"{final}: the output {what} the source checkpoint {src}; "
                                    "choose an output outside it "
                                    "(edgekit never writes into or replaces its source)")
    if final.is_symlink():
        raise OutputExistsError(f"{final}: the output is a symbolic link; give a real directory path")
    if not final.exists():
        return
    if not overwrite:
        raise OutputExistsError(f"{final}: output already exists; choose another path or pass "
                                "overwrite=True (--overwrite)")
    if not (final.is_dir() and (final / MANIFEST).is_file()):
        raise OutputExistsError(f"{final}: exists and is not an edgekit artifact (no {MANIFEST}); "
                                "overwrite only replaces edgekit's own artifacts. "
                                "Choose another path, or move it away yourself")


@contextlib.contextmanager
def output_lock(final: Path, what: str = "conversion") -> Iterator[None]:
    """Hold the output path for one conversion (or another job: `what`); a second one to the same
    path fails at once.

    An flock on a hidden sibling file: the kernel drops it when the holder dies, so a killed run
    never leaves a lock that blocks the next one.
    """
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    path = final.with_name(f".{final.name}.lock")
    try:
        import fcntl
    except ImportError:  # Windows: no flock; conversions to one output are not serialized there
        yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputExistsError(f"{final}: another {what} (pid {holder}) is writing this output now; "
                                    "wait for it to finish or choose another path") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not a lock file its last holder just removed
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def remove_stale_staging(final: Path) -> list[Path]:
    """Remove what killed conversions to `final` left behind; call with the output lock held.

    A sibling `.NAME.partial-*` / `.NAME.old-*` directory is ours when it names `final` in its
    marker, already holds a finished manifest (killed between the last two renames), or is empty.
    """
    final = Path(final).absolute()
    removed = []
    if not final.parent.is_dir():
        return removed
    for entry in final.parent.iterdir():
        if not entry.name.startswith((f".{final.name}.partial-", f".{final.name}.old-")) or \
                entry.is_symlink():
            continue
        if not entry.is_dir():
            continue
        marker = entry / STAGING_MARKER
        try:
            ours = (marker.is_file()
                    and Path(marker.read_text(encoding="utf-8").split("\n")[0]).name == final.name) or \
                (entry / MANIFEST).is_file() or not any(entry.iterdir())
        except OSError:
            ours = False
        if ours:
            _remove_staging(entry, final)
            removed.append(entry)
            _log.info("removed %s, left behind by an interrupted conversion", entry)
    return removed


@contextlib.contextmanager
def staged_output(final: Path, overwrite: bool = False, source: Path | None = None,
                  on_commit: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield an empty staging directory that becomes `final` only if the block succeeds.

    The caller holds output_lock(final). The last step is one atomic rename that never replaces
    anything that appeared meanwhile: a directory created at `final` during the conversion is
    left alone (the conversion fails), and with overwrite only an edgekit artifact is swapped out.
    """
    final = Path(final).absolute()
    check_output(final, overwrite, source)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the artifact should look like any directory
    marker = stage / STAGING_MARKER
    try:
        marker.write_text(f"{final}\n{os.getpid()}\n", encoding="utf-8")
        yield stage
        marker.unlink()
        _commit(stage, final, overwrite, on_commit)
    finally:
        if stage.exists():
            _remove_staging(stage, final)


def _remove_staging(stage: Path, final: Path) -> None:
    """Remove a staging directory marker-last, so a kill midway leaves one the next run recognises."""
    marker = stage / STAGING_MARKER
    with contextlib.suppress(OSError):
        marker.write_text(f"{final}\n{os.getpid()}\n", encoding="utf-8")
    for entry in list(stage.iterdir()) if stage.is_dir() else []:
        if entry.name != STAGING_MARKER:
            _remove(entry)
    _remove(stage)


def _commit(stage: Path, final: Path, overwrite: bool, on_commit=None) -> None:
    """Move `stage` to `final` in one atomic step; Ctrl-C/SIGTERM wait until it is done (and until
    on_commit has noted it), so no folder is caught half-way between names."""
    with deferred_signals():
        _move_into_place(stage, final, overwrite)
        if on_commit is not None:
            on_commit()


def _move_into_place(stage: Path, final: Path, overwrite: bool) -> None:
    if rename_no_replace(stage, final):
        return
    # Something is at `final` now (it may have appeared while we converted): replace it only if allowed.
    check_output(final, overwrite)
    swapped = swap(stage, final)
    if swapped is None:  # no atomic exchange here: move the old artifact aside, checked, then ours in
        old = final.with_name(f".{final.name}.old-{stage.name[-8:]}")
        final.rename(old)
        if not (old / MANIFEST).is_file():  # it changed between the check and the rename
            old.rename(final)
            raise OutputExistsError(f"{final}: changed while converting and is not an edgekit artifact; "
                                    "left as it was")
        stage.rename(final)
        _remove_staging(old, final)
        return
    if not swapped:  # `final` vanished between the check and the exchange
        if rename_no_replace(stage, final):
            return
        raise OutputExistsError(f"{final}: changed while converting; choose another path")
    # `stage` now holds what was at `final`: removed below only if it is an artifact, else put back
    if not (stage / MANIFEST).is_file():
        if not swap(stage, final):
            stage.rename(stage.with_name(f".{final.name}.recovered-{stage.name[-8:]}"))
        raise OutputExistsError(f"{final}: changed while converting and is not an edgekit artifact; "
                                "left as it was")


def _rename2(src: Path, dst: Path, flag: str) -> bool | None:
    """Atomic rename with a no-replace or exchange flag: True done, False refused (dst exists),
    None when this OS or file system has no such call (the caller falls back)."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux") and sys.platform != "darwin":
        return None  # Windows: no such call (and no libc to load)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except (OSError, TypeError):
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, flags = -100, {"noreplace": 1, "exchange": 2}[flag]
        rc = libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rc = libc.renamex_np(os.fsencode(src), os.fsencode(dst), {"noreplace": 0x4, "exchange": 0x2}[flag])
    else:
        return None
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EEXIST, errno.ENOTEMPTY):
        return False
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return None
    if err == errno.ENOENT and flag == "exchange":
        return False
    raise OSError(err, os.strerror(err), str(dst))


def rename_no_replace(src: Path, dst: Path) -> bool:
    """Rename src to dst unless dst exists (atomically where the OS allows); False if it exists."""
    done = _rename2(src, dst, "noreplace")
    if done is not None:
        return done
    if dst.exists() or dst.is_symlink():
        return False
    src.rename(dst)
    return True


def swap(a: Path, b: Path) -> bool | None:
    """Exchange two directories atomically: True done, False one is missing, None where the OS or
    file system cannot (the caller falls back)."""
    return _rename2(a, b, "exchange")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sha256_file(path: Path, chunk: int = 1 << 22, stop: threading.Event | None = None) -> str:
    """The file's sha256; `stop` (set from another thread) ends the reading early with an error."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            if stop is not None and stop.is_set():
                raise ArtifactError(f"{path}: hashing stopped")
            h.update(block)
    return h.hexdigest()


def file_entry(root: Path, name: str) -> dict[str, Any]:
    path = safe_member(root, name)
    return {"name": name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    path = Path(root) / MANIFEST
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, **manifest}, indent=2) + "\n",
                    encoding="utf-8")
    return path


MAX_MANIFEST_BYTES = 16 * 2**20


def read_manifest(root: str | Path, verify: bool = True) -> dict[str, Any]:
    """Load edgekit.json; with verify, check every listed file's size and sha256 first.

    The model file, and every other file a runtime opens (tokenizer.json, ONNX external data),
    must be a plain name inside the artifact and in the hash list: nothing is read unverified.
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        inside = sorted(str(p.parent) for p in root.glob(f"*/{MANIFEST}")) if root.is_dir() else []
        hint = (f"; it holds artifacts: {', '.join(inside)} (pass one of them)" if inside
                else " (convert one with `edgekit convert`)")
        raise ArtifactError(f"{root}: no {MANIFEST}; not an edgekit artifact{hint}")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: {size} bytes is no manifest (edgekit writes a few kilobytes; "
                            f"at most {MAX_MANIFEST_BYTES >> 20} MB are read)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ArtifactError(f"{path}: unreadable manifest (nested thousands deep)") from None
    except (UnicodeDecodeError, ValueError) as exc:  # bad JSON, or an integer of thousands of digits
        raise ArtifactError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: unsupported manifest schema (expected version {SCHEMA_VERSION})")
    _check_fields(manifest, path)
    files = manifest.get("files")
    if not isinstance(files, list) or not files or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) for e in files):
        raise ArtifactError(f"{path}: 'files' must be a non-empty list of {{name, size, sha256}} entries")
    listed = {e["name"] for e in files}
    model_file = manifest.get("model_file")
    if not isinstance(model_file, str) or model_file not in listed:
        raise UnsafePathError(f"{path}: model_file {json.dumps(model_file)} is not one of the artifact's "
                              "hashed files; the manifest was altered")
    from edgekit.runtimes.registry import reader_for

    reader = reader_for(manifest["format"])
    for name in reader.runtime_files(manifest) if reader else []:
        if name in listed:
            continue
        if not (root / name).exists():
            raise ArtifactError(f"{root}: no {name}, which the {manifest.get('format')} runtime needs; "
                                "convert from a checkpoint that has one")
        raise UnsafePathError(f"{path}: '{name}' is read by the runtime but is not in the hash list")
    if verify:
        try:
            _verify_files(root, files)
        except OSError as exc:  # permissions, a directory where a file should be ...
            raise ArtifactError(f"{exc.filename or root}: cannot read ({exc.strerror or exc})") from exc
    else:
        for entry in files:
            safe_member(root, entry["name"])
    if reader is not None:  # what the format's native code would do wrong, refused with a message
        reader.preflight(safe_member(root, model_file), listed)
    return manifest


def _check_fields(manifest: dict[str, Any], path: Path) -> None:
    for key, (types, required) in MANIFEST_FIELDS.items():
        if key not in manifest:
            if required:
                raise ArtifactError(f"{path}: '{key}' is missing")
            continue
        value = manifest[key]
        if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
            want = " or ".join("null" if t is _NONE else t.__name__ for t in types)
            raise ArtifactError(f"{path}: '{key}' is {json.dumps(value)[:60]}, not {want}")
    if manifest["format"] == "onnx" and manifest.get("task", "text-generation") == "text-generation":
        facts = manifest.get("onnx") or {}
        for key in ONNX_DECODER_FACTS:
            value = facts.get(key)
            if type(value) is not int or value < 1:
                raise ArtifactError(f"{path}: onnx.{key} is {json.dumps(value)}, not a whole number >= 1")


def _verify_files(root: Path, files: list[dict[str, Any]]) -> None:
    for entry in files:
        member = safe_member(root, entry["name"])
        if not member.is_file():
            raise ManifestMismatch(f"{member}: listed in {MANIFEST} but missing")
        size = member.stat().st_size
        if size != entry.get("size"):
            raise ManifestMismatch(f"{member}: size {size} differs from the manifest's {entry.get('size')}")
        if sha256_file(member) != entry.get("sha256"):
            raise ManifestMismatch(f"{member}: sha256 differs from the manifest; "
                                   "the file was altered or corrupted")


def find_artifacts(root: str | Path = ".", depth: int = 3) -> list[dict[str, Any]]:
    """Every edgekit artifact under `root` (down to `depth` folders), with its format, architecture,
    quantization and size; a damaged one is listed with its error, not skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such folder")
    found = []
    for level in range(depth + 1):
        for manifest_path in sorted(root.glob("/".join(["*"] * level + [MANIFEST]))):
            entry: dict[str, Any] = {"path": str(manifest_path.parent)}
            try:
                manifest = read_manifest(manifest_path.parent, verify=False)
            except ArtifactError as exc:
                found.append({**entry, "format": "?", "architecture": "?", "quant": "?", "size_mb": 0,
                              "error": str(exc).split(": ", 1)[-1]})
                continue
            quant = manifest.get("quantization") or {}
            found.append({**entry, "format": manifest["format"], "architecture": manifest.get("architecture"),
                          "quant": quant.get("label") or quant.get("scheme"),
                          "bits_per_weight": quant.get("bits_per_weight"),
                          "size_mb": round(sum(f.get("size", 0) for f in manifest["files"]) / 1e6, 1)})
    return found
