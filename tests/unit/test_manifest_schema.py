"""edgekit.json is validated on read: each field of the wrong type, or missing, is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.artifact import MANIFEST_FIELDS, read_manifest, sha256_file
from edgekit.errors import ArtifactError


def _artifact(tmp_path: Path, **fields) -> Path:
    (tmp_path / "m.bin").write_bytes(b"abc")
    manifest = {"schema_version": 1, "format": "test", "model_file": "m.bin",
                "files": [{"name": "m.bin", "size": 3, "sha256": sha256_file(tmp_path / "m.bin")}]}
    manifest.update(fields)
    for key in [k for k, v in fields.items() if v is ...]:
        del manifest[key]
    (tmp_path / "edgekit.json").write_text(json.dumps(manifest))
    return tmp_path


def test_a_minimal_manifest_reads(tmp_path):
    assert read_manifest(_artifact(tmp_path))["format"] == "test"


@pytest.mark.parametrize("key", [k for k, (_, required) in MANIFEST_FIELDS.items() if required])
def test_required_fields(tmp_path, key):
    with pytest.raises(ArtifactError, match=f"'{key}' is missing|unsupported manifest schema"):
        read_manifest(_artifact(tmp_path, **{key: ...}))


@pytest.mark.parametrize("key,value,want", [
    ("format", 3, "not str"), ("task", ["x"], "not str"), ("context_length", "8k", "not int or null"),
    ("context_length", True, "not int or null"), ("tokenizer", "gpt2", "not dict"),
    ("chat_template", 1, "str or null"),
])
def test_field_types(tmp_path, key, value, want):
    with pytest.raises(ArtifactError, match=rf"edgekit.json: '{key}' is .*{want}"):
        read_manifest(_artifact(tmp_path, **{key: value}))


def test_null_where_allowed(tmp_path):
    assert read_manifest(_artifact(tmp_path, chat_template=None,
                                   context_length=None))["chat_template"] is None


def test_onnx_decoder_facts_are_whole_numbers(tmp_path):
    facts = {"num_layers": 2, "num_kv_heads": 1, "head_dim": 16, "vocab_size": 10, "context_length": "long"}
    with pytest.raises(ArtifactError, match=r"onnx.context_length is \"long\""):
        read_manifest(_artifact(tmp_path, format="onnx", onnx=facts))


@pytest.mark.parametrize("text,says", [
    ('{"schema_version": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested thousands deep"),
    ('{"schema_version": 1, "x": ' + "7" * 5000 + "}", "unreadable manifest"),
    ('{"schema_version": ' + "[" * 500 + "]" * 500 + "}", "unsupported manifest schema"),
])
def test_hostile_manifests_are_refused_by_info_and_listed_by_list(tmp_path, text, says):
    """A JSON bomb or a 5,000-digit number in one edgekit.json: `info` says so in one line, and
    `list` still lists every other artifact under the folder, that one with its error."""
    from helpers import cli

    (tmp_path / "good").mkdir()
    _artifact(tmp_path / "good")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "edgekit.json").write_text(text)
    with pytest.raises(ArtifactError, match=says):
        read_manifest(bad)
    p = cli("info", str(bad))
    assert p.returncode == 1 and says in p.stderr and "Traceback" not in p.stderr
    p = cli("list", str(tmp_path), "--json")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    listed = {Path(a["path"]).name: a for a in json.loads(p.stdout)["artifacts"]}
    assert set(listed) == {"good", "bad"} and says in listed["bad"]["error"] and "error" not in listed["good"]


def test_a_manifest_of_gigabytes_is_not_read(tmp_path):
    from edgekit.artifact import MAX_MANIFEST_BYTES

    path = tmp_path / "edgekit.json"
    with open(path, "wb") as f:  # sparse: costs nothing to make
        f.write(b"{")
        f.truncate(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ArtifactError, match="is no manifest"):
        read_manifest(tmp_path)
