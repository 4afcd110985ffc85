"""A second question on the same document: what keeping the last prompt's cache saves, on both
backends, and that it changes no answer.

    .venv/bin/python bench/prefix_bench.py --gguf out/smol-q4 --onnx out/smol-onnx-int4 [--rounds 3]

A document of about 1,500 tokens (tests/corpus.py), a first question, then a second question on it;
TTFT of each (medians over rounds, each round on an engine opened fresh), and the second answer
against the same request on a fresh engine (greedy, 32 tokens).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import corpus  # noqa: E402

import edgekit  # noqa: E402


def document(engine, tokens: int = 1500) -> str:
    words: list[str] = []
    for _, paras in corpus.long_sections(4):
        words += " ".join(paras).split()
    while engine.count_tokens(" ".join(words)) > tokens:
        del words[-20:]
    return " ".join(words)


def ask(engine, doc: str, question: str):
    messages = [{"role": "user", "content": f"{doc}\n\n{question}"}]
    return engine.chat(messages, max_tokens=32, temperature=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf")
    ap.add_argument("--onnx")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("| backend | document tokens | first TTFT ms | second TTFT ms | ratio | second = fresh |")
    print("|---|---|---|---|---|---|")
    for name, path in (("llama.cpp (GGUF)", args.gguf), ("ONNX Runtime", args.onnx)):
        if not path:
            continue
        firsts, seconds, same = [], [], []
        for _ in range(args.rounds):
            with edgekit.load(path, device="cpu", n_ctx=2048) as engine:
                doc = document(engine)
                first = ask(engine, doc, "What is the first chapter about?")
                second = ask(engine, doc, "Name two topics of this text.")
                tokens = engine.count_tokens(doc)
            with edgekit.load(path, device="cpu", n_ctx=2048) as engine:
                fresh = ask(engine, doc, "Name two topics of this text.")
            firsts.append(first.ttft_s)
            seconds.append(second.ttft_s)
            same.append(second.token_ids == fresh.token_ids)
        f, s = statistics.median(firsts), statistics.median(seconds)
        print(f"| {name} | {tokens} | {1000 * f:.0f} | {1000 * s:.0f} | {s / f:.2f} | "
              f"{sum(same)}/{len(same)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
