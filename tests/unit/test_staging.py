"""Output paths: what edgekit may replace, the atomic final rename, locks and stale staging.

Pure file-system logic: no model, no torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.artifact import (
    MANIFEST,
    STAGING_MARKER,
    check_output,
    output_lock,
    remove_stale_staging,
    rename_no_replace,
    staged_output,
)
from edgekit.errors import OutputExistsError


def _artifact(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / MANIFEST).write_text(json.dumps({"schema_version": 1}))
    (path / "model.gguf").write_bytes(b"old")
    return path


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.txt").write_text("three years of work")
    return path


def _siblings(final: Path) -> list[str]:
    return sorted(p.name for p in final.parent.iterdir() if p.name.startswith(f".{final.name}"))


def test_overwrite_replaces_an_artifact(tmp_path):
    final = _artifact(tmp_path / "out")
    with output_lock(final), staged_output(final, overwrite=True) as stage:
        (stage / MANIFEST).write_text("{}")
        (stage / "new.gguf").write_bytes(b"new")
    assert sorted(p.name for p in final.iterdir()) == [MANIFEST, "new.gguf"]
    assert _siblings(final) == []


def test_overwrite_never_replaces_a_user_folder(tmp_path):
    final = _user_folder(tmp_path / "docs")
    with pytest.raises(OutputExistsError, match="not an edgekit artifact"):
        check_output(final, overwrite=True)
    assert (final / "thesis.txt").read_text() == "three years of work"


@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_never_the_source_its_parent_or_inside_it(tmp_path, where):
    source = _artifact(tmp_path / "parent" / "ckpt")  # even an artifact-looking source is never replaced
    final = {"same": source, "parent": source.parent, "inside": source / "out"}[where]
    word = {"same": "is", "parent": "contains", "inside": "lies inside"}[where]
    with pytest.raises(OutputExistsError, match=f"output {word} the source"):
        check_output(final, overwrite=True, source=source)
    assert (source / "model.gguf").read_bytes() == b"old"


def test_symlinked_output_refused(tmp_path):
    target = _artifact(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(OutputExistsError, match="symbolic link"):
        check_output(link, overwrite=True)


def test_folder_appearing_meanwhile_is_kept_and_conversion_fails(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(OutputExistsError, match="already exists"):
        with output_lock(final), staged_output(final) as stage:
            (stage / MANIFEST).write_text("{}")
            _user_folder(final)  # another program creates it while we convert
    assert (final / "thesis.txt").read_text() == "three years of work"
    assert _siblings(final) == []


def test_folder_appearing_meanwhile_survives_overwrite_too(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(OutputExistsError, match="not an edgekit artifact"):
        with output_lock(final), staged_output(final, overwrite=True) as stage:
            (stage / MANIFEST).write_text("{}")
            _user_folder(final)
    assert sorted(p.name for p in final.iterdir()) == ["thesis.txt"]


def test_empty_folder_appearing_meanwhile_is_not_replaced(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(OutputExistsError):
        with output_lock(final), staged_output(final) as stage:
            (stage / MANIFEST).write_text("{}")
            final.mkdir()  # plain rename(2) would silently replace an empty directory
    assert final.is_dir() and not any(final.iterdir())


def test_rename_no_replace(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert rename_no_replace(a, b) is False and a.is_dir()
    b.rmdir()
    assert rename_no_replace(a, b) is True and b.is_dir() and not a.exists()


def test_second_lock_on_one_output_fails_at_once(tmp_path):
    final = tmp_path / "out"
    code = ("import sys; from pathlib import Path; from edgekit.artifact import output_lock\n"
            "try:\n    with output_lock(Path(sys.argv[1])): pass\n"
            "except Exception as e:\n    print(type(e).__name__, e); sys.exit(3)\n")
    with output_lock(final):
        p = subprocess.run([sys.executable, "-c", code, str(final)], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 3, p.stderr
        assert "OutputExistsError" in p.stdout and f"pid {os.getpid()}" in p.stdout
    p = subprocess.run([sys.executable, "-c", code, str(final)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout  # released with the holder
    assert _siblings(final) == []


def test_lock_of_a_killed_holder_does_not_block(tmp_path):
    final = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from edgekit.artifact import output_lock\n"
                               "with output_lock(Path(sys.argv[1])):\n"
                               "    print('held', flush=True); time.sleep(60)",
                               str(final)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with output_lock(final):  # the kernel dropped the dead process's flock
        pass


def test_stale_staging_recognised_and_removed(tmp_path):
    final = tmp_path / "out"
    killed = tmp_path / ".out.partial-abcd1234"  # killed mid-write: marker names our output
    killed.mkdir()
    (killed / STAGING_MARKER).write_text(f"{final.absolute()}\n123\n")
    (killed / "big.gguf").write_bytes(b"x" * 1000)
    finished = tmp_path / ".out.partial-efgh5678"  # killed between the last two steps: a whole artifact
    _artifact(finished)
    empty = tmp_path / ".out.old-ijkl9012"
    empty.mkdir()
    other = tmp_path / ".out.partial-mnop3456"  # someone else's hidden folder with that look: kept
    _user_folder(other)
    elsewhere = tmp_path / ".out.partial-qrst7890"  # its marker names another output: kept
    elsewhere.mkdir()
    (elsewhere / STAGING_MARKER).write_text(f"{tmp_path / 'out2'}\n1\n")
    (elsewhere / "x").write_text("x")
    removed = remove_stale_staging(final)
    assert sorted(p.name for p in removed) == sorted([killed.name, finished.name, empty.name])
    assert _siblings(final) == sorted([other.name, elsewhere.name])


def test_failure_inside_the_block_leaves_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with output_lock(final), staged_output(final) as stage:
            (stage / "half.gguf").write_bytes(b"half")
            raise RuntimeError("boom")
    assert not final.exists() and _siblings(final) == []
