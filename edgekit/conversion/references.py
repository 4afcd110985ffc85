"""Model references as people type them: an artifact folder, a bundled model's name, a hub id in the
local cache, a Hugging Face checkpoint folder or a .gguf file made elsewhere. What is not an artifact
yet is converted once, to ONNX int4 (the fastest and most faithful on a CPU), into edgekit's cache,
and reused after that; a .gguf file is wrapped as one (linked, not converted)."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable
from pathlib import Path

from edgekit.artifact import MANIFEST
from edgekit.errors import ArtifactError, OutputExistsError
from edgekit.progress import Progress

FORMAT, QUANT = "onnx", "int4"  # what a reference that is not an artifact becomes


def artifact_for(ref: str | Path, progress: Progress | None = None,
                 say: Callable[[str], None] | None = None) -> Path:
    """The artifact folder `ref` stands for, converting it first (once) when it is a bundled name
    (`smollm2-135m-instruct` or `bundled:...`), a hub id or a checkpoint folder, wrapping it when it
    is a .gguf file. `say` hears one line before a conversion starts. Anything else: ArtifactError
    naming near names."""
    from edgekit import bundled
    from edgekit.converters.source import HUB_ID

    text = str(ref)
    path = Path(text).expanduser()
    if (path / MANIFEST).is_file():
        return path
    name = text.removeprefix("bundled:")
    if name in bundled.NAMES:
        source, key = f"bundled:{name}", name
    elif path.is_dir() and (path / "config.json").is_file():
        source, key = str(path.resolve()), f"{path.resolve().name}-{_folder_stamp(path)}"
    elif path.suffix.lower() == ".gguf" and path.is_file():
        return _imported(path, say)
    elif HUB_ID.match(text) and not path.exists():
        source, key = text, text.replace("/", "--")
    elif path.is_dir():  # a folder that is neither: read_manifest says what it holds (artifacts below?)
        from edgekit.artifact import read_manifest

        read_manifest(path)
        raise ArtifactError(f"{path}: not an edgekit artifact")  # not reached: read_manifest raised
    else:
        raise ArtifactError(f"{text}: no artifact, bundled model or checkpoint of that name{_near(text)}")
    from edgekit.cache import cache_dir

    out = cache_dir("models") / f"{key}-{FORMAT}-{QUANT}"
    if not (out / MANIFEST).is_file():
        if say is not None:
            say(f"{text} is not an artifact yet: converting it once to {FORMAT} {QUANT} into {out} "
                "(a minute or two for a small model; later runs reuse it)")
        from edgekit.conversion.pipeline import convert

        try:
            convert(source, to=FORMAT, quant=QUANT, output=out, progress=progress)
        except OutputExistsError:  # another process converted it meanwhile
            if not (out / MANIFEST).is_file():
                raise
    return out


def _imported(path: Path, say: Callable[[str], None] | None) -> Path:
    """A GGUF made elsewhere, wrapped once as an artifact in the cache (hard-linked, not converted),
    under a name that changes with the file; an earlier wrap of a file since replaced is removed."""
    import glob
    import shutil

    from edgekit.cache import cache_dir
    from edgekit.conversion.imported import wrap_gguf

    st = path.stat()
    stem = f"{path.stem}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
    stamp = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()).hexdigest()[:8]
    models = cache_dir("models")
    out = models / f"{stem}-{stamp}-gguf"
    if (out / MANIFEST).is_file():
        return out
    # the same path, an older file: its hard link would keep the old bytes alive
    for old in models.glob(f"{glob.escape(stem)}-*-gguf"):
        shutil.rmtree(old, ignore_errors=True)
    if say is not None:
        say(f"{path} was made outside edgekit: wrapping it once as an artifact in {out} (linked, not "
            "converted; not verified)")
    try:
        return wrap_gguf(path, out, say)
    except OutputExistsError:  # another process wrapped it meanwhile
        if not (out / MANIFEST).is_file():
            raise
        return out


def _folder_stamp(path: Path) -> str:
    """A short name for a checkpoint folder's present content: its files' names, sizes and times."""
    digest = hashlib.sha256(str(path.resolve()).encode())
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def _near(text: str) -> str:
    """'; did you mean ...?' from the bundled names and the artifacts near the current folder."""
    from edgekit import bundled
    from edgekit.artifact import find_artifacts

    candidates = list(bundled.NAMES)
    try:
        candidates += [a["path"] for a in find_artifacts(".", depth=2) if "error" not in a]
    except ArtifactError:
        pass
    close = difflib.get_close_matches(text, candidates, n=3, cutoff=0.5)
    if close:
        return f"; did you mean {' or '.join(close)}?"
    return f"; bundled models: {', '.join(bundled.NAMES)} (edgekit bundled --list), artifacts: edgekit list"
