"""Sampled decode against greedy decode on one ONNX artifact: what the sampler costs per token.

Rounds interleave greedy and each sampled setting (order flipped every round), 96 tokens each past the
first, medians and the ratio to greedy in one run:

    .venv/bin/python bench/sampling_bench.py out/smol-onnx-int4 [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import edgekit
from edgekit.runtimes.base import GenerationOptions

SETTINGS = {
    "greedy": {"temperature": 0.0},
    "t0.7 top-p 0.9 (top-k 40)": {"temperature": 0.7, "top_p": 0.9},
    "t0.7 top-p 0.9 top-k off": {"temperature": 0.7, "top_p": 0.9, "top_k": 0},
    "t0.8 min-p 0.05 top-k off": {"temperature": 0.8, "min_p": 0.05, "top_k": 0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with edgekit.load(args.artifact, device="cpu") as engine:
        ids = engine.backend.tokenize("Once upon a time", True)
        names = list(SETTINGS)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else reversed(names):
                options = GenerationOptions(max_tokens=args.tokens + 1, seed=r, ignore_eos=True,
                                            **SETTINGS[name])
                start, count = None, -1
                for _ in engine.backend.generate(ids, options):
                    start, count = start or time.perf_counter(), count + 1  # from the first token
                rates[name].append(count / (time.perf_counter() - start))
    greedy = statistics.median(rates["greedy"])
    rows = {name: {"tok_s": round(statistics.median(v), 1),
                   "vs_greedy": round(statistics.median(v) / greedy, 3)} for name, v in rates.items()}
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| setting | decode tok/s (median) | x greedy |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['tok_s']} | {row['vs_greedy']:.2f} |")


if __name__ == "__main__":
    main()
