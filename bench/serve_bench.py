"""What `edgekit serve` adds to a local call: one client on loopback against the same engine called
directly, real SmolLM2-135M-Instruct (ONNX int4), interleaved round by round, medians.

    .venv/bin/python bench/serve_bench.py [--rounds 7] [--tokens 64]

TTFT: from sending the request to the first text (over HTTP: the first SSE chunk with content, read
with a plain httpx stream on one kept client, so that no client library's parsing or set-up is
counted). Decode: from the first text to the last. The greedy answer is the same both ways, so both
decode the same tokens. Half a second between runs lets the other process's ONNX Runtime threads
stop spinning.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_serve import Server  # noqa: E402

import edgekit  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a few sentences about the history of lighthouses."}]


def direct(engine, tokens: int) -> tuple[float, float, str]:
    start = time.perf_counter()
    first = last = None
    text = ""
    for piece in engine.chat(MESSAGES, max_tokens=tokens, temperature=0, stream=True):
        last = time.perf_counter()
        first = first or last
        text += piece
    return first - start, last - first, text


def served(client: httpx.Client, url: str, tokens: int) -> tuple[float, float, str]:
    body = {"model": "smol", "messages": MESSAGES, "max_tokens": tokens, "temperature": 0, "stream": True}
    start = time.perf_counter()
    first = last = None
    text = ""
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            piece = choices[0].get("delta", {}).get("content") if choices else None
            if piece:
                last = time.perf_counter()
                first = first or last
                text += piece
    return first - start, last - first, text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    smol = edgekit.convert(
        "bundled:smollm2-135m-instruct", to="onnx", quant="int4", output=work / "smol", verify=False
    ).path
    server = Server([f"smol={smol}"])
    try:
        with edgekit.load(smol) as engine, httpx.Client() as client:  # one client, as an app keeps
            direct(engine, args.tokens)  # warm-ups
            served(client, server.url, args.tokens)
            rows: dict[str, list[tuple[float, float]]] = {"direct": [], "server": []}
            texts = set()
            for _ in range(args.rounds):
                for name in ("direct", "server"):
                    ttft, decode, text = (
                        direct(engine, args.tokens)
                        if name == "direct"
                        else served(client, server.url, args.tokens)
                    )
                    rows[name].append((ttft, decode))
                    texts.add(text)
                    time.sleep(0.5)  # the other process's ONNX Runtime threads stop spinning first
    finally:
        server.stop()
    med = {
        name: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
        for name, v in rows.items()
    }
    (d_ttft, d_dec), (s_ttft, s_dec) = med["direct"], med["server"]
    print(f"same text both ways: {len(texts) == 1}")
    print(
        f"TTFT ms: direct {1000 * d_ttft:.1f}, server {1000 * s_ttft:.1f}, "
        f"added {1000 * (s_ttft - d_ttft):.1f}"
    )
    print(f"decode ms: direct {1000 * d_dec:.1f}, server {1000 * s_dec:.1f}, ratio {s_dec / d_dec:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
