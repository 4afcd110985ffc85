"""Summaries by real SmolLM2-135M-Instruct (ONNX int4), judged by real all-MiniLM-L6-v2 (edgekit's ONNX
build): each summary is closer to its own document than to every other, and none loops."""

from __future__ import annotations

import corpus
import numpy as np
import pytest

import edgekit
from edgekit.summaries.documents import read_document
from edgekit.summaries.summarizer import repeated_ngram

pytestmark = pytest.mark.real
FORMATS = (".txt", ".md", ".html", ".pdf", ".docx")


@pytest.fixture(scope="module")
def models(real_artifact):
    return (real_artifact("smollm2-135m-instruct", "onnx", "int4"),
            real_artifact("all-minilm-l6-v2", "onnx", "int8"))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_each_summary_is_closest_to_its_own_document(models, tmp_path):
    smol, minilm = models
    docs = [
        corpus.write(tmp_path / f"{i}{FORMATS[i % 5]}", corpus.sections(topic), topic)
        for i, topic in enumerate(corpus.TOPICS)
    ]
    with edgekit.load(smol) as eng:
        summaries = [edgekit.summarize(d, eng, words=80) for d in docs]
    with edgekit.load(minilm) as emb:
        doc_vecs = _unit(emb.embed([read_document(d).text for d in docs]))
        sum_vecs = _unit(emb.embed([s.summary for s in summaries]))
    sim = sum_vecs @ doc_vecs.T
    own = [int(np.argmax(row)) == i for i, row in enumerate(sim)]
    assert sum(own) >= 0.9 * len(docs), np.round(sim, 2)
    for s in summaries:
        assert len(s.summary.split()) >= 10, s.summary  # something was said
        assert repeated_ngram(s.summary) is None, (s.source, s.summary)


def test_a_multi_chunk_document_with_real_tokens(models, tmp_path):
    """Two pages of several topics in chunks of 512 tokens: several chunks, partial summaries
    combined, no loop anywhere, and the streamed text is the summary."""
    smol, _ = models
    doc = corpus.write(tmp_path / "notes.docx", corpus.long_sections(2), "Field notes")
    streamed: list[str] = []
    with edgekit.load(smol) as eng:
        s = edgekit.summarize(doc, eng, words=60, chunk_tokens=512, on_text=streamed.append)
    assert s.document["chunks"] >= 2 and s.steps[-1].kind == "reduce"
    assert "".join(streamed).strip() == s.summary and len(s.summary.split()) >= 8
    assert all(repeated_ngram(step.summary) is None for step in s.steps)
    assert s.document["tokens"] > 1000 and s.timings["outside_s"] < s.timings["model_s"]
