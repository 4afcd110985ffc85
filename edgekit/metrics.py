"""Latency metrics of one generation, in docs/architecture.md's metric words, and the latency budget check.

TTFT: request start to first generated token, tokenization included. TPOT: mean gap between
output tokens after the first. ITL: each of those gaps (p50/p90/p95/p99 reported). Prefill tok/s:
prompt tokens / TTFT. Decode tok/s: (n - 1) / (total - TTFT).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .errors import LatencyBudgetExceeded


@dataclass(frozen=True)
class DecodeMetrics:
    tokens_in: int
    tokens_out: int
    ttft_s: float
    total_s: float
    itl_s: tuple[float, ...]  # gaps between consecutive output tokens

    @classmethod
    def from_times(cls, start: float, token_times: list[float], end: float, tokens_in: int) -> DecodeMetrics:
        ttft = (token_times[0] if token_times else end) - start
        gaps = tuple(b - a for a, b in zip(token_times, token_times[1:], strict=False))
        return cls(tokens_in, len(token_times), ttft, end - start, gaps)

    @property
    def tpot_s(self) -> float:
        return sum(self.itl_s) / len(self.itl_s) if self.itl_s else 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.tokens_in / self.ttft_s if self.ttft_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        span = self.total_s - self.ttft_s
        return (self.tokens_out - 1) / span if self.tokens_out > 1 and span > 0 else 0.0

    def itl_percentile_ms(self, q: float) -> float:
        if not self.itl_s:
            return 0.0
        ordered = sorted(self.itl_s)
        return 1000 * ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def to_dict(self) -> dict[str, Any]:
        return {"tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "ttft_ms": round(1000 * self.ttft_s, 2),
                "tpot_ms": round(1000 * self.tpot_s, 2), "total_ms": round(1000 * self.total_s, 2),
                "prefill_tok_s": round(self.prefill_tok_s, 1), "decode_tok_s": round(self.decode_tok_s, 1),
                **{f"itl_p{q}_ms": round(self.itl_percentile_ms(q), 2) for q in (50, 90, 95, 99)}}


class LatencyBudgetWarning(UserWarning):
    """Issued in mode="warn" when a call misses its latency budget."""


@dataclass(frozen=True)
class BudgetVerdict:
    met: bool
    ttft_margin_ms: float | None  # budget - measured: negative means over budget
    tpot_margin_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LatencyBudget:
    """Targets for every call: TTFT and TPOT in milliseconds; mode says what a miss does."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    mode: Literal["warn", "raise", "record"] = "warn"

    def __post_init__(self) -> None:
        if self.mode not in ("warn", "raise", "record"):
            raise ValueError(f"LatencyBudget mode must be 'warn', 'raise' or 'record', not {self.mode!r}")

    def check(self, metrics: DecodeMetrics) -> BudgetVerdict:
        ttft = None if self.ttft_ms is None else self.ttft_ms - 1000 * metrics.ttft_s
        # TPOT needs two output tokens; with fewer there is nothing to judge
        tpot = (None if self.tpot_ms is None or metrics.tokens_out < 2
                else self.tpot_ms - 1000 * metrics.tpot_s)
        verdict = BudgetVerdict(met=all(m is None or m >= 0 for m in (ttft, tpot)), ttft_margin_ms=ttft,
                                tpot_margin_ms=tpot)
        if not verdict.met:
            message = (f"latency budget missed: TTFT {1000 * metrics.ttft_s:.1f} ms (budget {self.ttft_ms}), "
                       f"TPOT {1000 * metrics.tpot_s:.1f} ms (budget {self.tpot_ms})")
            if self.mode == "raise":
                raise LatencyBudgetExceeded(message, budget=self, metrics=metrics, verdict=verdict)
            if self.mode == "warn":
                warnings.warn(message, LatencyBudgetWarning, stacklevel=4)
        return verdict
