"""Latency metrics of one generation, in docs/architecture.md's metric words, and the latency budget check.

TTFT: request start to first generated token, tokenization included. TPOT: mean gap between
output tokens after the first. ITL: each of those gaps (p50/p90/p95/p99 reported). Prefill tok/s:
prompt tokens / TTFT. Decode tok/s: (n - 1) / (total - TTFT).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

from edgekit.errors import LatencyBudgetExceeded, LatencyBudgetWarning


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


# budget line name -> (LatencyBudget field, unit kind) for LatencyBudget.parse
_BUDGET_KEYS = {"ttft": ("ttft_ms", "time"), "tpot": ("tpot_ms", "time"), "itl_p99": ("itl_p99_ms", "time"),
                "total": ("total_ms", "time"), "rss": ("rss_mb", "size")}
_TIME_UNITS = {"ms": 1.0, "s": 1000.0, "": 1.0}  # a bare number is milliseconds
_SIZE_UNITS = {"kb": 1e-3, "mb": 1.0, "gb": 1e3, "kib": 1024 / 1e6, "mib": 1.048576,
               "gib": 1073.741824, "": 1.0}  # a bare number is megabytes (10^6 bytes)


@dataclass(frozen=True)
class BudgetVerdict:
    """Per budget line, budget minus measured (negative: over budget); None where the line is unset
    or there was nothing to judge (TPOT and ITL need two output tokens)."""

    met: bool
    ttft_margin_ms: float | None = None
    tpot_margin_ms: float | None = None
    itl_p99_margin_ms: float | None = None
    total_margin_ms: float | None = None
    rss_margin_mb: float | None = None

    @property
    def missed(self) -> list[str]:
        """The budget lines that were missed, in LatencyBudget.parse's words ("ttft", "tpot" ...)."""
        return [k for k in _BUDGET_KEYS
                if (m := getattr(self, f"{k}_margin_{'mb' if k == 'rss' else 'ms'}")) is not None and m < 0]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "missed": self.missed}


