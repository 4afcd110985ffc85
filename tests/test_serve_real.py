"""edgekit serve under load on real SmolLM2-135M-Instruct (ONNX int4, 4 streams decoded together by
default): 32 streaming clients at once, round after round, each answer whole and most equal to the same
request run alone (a batched step rounds differently from a single one, which flips near-ties of
greedy decoding), server memory flat."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.real
CLIENTS, ROUNDS, TOKENS = 32, 2, 8  # a leak of one request would show 32 times a round
DISTINCT = 8  # different prompts among the 32, each answered alone once for the expected answers


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_32_streaming_clients_round_after_round(real_artifact):
    from test_serve import Server

    smol = real_artifact("smollm2-135m-instruct", "onnx", "int4")
    server = Server([f"smol={smol}"])
    try:
        distinct = [f"Name one animal and one color. This is request number {i}." for i in range(DISTINCT)]
        prompts = [distinct[i % DISTINCT] for i in range(CLIENTS)]  # neighbours differ

        async def ask(client, prompt: str) -> tuple[str, str | None]:
            pieces, finish = [], None
            stream = await client.chat.completions.create(
                model="smol",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=TOKENS,
                temperature=0,
                stream=True,
            )
            async for chunk in stream:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
            return "".join(pieces), finish

        async def alone() -> list[tuple[str, str | None]]:
            client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
            answers = {p: await ask(client, p) for p in distinct}
            return [answers[p] for p in prompts]

        async def together() -> list[tuple[str, str | None]]:
            client = openai.AsyncOpenAI(
                base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600
            )
            return await asyncio.gather(*(ask(client, p) for p in prompts))

        expected = asyncio.run(alone())
        assert all(text and finish in ("stop", "length") for text, finish in expected)
        assert len({text for text, _ in expected}) > 1  # the prompts differ, so do the answers
        rss = []
        same = []
        for _ in range(ROUNDS):
            got = asyncio.run(together())
            assert all(text and finish in ("stop", "length") for text, finish in got)
            same += [g == e for g, e in zip(got, expected, strict=True)]
            rss.append(_rss_mb(server.proc.pid))
        # measured: 56 of 64 answers equal (8 greedy tokens each); the others flip a near-tie
        assert sum(same) >= 0.6 * len(same), f"{sum(same)} of {len(same)} answers as alone"
        assert max(rss) <= rss[0] * 1.05 + 5, rss  # flat: a leak per request would show 32 at a time
    finally:
        log = server.stop()
    assert "4 streams of 1024 tokens" in log  # decoded together by default
