"""Fidelity of every int8/int4 artifact kind against transformers fp32, on off-grid SmolLM2.

Teacher-forced next-token distributions over a short text of prose, code and Spanish and two longer
mixed ones; mean KL and top-1 agreement (the method of docs/measurements.md), with the artifact's size. \
Off-grid weights
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
        "movable metal type with an oil-based ink. def fib(n):\n"
        "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "La biblioteca de la ciudad abre todos los días a las nueve de la mañana.")
# A second, longer text (381 tokens: prose, Q&A, code, SQL, science, Spanish, French, chat): the
# 83-token TEXT alone swings by +-0.01 in mean KL between quantizations of equal quality.
TEXT_LONG = """The committee met on Tuesday to review the budget for the new library wing. \
After a long discussion about heating costs, the members agreed to postpone the decision until the engineers \
report in March. Meanwhile, volunteers will continue to sort the donated books by subject and condition.
Q: How do I reverse a list in Python?
A: Use slicing, `items[::-1]`, which returns a new list, or call `items.reverse()` to reverse it in place.
class Stack:
    def __init__(self):
        self.items = []
    def push(self, x):
        self.items.append(x)
    def pop(self):
        return self.items.pop()
SELECT name, COUNT(*) FROM orders WHERE total > 100 GROUP BY name ORDER BY 2 DESC;
Photosynthesis converts light energy into chemical energy: plants take in carbon dioxide and water and \
release oxygen. The reaction happens in the chloroplasts, which contain the green pigment chlorophyll.
El tren sale de la estación central a las ocho y cuarto, y llega a Sevilla poco antes del mediodía. \
Los billetes se pueden comprar en línea o en la taquilla.
User: Can you suggest a name for my bakery?
Assistant: How about "Morning Crumb", "The Rolling Pin" or "Golden Crust"? \
Each suggests warmth and fresh bread.
In 1969, Apollo 11 landed on the Moon, and Neil Armstrong became the first person to walk on its surface. \
The mission returned 21.5 kilograms of lunar samples to Earth.
Le chat dort sur le canapé pendant que la pluie tombe doucement contre la fenêtre."""
# A third text (recipe, contract, numpy, JSON, arithmetic, German, Q&A, prose, Italian), written after
# the int4 storage choices were made and never used to make them: a check that they carry over.
TEXT_FRESH = """To make a simple tomato soup, soften a chopped onion in olive oil, add two cloves of garlic \
and a tin of tomatoes, then simmer for twenty minutes before blending until smooth. \
Season with salt, pepper and a pinch of sugar.
The tenant shall pay the rent on the first day of each month. If the rent is more than ten days late, the \
landlord may charge a fee of five percent of the amount due.
import numpy as np
def normalize(rows):
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)
{"id": 42, "name": "sensor-7", "readings": [21.5, 21.7, 22.1], "active": true}
A train leaves at 9:40 and travels 180 kilometres at 90 kilometres per hour, so it arrives at 11:40.
Die Stadtbibliothek bleibt wegen Renovierungsarbeiten bis Ende Mai geschlossen. \
Bücher können in der Zweigstelle am Marktplatz zurückgegeben werden.
User: What is the difference between weather and climate?
Assistant: Weather is what the atmosphere does over hours or days; \
climate is the average pattern over decades.
The river rose slowly through the night, and by morning the lower fields were under water. \
Farmers moved their animals to higher ground while the rain kept falling.
Il museo è aperto dal martedì alla domenica, dalle dieci alle diciotto."""
CASES = [("onnx", "int8"), ("onnx", "int4"), ("gguf", "int8"), ("gguf", "int4"), ("gguf", "Q4_0")]
TEXTS = {"": TEXT, "long_": TEXT_LONG, "fresh_": TEXT_FRESH}  # key: prefix of the result fields


def references(ckpt: Path) -> tuple[dict, dict]:
    """Token ids and transformers fp32 logits of each text, by TEXTS key."""
    from helpers import hf_logits, hf_tokenizer

    tokenizer = hf_tokenizer(ckpt)
    ids = {key: tokenizer(text, add_special_tokens=False)["input_ids"] for key, text in TEXTS.items()}
    return ids, {key: hf_logits(ckpt, i) for key, i in ids.items()}


def score(model: Path, ids: dict, ref: dict) -> dict:
    """Mean KL and top-1 agreement of an ONNX or GGUF model file on each text, and over all their
    tokens together ("all_": one text alone swings by +-0.01 between quantizations of equal quality)."""
    import numpy as np

    from helpers import llama_logits, onnx_logits, token_kl

    row, kls, hits = {}, [], []
    for key in ids:
        ours = onnx_logits(model, ids[key]) if model.suffix == ".onnx" else llama_logits(model, ids[key])
        kl, hit = token_kl(ours, ref[key]), ours.argmax(-1) == ref[key].argmax(-1)
        row[key + "mean_kl"] = round(float(kl.mean()), 4)
        row[key + "top1"] = round(float(np.mean(hit)), 3)
        kls.append(kl)
        hits.append(hit)
    row["all_mean_kl"] = round(float(np.concatenate(kls).mean()), 4)
    row["all_top1"] = round(float(np.concatenate(hits).mean()), 3)
    return row


def main() -> None:
    from offgrid import offgrid_checkpoint

    import edgekit
    from edgekit import bundled

    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ckpt = bundled.path() if args.grid else offgrid_checkpoint()
    ids, ref = references(ckpt)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, quant in CASES:
            r = edgekit.convert(str(ckpt), to=fmt, quant=quant, output=Path(tmp) / f"{fmt}-{quant}")
            model = r.path / r.manifest["model_file"]
            size = sum(f["size"] for f in r.files if f["name"] == r.manifest["model_file"]) / 1e6
            row = {"format": fmt, "quant": r.quant if fmt == "gguf" else quant, "size_mb": round(size, 1),
                   "bits_per_weight": r.bits_per_weight, **score(model, ids, ref)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = [*ids, "all_"]
    print(f"{'':<31}" + "".join(f"{len(i):>4}-token text   " for i in ids.values())
          + f"{sum(map(len, ids.values())):>4} tokens, all  ({'grid' if args.grid else 'off-grid'})")
    print(f"{'artifact':<14}{'size MB':>9}{'bits/w':>8}" + f"{'mean KL':>11}{'top-1':>7}" * len(keys))
    for row in rows:
        print(f"{row['format'] + ' ' + row['quant']:<14}{row['size_mb']:>9.1f}{row['bits_per_weight']:>8.2f}"
              + "".join(f"{row[k + 'mean_kl']:>11.4f}{row[k + 'top1']:>7.2f}" for k in keys))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
