"""Where a test run's time goes, from pytest's JUnit XML (pytest --junitxml=FILE).

    python scripts/durations.py run.xml [--before before.xml] [--top 30]

Prints Markdown: seconds per test file (and the change against --before), then the slowest tests.
docs/test-durations.md holds the tables this printed for the suite.
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from collections import defaultdict


def read(path: str) -> dict[str, float]:
    """test id -> seconds (setup, call and teardown together, as JUnit records them)."""
    times: dict[str, float] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/") + ".py"
        times[f"{module}::{case.get('name')}"] = times.get(f"{module}::{case.get('name')}", 0.0) + float(
            case.get("time") or 0)
    return times


def by_file(times: dict[str, float]) -> dict[str, float]:
    files: dict[str, float] = defaultdict(float)
    for test, seconds in times.items():
        files[test.split("::")[0]] += seconds
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--before")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    after = read(args.run)
    before = read(args.before) if args.before else {}
    files_after, files_before = by_file(after), by_file(before)
    print("| test file | tests | seconds |" + (" before |" if before else ""))
    print("|---|---|---|" + ("---|" if before else ""))
    for name, seconds in sorted(files_after.items(), key=lambda kv: -kv[1]):
        count = sum(1 for t in after if t.startswith(name + "::"))
        row = f"| {name} | {count} | {seconds:.1f} |"
        print(row + (f" {files_before.get(name, 0):.1f} |" if before else ""))
    total = f"| all | {len(after)} | {sum(after.values()):.1f} |"
    print(total + (f" {sum(before.values()):.1f} |" if before else ""))
    print()
    print("| slowest tests | seconds |")
    print("|---|---|")
    for test, seconds in sorted(after.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {test} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