@dataclass(frozen=True)
class LatencyBudget:
    """Targets for every call: TTFT, TPOT, ITL p99 and total time in milliseconds, peak resident
    memory of the process in MB; mode says what a miss does ("warn", "raise" or "record").

    In "raise" mode a generation stops as soon as a miss is certain (TTFT at the first token, total
    time when it runs out) and LatencyBudgetExceeded carries the result so far, text included.
    """

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    mode: Literal["warn", "raise", "record"] = "warn"
    itl_p99_ms: float | None = None
    total_ms: float | None = None
    rss_mb: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("warn", "raise", "record"):
            raise ValueError(f"LatencyBudget mode must be 'warn', 'raise' or 'record', not {self.mode!r}")
        for name in ("ttft_ms", "tpot_ms", "itl_p99_ms", "total_ms", "rss_mb"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not value > 0 or value == float("inf")):
                raise ValueError(f"LatencyBudget {name} must be a positive number, not {value!r}")

    @classmethod
    def parse(cls, text: str, mode: Literal["warn", "raise", "record"] = "record") -> LatencyBudget:
        """From the CLI's words: "ttft=300ms,tpot=25ms,itl_p99=80ms,total=5s,rss=1GB" (any subset).
        Times take ms or s (bare numbers: ms), memory kB/MB/GB or KiB/MiB/GiB (bare: MB). A bad part
        is an InvalidOptionError naming it."""
        import re

        from edgekit.errors import InvalidOptionError

        values: dict[str, float] = {}
        parts = [p.strip() for p in str(text).split(",")]
        if not any(parts):
            raise InvalidOptionError(f"empty budget {text!r}; write e.g. \"ttft=300ms,tpot=25ms\"")
        for part in parts:
            key, sep, raw = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in _BUDGET_KEYS:
                raise InvalidOptionError(f"budget part {part!r}: expected NAME=VALUE with NAME one of "
                                         f"{', '.join(_BUDGET_KEYS)}")
            field_name, kind = _BUDGET_KEYS[key]
            units = _TIME_UNITS if kind == "time" else _SIZE_UNITS
            match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*", raw.lower())
            if match is None or match.group(2) not in units or not float(match.group(1)) > 0:
                raise InvalidOptionError(f"budget part {part!r}: {key} needs a positive number with a unit "
                                         f"({', '.join(u for u in units if u)})")
            if field_name in values:
                raise InvalidOptionError(f"budget part {part!r}: {key} is given twice")
            values[field_name] = float(match.group(1)) * units[match.group(2)]
        return cls(mode=mode, **values)

    def __str__(self) -> str:
        words = []
        for key, (name, kind) in _BUDGET_KEYS.items():
            value = getattr(self, name)
            if value is not None:
                words.append(f"{key}={value:g}{'ms' if kind == 'time' else 'MB'}")
        return ",".join(words)

    def judge(self, metrics: DecodeMetrics, peak_rss_mb: float | None = None) -> BudgetVerdict:
        """The verdict alone: no warning, no exception (check() applies the mode)."""
        two = metrics.tokens_out >= 2  # TPOT and ITL need two output tokens; with fewer nothing to judge
        return self.judge_values({"ttft": 1000 * metrics.ttft_s,
                                  "tpot": 1000 * metrics.tpot_s if two else None,
                                  "itl_p99": metrics.itl_percentile_ms(99) if two else None,
                                  "total": 1000 * metrics.total_s, "rss": peak_rss_mb})

    def judge_values(self, measured: dict[str, float | None]) -> BudgetVerdict:
        """The verdict on figures measured elsewhere (the profiler's medians): ms for times, MB for
        memory, keyed like the budget's words; a None figure is not judged."""
        margins = []
        for key, (name, _kind) in _BUDGET_KEYS.items():
            limit, value = getattr(self, name), measured.get(key)
            margins.append(None if limit is None or value is None else limit - value)
        return BudgetVerdict(all(m is None or m >= 0 for m in margins), *margins)

    def describe_miss(self, metrics: DecodeMetrics, verdict: BudgetVerdict) -> str:
        """One line naming each missed budget line with what was measured."""
        words = {"ttft": "TTFT", "tpot": "TPOT", "itl_p99": "ITL p99", "total": "total", "rss": "peak RSS"}
        parts = []
        for key in verdict.missed:
            name, kind = _BUDGET_KEYS[key]
            limit, unit = getattr(self, name), ("MB" if kind == "size" else "ms")
            over = -getattr(verdict, f"{key}_margin_{unit.lower()}")
            parts.append(f"{words[key]} {limit + over:.1f} {unit} (budget {limit:g} {unit})")
        return "latency budget missed: " + ", ".join(parts)

    def check(self, metrics: DecodeMetrics, peak_rss_mb: float | None = None) -> BudgetVerdict:
        """judge(), then what the mode says a miss does (see enforce())."""
        verdict = self.judge(metrics, peak_rss_mb)
        self.enforce(metrics, verdict)
        return verdict

    def enforce(self, metrics: DecodeMetrics, verdict: BudgetVerdict, result: Any = None) -> None:
        """On a miss: "raise" raises LatencyBudgetExceeded (carrying `result`), "warn" issues a
        LatencyBudgetWarning, "record" does nothing."""
        if verdict.met or self.mode == "record":
            return
        message = self.describe_miss(metrics, verdict)
        if self.mode == "raise":
            raise LatencyBudgetExceeded(message, budget=self, metrics=metrics, verdict=verdict, result=result)
        warnings.warn(message, LatencyBudgetWarning, stacklevel=5)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MB (None where the OS does not say).

    Linux: VmHWM of /proc/self/status, the high-water mark of this process's own memory. Its
    ru_maxrss would not do: Linux carries the parent's peak across fork and exec, so a child started
    by a big process reports the parent's size.
    """
    import sys

    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024 / 1e6  # kB
        except (OSError, ValueError, IndexError):
            pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # bytes on macOS, KiB elsewhere
    except (ImportError, OSError):
        return None
