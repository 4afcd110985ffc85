"""The artifact's path and integrity checks (edgekit/artifact.py): safe_member, read_manifest with
verification, and the ONNX external-data check. Small files written here; no model, no torch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgekit.artifact import MANIFEST, read_manifest, safe_member, sha256_file
from edgekit.errors import ArtifactError, ManifestMismatch, UnsafePathError
from edgekit.runtimes.onnx_preflight import check_external_data

# ---- helpers ---------------------------------------------------------------------------------


def _entry(root: Path, name: str) -> dict:
    path = root / name
    return {"name": name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def _write_manifest(root: Path, manifest: dict) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


_ENCODER = {"task": "feature-extraction"}  # an ONNX encoder: no decoder facts to state


def _plain_artifact(root: Path, **extra) -> Path:
    """A valid artifact of a format neither the GGUF nor the ONNX check looks at."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.bin").write_bytes(b"weights" * 10)
    (root / "notes.txt").write_text("hello", encoding="utf-8")
    manifest = {"schema_version": 1, "format": "test", "model_file": "model.bin",
                "files": [_entry(root, "model.bin"), _entry(root, "notes.txt")], **extra}
    _write_manifest(root, manifest)
    return root


def _external_tensor(name: str, location: str, n: int = 4) -> TensorProto:
    tensor = TensorProto()
    tensor.name, tensor.data_type = name, TensorProto.FLOAT
    tensor.dims.extend([n])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * n))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _io(name: str, n: int = 4):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [n])


def _save(model, path: Path) -> None:
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def _onnx_model(path: Path, location: str) -> None:
    """y = x + w, with w an initializer stored as external data at `location`."""
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [_io("x")], [_io("y")],
                              initializer=[_external_tensor("w", location)])
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _onnx_artifact(root: Path, location: str = "weights.bin", hashed: tuple[str, ...] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _onnx_model(root / "model.onnx", location)
    (root / "weights.bin").write_bytes(np.ones(4, dtype="<f4").tobytes())
    (root / "tokenizer.json").write_text("{}", encoding="utf-8")
    names = hashed if hashed is not None else ("model.onnx", "weights.bin", "tokenizer.json")
    _write_manifest(root, {"schema_version": 1, "format": "onnx", "model_file": "model.onnx", **_ENCODER,
                           "files": [_entry(root, n) for n in names]})
    return root


# ---- safe_member -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "../", "..", "a/b/../../../x",
                                  "nul\x00byte", "", "/"])
def test_unsafe_names_refused(tmp_path, name):
    (tmp_path / "a").mkdir()
    with pytest.raises(UnsafePathError):
        safe_member(tmp_path, name)


@pytest.mark.parametrize("name", [None, 5, b"model.bin", ["model.bin"], Path("model.bin")])
def test_non_str_names_refused(tmp_path, name):
    with pytest.raises(UnsafePathError):
        safe_member(tmp_path, name)


@pytest.mark.parametrize(("name", "inside"), [("model.bin", "model.bin"), ("sub/w.bin", "sub/w.bin"),
                                              ("a/../model.bin", "model.bin"), ("./model.bin", "model.bin")])
def test_safe_names_resolve_inside(tmp_path, name, inside):
    assert safe_member(tmp_path, name) == (tmp_path / inside).resolve()


def test_symlink_pointing_outside_refused(tmp_path):
    root, outside = tmp_path / "artifact", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (root / "link.bin").symlink_to(outside / "secret")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError):
        safe_member(root, "link.bin")
    with pytest.raises(UnsafePathError):
        safe_member(root, "dirlink/secret")


def test_symlink_pointing_inside_allowed(tmp_path):
    (tmp_path / "real.bin").write_bytes(b"x")
    (tmp_path / "alias.bin").symlink_to(tmp_path / "real.bin")
    assert safe_member(tmp_path, "alias.bin") == (tmp_path / "real.bin").resolve()


def test_root_given_through_a_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real, target_is_directory=True)
    assert safe_member(tmp_path / "via", "model.bin") == real.resolve() / "model.bin"


# ---- read_manifest: the manifest itself ------------------------------------------------------

def test_valid_artifact_reads(tmp_path):
    root = _plain_artifact(tmp_path / "a", extra_key="kept")
    manifest = read_manifest(root)
    assert manifest["model_file"] == "model.bin"
    assert manifest["extra_key"] == "kept"
    assert [e["name"] for e in manifest["files"]] == ["model.bin", "notes.txt"]
    assert read_manifest(str(root), verify=False) == manifest


def test_missing_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="not an edgekit artifact"):
        read_manifest(tmp_path)


