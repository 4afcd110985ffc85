"""Several generations decoded together on one engine (load(parallel=N)), ONNX and llama.cpp: each
answer equals the same request alone, streams join and leave between steps, long prompts are prefilled
in chunks while the others keep decoding, and what cannot batch says so."""

from __future__ import annotations

import threading

import pytest

import edgekit
from edgekit.errors import InvalidOptionError
from edgekit.runtimes import batching, llama_batch, onnx_batch

PROMPTS = ["Hello world, this is", "One", "The quick brown fox jumps over the lazy dog and then",
           "1, 2, 3,", "a b c d e f g h i j k l m n o p", "Once upon", "Why?"]


@pytest.fixture(scope="module", params=["onnx", "gguf"])
def artifact(request, tiny_model):
    """Tiny Qwen2 with 2048 positions (room for several streams): ONNX int8, or the same as GGUF int8."""
    if request.param == "onnx":
        return tiny_model
    return edgekit.convert(str(tiny_model.parent / "ckpt"), to="gguf", quant="int8",
                           output=tiny_model.parent / "gguf", verify=False, overwrite=True).path


@pytest.fixture(scope="module")
def alone(artifact):
    """Each prompt's greedy answer, one at a time."""
    with edgekit.load(artifact, device="cpu", n_ctx=512) as engine:
        return {p: engine.generate(p, max_tokens=12, temperature=0, ignore_eos=True).token_ids
                for p in PROMPTS}


@pytest.fixture
def steps(monkeypatch):
    """Every model call the batchers make: ("prefill", its row, tokens) or ("decode", rows, 1)."""
    seen: list[tuple[str, int, int]] = []
    for cls in (onnx_batch.OnnxBatcher, llama_batch.LlamaBatcher):
        def prefill(self, s, chunk, _run=cls._prefill):
            seen.append(("prefill", s.row, len(chunk)))
            return _run(self, s, chunk)

        def decode(self, rows, _run=cls._decode_rows):
            seen.append(("decode", len(rows), 1))
            return _run(self, rows)

        monkeypatch.setattr(cls, "_prefill", prefill)
        monkeypatch.setattr(cls, "_decode_rows", decode)
    return seen


def test_a_list_of_prompts_decodes_together_each_as_alone(artifact, alone, steps):
    """Seven prompts on three rows: the first three decode together, the rest wait for a row and join
    as rows free up; every answer is the one it gets alone."""
    with edgekit.load(artifact, device="cpu", n_ctx=512 * 3, parallel=3) as engine:
        assert engine.context_length == 512 and engine.backend.parallel == 3
        results = engine.generate(PROMPTS, max_tokens=12, temperature=0, ignore_eos=True)
    assert [r.token_ids for r in results] == [alone[p] for p in PROMPTS]
    assert all(r.finish_reason == "length" and r.tokens_out == 12 for r in results)
    decode_rows = [rows for kind, rows, _ in steps if kind == "decode"]
    assert max(decode_rows) == 3 and decode_rows.count(3) >= 10  # three at once, step after step
    assert sum(1 for kind, _, _ in steps if kind == "prefill") == len(PROMPTS)  # one chunk each


def test_sampled_streams_keep_their_own_seeds(artifact):
    """Sampling with a seed gives the same tokens in a batch as alone on the same engine: each stream
    has its own sampler. (A batched llama.cpp stream is sampled by edgekit's sampler, in its order of
    temperature, top-k, min-p and top-p, not by llama.cpp's own.)"""
    options = {"max_tokens": 10, "temperature": 0.9, "top_p": 0.95, "seed": 7, "ignore_eos": True}
    with edgekit.load(artifact, device="cpu", n_ctx=2048, parallel=4) as engine:
        expected = [engine.generate(p, **options).token_ids for p in PROMPTS[:4]]
        assert [r.token_ids for r in engine.generate(PROMPTS[:4], **options)] == expected
        assert len(set(expected)) == 4


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode(artifact, alone, steps, monkeypatch):
    monkeypatch.setattr(batching, "PREFILL_CHUNK", 4)
    long_prompt = PROMPTS[4]  # 16 words: several chunks of 4 tokens
    with edgekit.load(artifact, device="cpu", n_ctx=1024, parallel=2) as engine:
        results = engine.generate([PROMPTS[1], long_prompt], max_tokens=12, temperature=0, ignore_eos=True)
    assert [r.token_ids for r in results] == [alone[PROMPTS[1]], alone[long_prompt]]
    chunks = [i for i, (kind, row, _) in enumerate(steps) if kind == "prefill" and row == 1]
    decodes = [i for i, (kind, rows, _) in enumerate(steps) if kind == "decode" and rows == 1]
    assert len(chunks) >= 3 and all(n <= 4 for kind, _, n in steps if kind == "prefill")
    assert any(chunks[0] < d < chunks[-1] for d in decodes)  # the short one decoded between the chunks


def test_threads_chat_at_once_and_each_gets_its_own_answer(artifact, steps):
    messages = [[{"role": "user", "content": p}] for p in PROMPTS[:4]]
    with edgekit.load(artifact, device="cpu", n_ctx=512) as engine:
        expected = [engine.chat(m, max_tokens=10, temperature=0).text for m in messages]
    got: dict[int, str] = {}
    with edgekit.load(artifact, device="cpu", n_ctx=2048, parallel=4) as engine:
        start = threading.Barrier(4)

        def ask(i: int) -> None:
            start.wait()
            got[i] = engine.chat(messages[i], max_tokens=10, temperature=0).text

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert [got.get(i) for i in range(4)] == expected
    assert max(rows for kind, rows, _ in steps if kind == "decode") >= 2  # several threads' rows at once


def test_a_stream_that_leaves_gives_its_row_to_the_next(artifact, alone):
    """Closing a stream halfway frees its row: a waiting prompt takes it, the others are unchanged."""
    with edgekit.load(artifact, device="cpu", n_ctx=1024, parallel=2) as engine:
        left = engine.generate(PROMPTS[0], max_tokens=12, temperature=0, ignore_eos=True, stream=True)
        pieces = iter(left)
        next(pieces)
        stay = engine.generate(PROMPTS[2], max_tokens=12, temperature=0, ignore_eos=True, stream=True)
        stay_pieces = iter(stay)
        next(stay_pieces)
        left.close()
        assert left.result.finish_reason == "cancelled"
        late = engine.generate(PROMPTS[3], max_tokens=12, temperature=0, ignore_eos=True)  # the freed row
        for _ in stay_pieces:
            pass
        assert late.token_ids == alone[PROMPTS[3]] and stay.result.token_ids == alone[PROMPTS[2]]
        assert len(engine.backend._batcher._rows) <= 1


def test_what_cannot_batch_says_so(tiny_artifact, artifact):
    with pytest.raises(InvalidOptionError, match="an embedding model embeds a list in one call"):
        edgekit.load(tiny_artifact("bert", "gguf", "int8"), device="cpu", parallel=2)
    with pytest.raises(InvalidOptionError, match="tokens per stream"):
        edgekit.load(artifact, device="cpu", n_ctx=128, parallel=8)  # llama.cpp pads its context to 256
    with pytest.raises(InvalidOptionError, match="parallel must be a whole number"):
        edgekit.load(artifact, parallel=0)
    with edgekit.load(artifact, device="cpu") as engine:
        with pytest.raises(InvalidOptionError, match="stream=True takes one prompt"):
            engine.generate(["a", "b"], stream=True)
        with pytest.raises(InvalidOptionError, match=r"prompts\[1\] is int"):
            engine.generate(["a", 3])
