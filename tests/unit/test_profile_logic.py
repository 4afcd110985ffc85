"""The profiler's arithmetic and the choice's ranking, on made-up runs (no model, no process)."""

from __future__ import annotations

import pytest

from edgekit.metrics import LatencyBudget
from edgekit.quality.profiling import ProfileReport, VariantResult, _summarize
from edgekit.quality.ranking import faithfulness


class _Runs:
    """A stand-in for a variant's process: runs with known token times."""

    def __init__(self, ttft: float, gap: float, n_gen: int, count: int) -> None:
        times = [ttft + i * gap for i in range(n_gen)]
        self.runs = [{"start": 0.0, "times": times, "end": times[-1], "n_prompt": 64} for _ in range(count)]


def test_percentiles_speeds_and_the_budget_from_known_times():
    result = VariantResult("a", "cpu", "gguf", "int4", file_size_mb=100.0, peak_rss_mb=300.0)
    budget = LatencyBudget.parse("ttft=250ms,tpot=25ms,rss=1GB")
    _summarize(_Runs(ttft=0.2, gap=0.02, n_gen=11, count=3), result, 11, bandwidth=10.0, budget=budget)
    assert result.runs == 3 and result.n_prompt == 64 and result.n_gen == 11
    assert result.ttft_ms["p50"] == pytest.approx(200) and result.tpot_ms["p50"] == pytest.approx(20)
    assert result.itl_ms["p99"] == pytest.approx(20) and result.decode["avg_ts"] == pytest.approx(50)
    assert result.decode["stddev_ts"] == pytest.approx(0) and result.prefill["avg_ts"] == pytest.approx(320)
    assert result.bandwidth_pct == pytest.approx(50.0)  # 50 tok/s x 100 MB against 10 GB/s
    assert result.budget["passed"] and result.passed
    strict = LatencyBudget.parse("ttft=150ms,rss=200MB")
    _summarize(_Runs(0.2, 0.02, 11, 3), result, 11, 10.0, strict)
    assert result.budget["missed"] == ["ttft", "rss"] and not result.passed


def test_rows_csv_and_markdown():
    ok = VariantResult("a", "cpu", "gguf", "int4", file_size_mb=1.0)
    broken = VariantResult("b", "cuda", "onnx", "int8", error="DeviceUnavailableError: no CUDA")
    report = ProfileReport({"cpu": "x"}, [ok, broken], None, {})
    assert report.any_passed
    assert [r["error"] for r in report.rows()] == [None, "DeviceUnavailableError: no CUDA"]
    assert report.csv().splitlines()[0].startswith("artifact,device,format,quant,size_mb")
    lines = report.markdown().splitlines()
    assert lines[0].startswith("| artifact | device |") and len(lines) == 4 and "no CUDA" in lines[3]
    assert report.to_dict()["variants"][1]["passed"] is False


def test_faithfulness_orders_measured_then_by_precision():
    def manifest(label, fidelity=None):
        return {"quantization": {"label": label}, **({"fidelity": fidelity} if fidelity else {})}

    measured = manifest("int4", {"passed": True, "metrics": {"kl_mean": 0.001}})
    failed = manifest("fp32", {"passed": False, "metrics": {"kl_mean": 0.0}})
    ranked = sorted([manifest("int4"), failed, manifest("fp16"), measured, manifest("int8")],
                    key=lambda m: faithfulness(m)[:2])
    assert [m["quantization"]["label"] for m in ranked] == ["fp16", "int4", "int8", "int4", "fp32"]
    assert ranked[1] is measured and ranked[-1] is failed
    assert faithfulness(failed)[2] == "failed its verify gate"