def test_manifest_that_is_a_directory(tmp_path):
    (tmp_path / MANIFEST).mkdir()
    with pytest.raises(ArtifactError, match="not an edgekit artifact"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe{}", b'{"schema_version": 1,'])
def test_unreadable_manifest(tmp_path, content):
    root = _plain_artifact(tmp_path / "a")
    (root / MANIFEST).write_bytes(content)
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        read_manifest(root)


@pytest.mark.parametrize("schema", [None, 0, 2, "1", 1.5])
def test_wrong_schema_version(tmp_path, schema):
    root = _plain_artifact(tmp_path / "a")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["schema_version"] = schema
    _write_manifest(root, manifest)
    with pytest.raises(ArtifactError, match="unsupported manifest schema"):
        read_manifest(root)


@pytest.mark.parametrize("content", ["[]", "1", '"text"', "null"])
def test_manifest_not_an_object(tmp_path, content):
    (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(ArtifactError, match="unsupported manifest schema"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("files", [None, [], "model.bin", [{"size": 1}], [{"name": 3}], ["model.bin"]])
def test_bad_files_list(tmp_path, files):
    root = _plain_artifact(tmp_path / "a")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"] = files
    _write_manifest(root, manifest)
    with pytest.raises(ArtifactError, match="'files' (must be|is)"):
        read_manifest(root)


@pytest.mark.parametrize("model_file", ["other.bin", None, 3, "../model.bin"])
def test_model_file_not_hashed(tmp_path, model_file):
    root = _plain_artifact(tmp_path / "a")
    (root / "other.bin").write_bytes(b"unverified")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["model_file"] = model_file
    _write_manifest(root, manifest)
    # not a str: a schema error; a str that is not hashed: an unsafe path
    with pytest.raises(UnsafePathError if isinstance(model_file, str) else ArtifactError, match="model_file"):
        read_manifest(root)
    # not a str: a schema error; a str that is not hashed: an unsafe path
    with pytest.raises(UnsafePathError if isinstance(model_file, str) else ArtifactError, match="model_file"):
        read_manifest(root, verify=False)


# ---- read_manifest: the listed files ---------------------------------------------------------

@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("name", ["../outside.bin", "/etc/passwd", "a/../../outside.bin", "x\x00y"])
def test_listed_file_escaping_refused(tmp_path, name, verify):
    root = _plain_artifact(tmp_path / "a")
    (tmp_path / "outside.bin").write_bytes(b"outside")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"].append({"name": name, "size": 7, "sha256": sha256_file(tmp_path / "outside.bin")})
    _write_manifest(root, manifest)
    with pytest.raises(UnsafePathError):
        read_manifest(root, verify=verify)


@pytest.mark.parametrize("verify", [True, False])
def test_listed_symlink_outside_refused(tmp_path, verify):
    root = _plain_artifact(tmp_path / "a")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"secret")
    (root / "link.bin").symlink_to(secret)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"].append(_entry(root, "link.bin"))  # size and hash of the target: they match
    manifest["model_file"] = "link.bin"
    _write_manifest(root, manifest)
    with pytest.raises(UnsafePathError, match="escapes"):
        read_manifest(root, verify=verify)


def test_size_mismatch(tmp_path):
    root = _plain_artifact(tmp_path / "a")
    with open(root / "notes.txt", "ab") as fh:
        fh.write(b"!")
    with pytest.raises(ManifestMismatch, match="size"):
        read_manifest(root)
    read_manifest(root, verify=False)  # only verification reads the files


def test_sha256_mismatch_same_size(tmp_path):
    root = _plain_artifact(tmp_path / "a")
    (root / "notes.txt").write_text("HELLO", encoding="utf-8")
    with pytest.raises(ManifestMismatch, match="sha256"):
        read_manifest(root)


def test_one_flipped_bit_in_the_model_detected(tmp_path):
    root = _plain_artifact(tmp_path / "a")
    data = bytearray((root / "model.bin").read_bytes())
    data[-1] ^= 1
    (root / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ManifestMismatch):
        read_manifest(root)


def test_listed_file_missing(tmp_path):
    root = _plain_artifact(tmp_path / "a")
    (root / "notes.txt").unlink()
    with pytest.raises(ManifestMismatch, match="missing"):
        read_manifest(root)


def test_directory_where_a_file_is_listed(tmp_path):
    root = _plain_artifact(tmp_path / "a")
    (root / "notes.txt").unlink()
    (root / "notes.txt").mkdir()
    with pytest.raises(ManifestMismatch):
        read_manifest(root)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_listed_file(tmp_path):
    root = _plain_artifact(tmp_path / "a")
    (root / "notes.txt").chmod(0)
    try:
        with pytest.raises(ArtifactError, match="cannot read"):
            read_manifest(root)
    finally:
        (root / "notes.txt").chmod(0o644)


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    data = os.urandom(3 * 1024 + 7)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "f", chunk=1000) == hashlib.sha256(data).hexdigest()


# ---- ONNX external data ----------------------------------------------------------------------

def test_onnx_artifact_with_external_data_reads(tmp_path):
    root = _onnx_artifact(tmp_path / "a")
    assert read_manifest(root)["format"] == "onnx"
    check_external_data(root, "model.onnx")
    check_external_data(root, "model.onnx", {"model.onnx", "weights.bin"})


def test_onnx_artifact_runs_in_onnxruntime(tmp_path):
    # the fixture is a real model: ONNX Runtime loads the external initializer we wrote
    ort = pytest.importorskip("onnxruntime")
    root = _onnx_artifact(tmp_path / "a")
    session = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.arange(4, dtype=np.float32)})
    assert y.tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin", ""])
