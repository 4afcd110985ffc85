"""LatencyBudget: the CLI's budget words, the verdict per line, and the message of a miss."""

from __future__ import annotations

import pytest

from edgekit.errors import InvalidOptionError
from edgekit.metrics import DecodeMetrics, LatencyBudget


def _metrics(ttft_s: float, gaps: list[float], tokens_in: int = 10) -> DecodeMetrics:
    times = [ttft_s]
    for gap in gaps:
        times.append(times[-1] + gap)
    return DecodeMetrics.from_times(0.0, times, times[-1], tokens_in)


def test_parse_reads_every_line_and_unit():
    b = LatencyBudget.parse("ttft=300ms, tpot=25, itl_p99=0.08s,total=5s,rss=1GB")
    assert (b.ttft_ms, b.tpot_ms, b.itl_p99_ms, b.total_ms, b.rss_mb) == (300, 25, 80, 5000, 1000)
    assert b.mode == "record"
    assert LatencyBudget.parse("rss=512MiB").rss_mb == pytest.approx(536.870912)
    assert LatencyBudget.parse("TTFT=1.5e2ms").ttft_ms == 150
    assert str(LatencyBudget.parse("tpot=25ms,rss=1GB")) == "tpot=25ms,rss=1000MB"


@pytest.mark.parametrize(("text", "named"), [
    ("ttft=abc", "'ttft=abc'"), ("ttft=300", None), ("speed=3ms", "'speed=3ms'"), ("ttft", "'ttft'"),
    ("ttft=-3ms", "'ttft=-3ms'"), ("ttft=0ms", "'ttft=0ms'"), ("rss=3ms", "'rss=3ms'"),
    ("ttft=3GB", "'ttft=3GB'"), ("", "empty budget"), ("ttft=1ms,ttft=2ms", "given twice"),
    ("ttft=1ms,", "''"),
])
def test_a_bad_part_is_named(text, named):
    if named is None:  # a bare number is milliseconds: valid
        assert LatencyBudget.parse(text).ttft_ms == 300
        return
    with pytest.raises(InvalidOptionError) as info:
        LatencyBudget.parse(text)
    assert named in str(info.value)


def test_constructor_refuses_nonsense():
    for bad in (0, -1, float("nan"), float("inf"), "300", True):
        with pytest.raises(ValueError, match="ttft_ms must be a positive number"):
            LatencyBudget(ttft_ms=bad)


def test_verdict_per_line():
    m = _metrics(0.2, [0.03, 0.03, 0.09])  # TTFT 200 ms, TPOT 50 ms, ITL p99 90 ms, total 350 ms
    b = LatencyBudget(ttft_ms=100, tpot_ms=60, itl_p99_ms=80, total_ms=1000, rss_mb=100, mode="record")
    v = b.judge(m, peak_rss_mb=150)
    assert not v.met and v.missed == ["ttft", "itl_p99", "rss"]
    assert v.ttft_margin_ms == pytest.approx(-100) and v.tpot_margin_ms == pytest.approx(10)
    assert v.total_margin_ms == pytest.approx(650) and v.rss_margin_mb == pytest.approx(-50)
    message = b.describe_miss(m, v)
    assert "TTFT 200.0 ms (budget 100 ms)" in message and "ITL p99 90.0 ms (budget 80 ms)" in message
    assert "peak RSS 150.0 MB (budget 100 MB)" in message and "TPOT" not in message
    one_token = _metrics(0.1, [])
    assert LatencyBudget(tpot_ms=1).judge(one_token).tpot_margin_ms is None  # nothing to judge
    assert LatencyBudget(rss_mb=1).judge(m).met  # memory not measured: not judged
    assert v.to_dict()["missed"] == ["ttft", "itl_p99", "rss"]


def test_record_mode_never_raises_and_raise_mode_carries_the_result():
    from edgekit.errors import LatencyBudgetExceeded

    m = _metrics(0.5, [0.01])
    assert not LatencyBudget(ttft_ms=100, mode="record").check(m).met
    strict = LatencyBudget(ttft_ms=100, mode="raise")
    with pytest.raises(LatencyBudgetExceeded) as info:
        strict.enforce(m, strict.judge(m), result="the text so far")
    assert info.value.result == "the text so far" and info.value.verdict.missed == ["ttft"]


def test_peak_rss_is_the_process_own_not_its_parents():
    """Linux carries a parent's ru_maxrss into its children; the budget's rss line must not."""
    import subprocess
    import sys

    import numpy as np

    from edgekit.metrics import peak_rss_mb

    big = np.ones(40_000_000)  # 320 MB in this process
    code = "from edgekit.metrics import peak_rss_mb; print(peak_rss_mb())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert peak_rss_mb() > 300 and float(child.stdout) < 200
    del big
