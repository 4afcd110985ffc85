"""The fidelity arithmetic and the gate, on made-up logits (no model, no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import InvalidOptionError
from edgekit.quality.fidelity import (
    GATES,
    FidelityReport,
    cosine_metrics,
    first_difference,
    gate,
    logit_metrics,
    thresholds_for,
)


def _logits(n: int = 40, vocab: int = 50, sharp: float = 6.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.normal(size=(n, vocab))
    out[np.arange(n), rng.integers(0, vocab, n)] += sharp  # a clear favourite at each position
    return out.astype(np.float32)


def test_identical_logits_lose_nothing():
    ref = _logits()
    ids = list(range(41))
    m = logit_metrics(ref, ref.copy(), ids)
    assert m["kl_mean"] == pytest.approx(0, abs=1e-12) and m["kl_max"] == pytest.approx(0, abs=1e-12)
    assert m["top1"] == 1 and m["top1_confident"] == 1 and m["ppl_ratio"] == pytest.approx(1)
    assert m["positions"] == 40 and m["confident_positions"] > 30


def test_kl_is_of_the_reference_against_ours_and_grows_with_damage():
    ref = _logits()
    ids = list(range(41))
    slight = logit_metrics(ref + np.random.default_rng(1).normal(0, 0.05, ref.shape), ref, ids)
    broken = logit_metrics(np.roll(ref, 1, axis=1), ref, ids)  # every favourite moved: a wrong permutation
    assert 0 < slight["kl_mean"] < 0.01 and slight["top1"] == 1
    assert broken["kl_mean"] > 1 and broken["top1_confident"] < 0.1
    assert broken["kl_p99"] <= broken["kl_max"] and broken["kl_mean"] <= broken["kl_max"]
    # by hand for one row: sum p_ref * (log p_ref - log p_ours)
    a, b = ref[:1].astype(np.float64), np.roll(ref, 1, axis=1)[:1].astype(np.float64)
    pa, pb = np.exp(a) / np.exp(a).sum(), np.exp(b) / np.exp(b).sum()
    one = logit_metrics(b.astype(np.float32), a.astype(np.float32), [0, 1])
    assert one["kl_mean"] == pytest.approx(float((pa * np.log(pa / pb)).sum()), rel=1e-5)


def test_perplexity_on_the_text_and_padded_vocabularies():
    ref = _logits(vocab=50)
    ids = list(np.argmax(ref, axis=1)[:-1])  # each next token is the favourite: low perplexity
    ids = [0, *ids]
    padded = np.concatenate([ref, np.full((len(ref), 14), -1e4, np.float32)], axis=1)  # 64 padded rows
    m = logit_metrics(padded, ref, ids)
    assert m["kl_mean"] == pytest.approx(0, abs=1e-9) and m["ppl"] < 2 and m["ppl_ratio"] == pytest.approx(1)


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_cosine_metrics():
    v = np.eye(3)
    m = cosine_metrics(v, v * 2)
    assert m == {"sentences": 3, "cosine_mean": pytest.approx(1), "cosine_min": pytest.approx(1)}
    m = cosine_metrics(v, np.roll(v, 1, axis=0))
    assert m["cosine_mean"] == pytest.approx(0)


def test_gate_and_its_thresholds():
    limits = thresholds_for("int4")
    assert limits == GATES["int4"]
    good = {"tokenizer_match": True, "tokenizer_first_difference": None, "kl_mean": 0.08,
            "top1_confident": 0.97, "confident_positions": 170}
    assert gate("text-generation", good, limits) == []
    bad = {**good, "kl_mean": 0.5, "top1_confident": 0.4, "tokenizer_match": False,
           "tokenizer_first_difference": 7}
    failures = gate("text-generation", bad, limits)
    assert len(failures) == 3 and "token 7" in failures[0] and "mean KL 0.50000 > 0.3" in failures[1]
    # too few confident positions (a random model): top-1 is reported, not judged
    assert gate("text-generation", {**good, "top1_confident": 0.0, "confident_positions": 3}, limits) == []
    assert gate("feature-extraction", {"cosine_mean": 0.94, "cosine_min": 0.9}, limits) == [
        "mean cosine 0.94000 < 0.95"]
    assert thresholds_for("int8", max_kl=0.5, min_top1=0.1)["max_kl"] == 0.5
    assert thresholds_for("Q4_K_M")["max_kl"] == GATES["int4"]["max_kl"]  # unknown labels: int4's gate
    for bad_value in ({"max_kl": -1}, {"min_top1": 2}, {"min_cosine": "high"}):
        with pytest.raises(InvalidOptionError, match=next(iter(bad_value))):
            thresholds_for("int4", **bad_value)
    ordered = [GATES[k]["max_kl"] for k in ("fp32", "fp16", "int8", "int6", "int5", "int4", "int3", "int2")]
    assert ordered == sorted(ordered)  # fewer bits, more loss allowed


def test_report_round_trip_and_rows():
    metrics = {"positions": 10, "kl_mean": 0.1, "kl_p99": 0.2, "kl_max": 0.3, "top1": 0.8,
               "top1_confident": 0.9, "confident_positions": 20, "ppl": 3.0, "ppl_reference": 2.9,
               "ppl_ratio": 1.03,
               "tokenizer_match": True, "tokenizer_first_difference": None, "greedy_divergence": None,
               "greedy_tokens": 32}
    report = FidelityReport("a", "text-generation", "int4", {"kind": "transformers", "description": "x"},
                            {"name": "e"}, metrics, thresholds_for("int4"), True)
    again = FidelityReport.from_dict({**report.to_dict(), "unknown": 1})
    assert again == report and report.verdict == "PASS"
    rows = {name.strip(): value for name, value, _ in report.rows()}
    assert rows["where confident"] == "0.9000 over 20 positions"
    assert rows["greedy divergence"].startswith("none")


def test_the_evaluation_text_is_not_the_calibration_text(tmp_path):
    from edgekit.converters.onnx_calibration import CALIBRATION_TEXT
    from edgekit.quality.fidelity import _evaluation

    text, info = _evaluation(None)
    assert info["calibrated_on"] is False and info["name"] == "edgekit-eval-v1"
    mine = tmp_path / "mine.txt"
    mine.write_text("Some words of my own.\n" + CALIBRATION_TEXT[:200], encoding="utf-8")
    assert _evaluation(mine)[1]["calibrated_on"] is True  # said in the report, not hidden
    for bad, message in ((tmp_path / "none.txt", "no such evaluation file"), (tmp_path, "cannot be read")):
        with pytest.raises(InvalidOptionError, match=message):
            _evaluation(bad)
