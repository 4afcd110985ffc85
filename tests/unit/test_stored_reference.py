"""The transformers reference's answers kept on disk: a second verification of the same checkpoint
asks the model nothing it answered before, and opens it only for a new question."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.quality.fidelity import StoredReference


class Model:
    """A stand-in for the transformers reference that counts what it is asked."""

    description = "transformers 0 fp32 on fake"
    opened = 0

    def __init__(self) -> None:
        Model.opened += 1
        self.asked: list[str] = []

    def tokenize(self, text):
        self.asked.append("tokenize")
        return [len(w) for w in text.split()]

    def score(self, ids):
        self.asked.append("score")
        return np.arange(len(ids) * 3, dtype=np.float32).reshape(len(ids), 3) + ids[0]

    def greedy(self, ids, n):
        return list(range(n))

    def embed(self, texts):
        return np.ones((len(texts), 4), np.float32)

    def close(self):
        pass


def test_answers_are_kept_and_the_model_opens_only_for_new_questions(tmp_path):
    Model.opened = 0
    first = StoredReference(tmp_path / "ref", "described", Model).holding(Model())
    assert first.tokenize("a bb ccc") == [1, 2, 3] and first.score([5, 6]).tolist() == [[5, 6, 7], [8, 9, 10]]
    assert first.greedy([1], 3) == [0, 1, 2] and first.embed(["x"]).shape == (1, 4)
    assert Model.opened == 1 and first.seen()

    again = StoredReference(tmp_path / "ref", "described", Model)
    assert again.seen()
    assert again.tokenize("a bb ccc") == [1, 2, 3] and again.score([5, 6]).tolist() == [[5, 6, 7], [8, 9, 10]]
    assert again.greedy([1], 3) == [0, 1, 2]
    assert Model.opened == 1  # everything came from the disk
    assert again.score([7, 6]).tolist()[0] == [7, 8, 9]  # a new question opens the model once
    assert Model.opened == 2


def test_another_checkpoint_has_a_store_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    manifest = {"source": {"files": {"config.json": "aa"}}}
    a = StoredReference.for_source(ckpt, manifest, "text-generation", {})
    b = StoredReference.for_source(ckpt, {"source": {"files": {"config.json": "bb"}}}, "text-generation", {})
    if a is None:
        pytest.skip("transformers and torch are not installed: nothing is stored")
    assert b is not None and a.folder != b.folder and a.folder.parent == tmp_path / "cache" / "references"
    assert StoredReference.for_source(ckpt, {"source": {}}, "text-generation", {}) is None  # no hashes
    missing = {"source": {"files": {"config.json": "aa", "model.safetensors": "cc"}}}
    assert StoredReference.for_source(ckpt, missing, "text-generation", {}) is None  # a file not there


def test_edgekit_fp32_answers_are_kept_by_format_and_by_the_code_that_builds_them(tmp_path, monkeypatch):
    """The fp32 build's store: its own per format, never shared with transformers', and a new one
    when the converters or runtimes change (their sources are hashed)."""
    from edgekit.quality import fidelity

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    source = {"files": {"config.json": "aa"}}

    def store(fmt: str):
        return StoredReference.for_edgekit(ckpt, {"source": source, "format": fmt}, "text-generation", {},
                                           f"edgekit's own fp32 {fmt} build", Model)

    gguf, onnx = store("gguf"), store("onnx")
    assert gguf.kind == onnx.kind == "edgekit-fp32" and gguf.folder != onnx.folder
    assert gguf.folder == store("gguf").folder
    hf = StoredReference.for_source(ckpt, {"source": source}, "text-generation", {})
    assert hf is None or hf.folder not in (gguf.folder, onnx.folder)
    fidelity._code_hash.cache_clear()
    monkeypatch.setattr(fidelity, "_code_hash", lambda: "changed")
    assert store("gguf").folder != gguf.folder
