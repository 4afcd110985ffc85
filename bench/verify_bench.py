"""Fidelity of SmolLM2-135M-Instruct conversions against both references, and what verifying costs.

    .venv/bin/python bench/verify_bench.py [--runs 3] [--json]

For int8 and int4, GGUF and ONNX: the report against transformers (fp32) and against edgekit's own
fp32 build, and the ratio of their mean KL (they should agree). Then the cost, interleaved over runs
with medians: convert without verify, convert with verify (edgekit's own reference, the path of a
machine without torch), and `verify` alone with edgekit's reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import edgekit

SOURCE = "bundled:smollm2-135m-instruct"


def fidelity(root: Path) -> list[dict]:
    rows = []
    for fmt in ("gguf", "onnx"):
        for quant in ("int8", "int4"):
            out = root / f"{fmt}-{quant}"
            edgekit.convert(SOURCE, to=fmt, quant=quant, output=out, verify=False)
            reports = {kind: edgekit.verify(out, reference_kind=kind, save=False)
                       for kind in ("transformers", "edgekit")}
            t, e = reports["transformers"].metrics, reports["edgekit"].metrics
            rows.append({"format": fmt, "quant": quant, **{f"{k}_transformers": t[k] for k in (
                "kl_mean", "kl_p99", "kl_max", "top1", "top1_confident", "ppl_ratio", "greedy_divergence")},
                "kl_mean_edgekit": e["kl_mean"], "kl_ratio": e["kl_mean"] / t["kl_mean"],
                "passed": reports["transformers"].passed and reports["edgekit"].passed})
    return rows


def cost(root: Path, runs: int) -> dict[str, float]:
    times: dict[str, list[float]] = {"convert": [], "convert+verify": [], "verify": []}
    for i in range(runs):  # interleaved: drift hits each alike
        for name in times:
            out = root / f"cost-{name.replace('+', '-')}-{i}"
            start = time.perf_counter()
            if name == "verify":
                edgekit.verify(root / "gguf-int4", reference_kind="edgekit", save=False)
            else:
                edgekit.convert(SOURCE, to="gguf", quant="int4", output=out, verify=name != "convert",
                                reference_kind="edgekit")
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    medians["ratio"] = medians["convert+verify"] / medians["convert"]
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = fidelity(root)
        seconds = cost(root, args.runs)
    if args.json:
        print(json.dumps({"fidelity": rows, "seconds": seconds}, indent=2))
        return
    print("| format | quant | KL mean (transformers) | KL mean (edgekit fp32) | ratio | KL p99 | top-1 | "
          "top-1 where confident | perplexity ratio | greedy divergence |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['quant']} | {r['kl_mean_transformers']:.4f} | "
              f"{r['kl_mean_edgekit']:.4f} | {r['kl_ratio']:.3f} | {r['kl_p99_transformers']:.3f} | "
              f"{r['top1_transformers']:.3f} | "
              f"{r['top1_confident_transformers']:.3f} | {r['ppl_ratio_transformers']:.3f} | "
              f"{r['greedy_divergence_transformers']} |")
    print(f"\nGGUF int4, medians of {args.runs}: convert {seconds['convert']:.1f} s, convert+verify "
          f"{seconds['convert+verify']:.1f} s ({seconds['ratio']:.2f}x), "
          f"verify alone {seconds['verify']:.1f} s")


if __name__ == "__main__":
    main()
