"""What `edgekit serve` adds to a local call, and what many clients at once get from one model;
real SmolLM2-135M-Instruct int4, interleaved rounds, medians.

    .venv/bin/python bench/serve_bench.py [--rounds 7] [--tokens 64]
    .venv/bin/python bench/serve_bench.py --clients 1,2,4,8 [--parallel 8] [--rounds 5] [--gguf]

Default: one streaming client on loopback (plain httpx, nothing of a client library counted) against
the same engine called directly: TTFT and decode time. --clients: N official `openai` clients at once,
each its own 128-token prompt: aggregate tok/s and its ratio to one client, TTFT and inter-token gap
percentiles, the share of greedy answers equal to the request alone, the server's RSS.
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


def _prompts(n: int, engine) -> list[str]:
    """n different user messages of 128 tokens each (the corpus of the tests, a topic each)."""
    import corpus

    out = []
    for i in range(n):
        topic = list(corpus.TOPICS)[i % len(corpus.TOPICS)]
        words = (" ".join(corpus.TOPICS[topic]) + f" (note {i})").split()
        while engine.count_tokens(" ".join(words)) > 128:
            words.pop(0)
        out.append(" ".join(words))
    return out


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def clients(smol: Path, counts: list[int], rounds: int, tokens: int, parallel: int) -> None:
    import asyncio

    import numpy as np
    import openai

    with edgekit.load(smol) as engine:
        prompts = _prompts(max(counts), engine)
    server = Server([f"smol={smol}", "--parallel", str(parallel)])

    async def ask(client, prompt: str) -> tuple[float, list[float], str, int]:
        start = time.perf_counter()
        stamps, text, used = [], "", 0
        stream = await client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": prompt}], max_tokens=tokens,
            temperature=0, stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.usage is not None:
                used = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                stamps.append(time.perf_counter())
                text += chunk.choices[0].delta.content
        return stamps[0] - start, list(np.diff(stamps)), text, used

    async def together(n: int):
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600)
        start = time.perf_counter()
        answers = await asyncio.gather(*(ask(client, p) for p in prompts[:n]))
        return time.perf_counter() - start, answers

    try:
        async def single(prompt: str) -> str:
            client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
            return (await ask(client, prompt))[2]

        asyncio.run(together(1))  # warm-up
        # each request alone: what the answers under load are compared with
        alone = {p: asyncio.run(single(p)) for p in prompts}
        rates: dict[int, list[float]] = {n: [] for n in counts}
        ttft: dict[int, list[float]] = {n: [] for n in counts}
        gaps: dict[int, list[float]] = {n: [] for n in counts}
        same: dict[int, list[bool]] = {n: [] for n in counts}
        rss: dict[int, float] = {}
        for r in range(rounds):
            for n in counts if r % 2 == 0 else list(reversed(counts)):
                wall, answers = asyncio.run(together(n))
                rates[n].append(sum(a[3] for a in answers) / wall)
                ttft[n] += [a[0] for a in answers]
                gaps[n] += [g for a in answers for g in a[1]]
                same[n] += [a[2] == alone[p] for a, p in zip(answers, prompts, strict=False)]
                rss[n] = max(rss.get(n, 0.0), _rss_mb(server.proc.pid))
                time.sleep(0.5)
    finally:
        server.stop()
    one = statistics.median(rates[counts[0]])
    print(f"| clients | tok/s (median) | x {counts[0]} client | TTFT p50 / p95 ms | gap p50 / p95 ms | "
          "as alone | server RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for n in counts:
        t, g = np.array(ttft[n]) * 1000, np.array(gaps[n]) * 1000
        print(f"| {n} | {statistics.median(rates[n]):.1f} | {statistics.median(rates[n]) / one:.2f} | "
              f"{np.percentile(t, 50):.0f} / {np.percentile(t, 95):.0f} | "
              f"{np.percentile(g, 50):.1f} / {np.percentile(g, 95):.1f} | "
              f"{sum(same[n])}/{len(same[n])} | {rss[n]:.0f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--clients", help="comma-separated counts of clients at once, e.g. 1,2,4,8")
    ap.add_argument("--parallel", type=int, default=8, help="the server's --parallel (with --clients)")
    ap.add_argument("--gguf", action="store_true", help="llama.cpp's int4 (Q4_K_M) instead of ONNX int4")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    smol = edgekit.convert(
        "bundled:smollm2-135m-instruct", to="gguf" if args.gguf else "onnx", quant="int4",
        output=work / "smol", verify=False,
    ).path
    if args.clients:
        clients(smol, [int(n) for n in args.clients.split(",")], args.rounds, args.tokens, args.parallel)
        return 0
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
