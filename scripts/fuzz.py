"""Fuzz edgekit's readers (files, request bodies, documents) for longer than CI does, and print what
each one saw: inputs tried, refused and accepted, the slowest input, and how much the process's peak
memory grew while that reader ran.

    .venv/bin/python scripts/fuzz.py --seconds 60        # per reader

Targets and input strategies are the ones tests/unit/test_fuzz_readers.py runs in CI. Any
exception other than an EdgekitError is printed with its input and ends the run with status 1;
a crash of the process itself would end it with the signal.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))

import test_fuzz_readers as fuzz  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402


def _checker(name: str, seed: bytes, seen: dict[str, int]):
    @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(fuzz.mutated(seed))
    def check(data: bytes) -> None:
        start = time.perf_counter()
        seen[fuzz.run_one(name, data)] += 1
        seen["slowest"] = max(seen["slowest"], time.perf_counter() - start)

    return check


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="time per reader")
    args = parser.parse_args()
    rows, failed = [], False
    for name, (_, seed_fn) in fuzz.TARGETS.items():
        seen = {"accepted": 0, "refused": 0, "slowest": 0.0}
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        check = _checker(name, seed_fn(), seen)
        stop = time.monotonic() + args.seconds
        while time.monotonic() < stop:  # each round: 500 fresh random inputs
            try:
                check()
            except Exception:  # noqa: BLE001 - a reader bug: report it with hypothesis' minimal input
                traceback.print_exc()
                failed = True
                break
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024  # KB on Linux
        rows.append((name, seen["accepted"] + seen["refused"], seen["refused"], seen["accepted"]))
        print(f"{name:<24} {rows[-1][1]:>8} inputs  {rows[-1][2]:>8} refused  {rows[-1][3]:>6} accepted  "
              f"slowest {seen['slowest'] * 1000:6.1f} ms  peak memory +{grew:.0f} MB", flush=True)
    print(f"total: {sum(r[1] for r in rows)} inputs, "
          f"{'a reader raised a non-edgekit error' if failed else 'no crash'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
