"""Variants of the ONNX int4 storage scheme side by side: size, fidelity on both texts, decode speed.

The tool behind the int4 choices in converters/onnx_recipe.py (PRECISIONS["int4"]). Each variant
is the shipped Precision with some fields replaced; all are built from off-grid SmolLM2
(bench/offgrid.py), scored against transformers fp32 on bench/fidelity.py's texts, then decoded
through edgekit in one process, interleaved in an order that reverses each run, with paired ratios
against the first variant (the shipped one). On a shared 2-core machine two sessions of the very
same graph can land 5-8% apart: "shipped-again" shows how far, so smaller gaps are noise.

    python bench/int4_variants.py [--runs 8] [--only shipped,k-4bit] [--json bench/results/int4.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

# name -> fields replaced in the shipped int4 Precision
VARIANTS: dict[str, dict] = {
    "shipped": {},
    "shipped-again": {},  # the same graph in its own session: how far apart two equal runs land
    "no-gptq": {"gptq": False},  # session 5's int4: searched scales, round to nearest
    "min-max-scales": {"scale_search": False, "gptq": False},  # session 4's int4: no scale search
    "bias-correction": {"bias_correction": True},  # off by default: CUDA support (Precision's comment)
    # session 3's layout: q/k/gate/up 4-bit, v/o/down 8-bit with zero points, float32 head scales
    "v-o-down-8bit": {"eight_bit": ("v_proj", "o_proj", "down_proj"), "eight_bit_ends": (),
                      "symmetric_eight_bit": False, "half_scale_head": False},
    "down-8bit-everywhere": {"eight_bit": ("k_proj", "v_proj", "o_proj", "down_proj")},
    "k-4bit": {"eight_bit": ("v_proj", "o_proj")},
    "float32-head-scales": {"half_scale_head": False},
    "block16": {"block_size": 16},
}


def main() -> None:
    from decode_bench import QUESTION, SYSTEM, edgekit_run
    from fidelity import references, score
    from offgrid import offgrid_checkpoint

    import edgekit
    from edgekit.converters import onnx_recipe

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--only", default=",".join(VARIANTS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")

    ckpt = offgrid_checkpoint()
    ids, ref = references(ckpt)
    shipped = onnx_recipe.PRECISIONS["int4"]
    rows, engines = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            onnx_recipe.PRECISIONS["int4"] = dataclasses.replace(shipped, **VARIANTS[name])
            try:
                start = time.perf_counter()
                r = edgekit.convert(str(ckpt), to="onnx", quant="int4", output=Path(tmp) / name)
                build_s = time.perf_counter() - start
            finally:
                onnx_recipe.PRECISIONS["int4"] = shipped
            model = r.path / r.manifest["model_file"]
            row = {"size_mb": round(model.stat().st_size / 1e6, 2), "bits_per_weight": r.bits_per_weight,
                   "build_s": round(build_s, 1), **score(model, ids, ref)}
            rows[name] = row
            print(name, json.dumps(row), flush=True)
            engines[name] = edgekit.load(str(r.path), device="cpu")

        first = engines[names[0]]
        prompt = first.render_chat([{"role": "system", "content": SYSTEM},
                                    {"role": "user", "content": QUESTION}])
        for engine in engines.values():
            edgekit_run(engine, prompt)  # warm-up
        speeds: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for run in range(args.runs):
            for name in names if run % 2 == 0 else names[::-1]:
                speeds[name].append(edgekit_run(engines[name], prompt))
        for engine in engines.values():
            engine.close()

    print(f"{'variant':<28}{'MB':>7}{'bits/w':>7}"
          + "".join(f"{'KL ' + str(len(i)):>9}" for i in ids.values())
          + f"{'KL all':>9}{'tok/s':>7}{'TTFT s':>8}{'paired':>8}")
    for name in names:
        decode = [s[0] for s in speeds[name]]
        rows[name].update(decode_tok_s=round(statistics.median(decode), 1),
                          ttft_s=round(statistics.median(s[1] for s in speeds[name]), 3),
                          decode_paired=round(statistics.median(
                              d / b[0] for d, b in zip(decode, speeds[names[0]], strict=True)), 3))
        r = rows[name]
        print(f"{name:<28}{r['size_mb']:>7.1f}{r['bits_per_weight']:>7.2f}"
              + "".join(f"{r[k + 'mean_kl']:>9.4f}" for k in [*ids, "all_"])
              + f"{r['decode_tok_s']:>7.1f}{r['ttft_s']:>8.3f}{r['decode_paired']:>8.3f}")
    print(f"({args.runs} interleaved runs; paired = median of per-run decode ratios against {names[0]})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