def test_external_data_outside_the_directory(tmp_path, location):
    (tmp_path / "outside.bin").write_bytes(np.zeros(4, dtype="<f4").tobytes())
    root = _onnx_artifact(tmp_path / "a", location=location)
    with pytest.raises(UnsafePathError):
        read_manifest(root)
    with pytest.raises(UnsafePathError):
        check_external_data(root, "model.onnx")  # even without a hash list


def test_external_data_through_a_symlink_outside(tmp_path):
    (tmp_path / "outside.bin").write_bytes(np.zeros(4, dtype="<f4").tobytes())
    root = _onnx_artifact(tmp_path / "a", location="link.bin")
    (root / "link.bin").symlink_to(tmp_path / "outside.bin")
    with pytest.raises(UnsafePathError):
        check_external_data(root, "model.onnx")


def test_external_data_not_in_the_hash_list(tmp_path):
    root = _onnx_artifact(tmp_path / "a", location="extra.bin")
    (root / "extra.bin").write_bytes(np.zeros(4, dtype="<f4").tobytes())  # inside, but never hashed
    with pytest.raises(UnsafePathError, match="hash list"):
        read_manifest(root)
    with pytest.raises(UnsafePathError, match="hash list"):
        check_external_data(root, "model.onnx", {"model.onnx", "weights.bin"})
    check_external_data(root, "model.onnx")  # inside the directory: fine without a hash list


def test_onnx_tokenizer_must_be_hashed(tmp_path):
    root = _onnx_artifact(tmp_path / "a", hashed=("model.onnx", "weights.bin"))
    with pytest.raises(UnsafePathError, match="tokenizer.json"):
        read_manifest(root)


def test_onnx_model_that_is_not_onnx(tmp_path):
    root = _onnx_artifact(tmp_path / "a")
    (root / "model.onnx").write_bytes(b"\x08\x08\xff\xff garbage, not protobuf")
    names = ("model.onnx", "weights.bin", "tokenizer.json")
    _write_manifest(root, {"schema_version": 1, "format": "onnx", "model_file": "model.onnx", **_ENCODER,
                           "files": [_entry(root, n) for n in names]})
    with pytest.raises(ArtifactError, match="not a readable ONNX model"):
        read_manifest(root)


def _constant_node_model(path: Path, location: str) -> None:
    """y = x + c, c a Constant node whose tensor is external data (ONNX Runtime reads it)."""
    constant = helper.make_node("Constant", [], ["c"], value=_external_tensor("c", location))
    add = helper.make_node("Add", ["x", "c"], ["y"])
    graph = helper.make_graph([constant, add], "g", [_io("x")], [_io("y")])
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _subgraph_model(path: Path, location: str) -> None:
    """An If whose then-branch holds an initializer stored as external data."""
    then = helper.make_graph([helper.make_node("Identity", ["c"], ["o"])], "then", [], [_io("o")],
                             initializer=[_external_tensor("c", location)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["p"])], "else", [], [_io("p")])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    graph = helper.make_graph([node], "g", [_io("x"), cond], [_io("y")])
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_constant_node_external_data_not_in_the_hash_list(tmp_path):
    root = tmp_path / "a"
    root.mkdir()
    _constant_node_model(root / "model.onnx", "extra.bin")
    (root / "extra.bin").write_bytes(np.zeros(4, dtype="<f4").tobytes())
    with pytest.raises(UnsafePathError):
        check_external_data(root, "model.onnx", {"model.onnx"})


def test_subgraph_external_data_not_in_the_hash_list(tmp_path):
    root = tmp_path / "a"
    root.mkdir()
    _subgraph_model(root / "model.onnx", "extra.bin")
    (root / "extra.bin").write_bytes(np.zeros(4, dtype="<f4").tobytes())
    with pytest.raises(UnsafePathError):
        check_external_data(root, "model.onnx", {"model.onnx"})
