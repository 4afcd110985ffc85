"""Fidelity of every int8/int4 artifact kind against transformers fp32, on off-grid SmolLM2.

Teacher-forced next-token distributions over a text of prose, code and Spanish; mean KL and
top-1 agreement (DESIGN.md section 6 method), with the artifact's size. Off-grid weights
(bench/offgrid.py) so that no format is flattered by SmolLM2's Q4_1 origin.

    python bench/fidelity.py [--grid]     # --grid: the bundled (grid-aligned) weights instead
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the reference computations the tests use
sys.path.insert(0, str(HERE))

TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
        "movable metal type with an oil-based ink. def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "La biblioteca de la ciudad abre todos los días a las nueve de la mañana.")
CASES = [("onnx", "int8"), ("onnx", "int4"), ("gguf", "int8"), ("gguf", "int4"), ("gguf", "Q4_0")]


def main() -> None:
    import numpy as np
    from offgrid import offgrid_checkpoint

    import edgekit
    from edgekit import bundled

    from helpers import hf_logits, hf_tokenizer, llama_logits, mean_kl, onnx_logits

    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ckpt = bundled.path() if args.grid else offgrid_checkpoint()
    ids = hf_tokenizer(ckpt)(TEXT, add_special_tokens=False)["input_ids"]
    ref = hf_logits(ckpt, ids)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, quant in CASES:
            r = edgekit.convert(str(ckpt), to=fmt, quant=quant, output=Path(tmp) / f"{fmt}-{quant}")
            model = r.path / r.manifest["model_file"]
            ours = onnx_logits(model, ids) if fmt == "onnx" else llama_logits(model, ids)
            size = sum(f["size"] for f in r.files if f["name"] == r.manifest["model_file"]) / 1e6
            rows.append({"format": fmt, "quant": r.quant if fmt == "gguf" else quant, "size_mb": round(size, 1),
                         "bits_per_weight": r.bits_per_weight, "mean_kl": round(mean_kl(ours, ref), 4),
                         "top1": round(float(np.mean(ours.argmax(-1) == ref.argmax(-1))), 3)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"{'artifact':<14}{'size MB':>9}{'bits/w':>8}{'mean KL':>9}{'top-1':>7}   ({'grid' if args.grid else 'off-grid'}, {len(ids)} tokens)")
    for row in rows:
        print(f"{row['format'] + ' ' + row['quant']:<14}{row['size_mb']:>9.1f}{row['bits_per_weight']:>8.2f}"
              f"{row['mean_kl']:>9.4f}{row['top1']:>7.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
