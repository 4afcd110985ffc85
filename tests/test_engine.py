"""The runtimes: GGUF through llama.cpp and ONNX through ONNX Runtime, one Engine API.

Greedy tokens equal transformers' on tiny fp32 artifacts; streaming, stop strings, context
overflow and devices behave the same on both backends.
"""

from __future__ import annotations

import numpy as np
import pytest

import edgekit
from edgekit.errors import ContextOverflowError, DeviceUnavailableError

from helpers import checkpoint_key, hf_model, hf_tokenizer, memo


@pytest.fixture(scope="module", params=["gguf", "onnx"])
def fp32_artifact(request, tiny_artifact):
    return tiny_artifact("qwen2", request.param, "fp32")


def test_greedy_tokens_equal_transformers(fp32_artifact, tiny_checkpoint):
    import torch

    ckpt = tiny_checkpoint("qwen2")
    tok = hf_tokenizer(ckpt)
    prompt = "Hello world, this is"
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    _, model = hf_model(ckpt)
    with torch.no_grad():  # both formats compare with one generation
        ref = memo(("generate", checkpoint_key(ckpt), prompt), lambda: model.generate(
            ids, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0))
    expected = tok.decode(ref[0, ids.shape[1]:])
    with edgekit.load(fp32_artifact, device="cpu") as engine:
        result = engine.generate(prompt, max_tokens=32, temperature=0)
    assert result.tokens_out == 32 and result.finish_reason == "length"
    assert result.text == expected


def test_logprobs_are_the_models_own(fp32_artifact):
    """logprobs=N: each token's log-probability is the log-softmax of the model's logits for it (the
    same as a whole-sequence pass scores it), sampled or greedy; its N alternatives come likeliest first,
    and greedy's first alternative is the token itself."""
    import numpy as np

    with edgekit.load(fp32_artifact, device="cpu") as engine:
        plain = engine.generate("Hello world, this is", max_tokens=6, temperature=0)
        greedy = engine.generate("Hello world, this is", max_tokens=6, temperature=0, logprobs=3)
        sampled = engine.generate("Hello world, this is", max_tokens=6, temperature=1.0, seed=4, logprobs=0)
        ids = engine.backend.tokenize("Hello world, this is", True)
        scored = engine.backend.score(ids + list(greedy.token_ids))
    assert plain.logprobs is None and greedy.token_ids == plain.token_ids
    assert [t.token_id for t in greedy.logprobs] == list(greedy.token_ids)
    z = scored.astype(np.float64)
    z -= z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    for k, t in enumerate(greedy.logprobs):
        assert t.logprob == pytest.approx(logp[len(ids) - 1 + k, t.token_id], abs=2e-3)
        assert len(t.top) == 3 and t.top[0][0] == t.token_id and t.top[0][2] == pytest.approx(t.logprob)
        assert [lp for _, _, lp in t.top] == sorted((lp for _, _, lp in t.top), reverse=True)
    assert len(sampled.logprobs) == sampled.tokens_out and all(t.top == () for t in sampled.logprobs)
    assert all(t.logprob <= 0 for t in sampled.logprobs)
    assert greedy.to_dict()["logprobs"][0]["top"][0]["token_id"] == greedy.token_ids[0]


def test_stream_equals_whole_and_stop_strings(fp32_artifact):
    with edgekit.load(fp32_artifact, device="cpu") as engine:
        whole = engine.generate("Numbers: 1 2 3", max_tokens=24, temperature=0).text
        streamed = "".join(engine.generate("Numbers: 1 2 3", max_tokens=24, temperature=0, stream=True))
        assert streamed == whole
        stop = whole[5:8]
        cut = engine.generate("Numbers: 1 2 3", max_tokens=24, temperature=0, stop=[stop])
        assert cut.text == whole[: whole.find(stop)] and cut.finish_reason == "stop"


def test_context_overflow_names_both_numbers(fp32_artifact):
    with edgekit.load(fp32_artifact, device="cpu", n_ctx=256) as engine:
        limit = engine.backend.context_length
        with pytest.raises(ContextOverflowError, match=r"prompt is \d+ tokens and max_tokens is 8, "
                                                       rf"but the context window is {limit}"):
            engine.generate("word " * (limit + 10), max_tokens=8)


def test_absent_gpu_is_an_error_not_a_fallback(fp32_artifact, monkeypatch):
    from edgekit.runtimes import llamacpp, onnxrt

    monkeypatch.setattr(llamacpp, "gpu_offload_supported", lambda: False)
    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DeviceUnavailableError, match="no GPU offload|no CUDAExecutionProvider"):
        edgekit.load(fp32_artifact, device="cuda")


@pytest.mark.parametrize("plat,machine,expected", [("linux", "x86_64", "cuda"), ("darwin", "arm64", "apple")])
def test_auto_picks_the_gpu_llama_cpp_can_offload_to(plat, machine, expected, tiny_artifact,
                                                     monkeypatch):
    """Faked detection: CI has no GPU, the branch still runs (llama.cpp ignores offload on a CPU build)."""
    import platform
    import sys

    from edgekit.runtimes import llamacpp

    artifact = tiny_artifact("qwen2", "gguf", "fp32")
    monkeypatch.setattr(llamacpp, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(sys, "platform", plat)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    with edgekit.load(artifact, device="auto") as engine:
        assert engine.device == expected
    monkeypatch.setattr(llamacpp, "gpu_offload_supported", lambda: False)
    with edgekit.load(artifact, device="auto") as engine:
        assert engine.device == "cpu"


def test_onnx_auto_prefers_cuda_when_onnxruntime_has_it(tiny_artifact, monkeypatch):
    """Faked detection picks CUDA; the session creation then fails for real on this CPU-only build."""
    from edgekit.errors import BackendError
    from edgekit.runtimes import onnxrt

    artifact = tiny_artifact("qwen2", "onnx", "fp32")
    monkeypatch.setattr(onnxrt, "available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendError):  # chosen "cuda": onnxruntime (CPU build) cannot create it
        edgekit.load(artifact, device="auto")


def _slowed(engine, seconds: float):
    """Make every generated token take at least `seconds` (a backend slowed on purpose)."""
    import time

    real = engine.backend.generate

    def slow(ids, options):
        for event in real(ids, options):
            time.sleep(seconds)
            yield event

    engine.backend.generate = slow
    return engine


def test_metrics_on_every_result(fp32_artifact):
    with edgekit.load(fp32_artifact, device="cpu") as engine:
        r = engine.generate("Numbers: 1 2 3", max_tokens=12, temperature=0)
    m = r.metrics
    assert m.tokens_out == 12 and len(m.itl_s) == 11 and m.tokens_in > 0
    assert 0 < m.ttft_s <= m.total_s and m.prefill_tok_s > 0 and m.decode_tok_s > 0
    assert m.itl_percentile_ms(50) <= m.itl_percentile_ms(99)
    assert set(r.to_dict()) >= {"ttft_ms", "tpot_ms", "itl_p95_ms", "prefill_tok_s", "decode_tok_s", "budget"}


def test_budget_met_and_missed_with_a_slowed_backend(fp32_artifact):
    generous = edgekit.LatencyBudget(ttft_ms=60_000, tpot_ms=60_000, mode="record")
    with edgekit.load(fp32_artifact, device="cpu", budget=generous) as engine:
        r = engine.generate("Hello", max_tokens=4)
        assert r.budget.met and r.budget.ttft_margin_ms > 0 and r.budget.tpot_margin_ms > 0
    tight = edgekit.LatencyBudget(tpot_ms=20, mode="record")
    with _slowed(edgekit.load(fp32_artifact, device="cpu", budget=tight), 0.05) as engine:
        r = engine.generate("Hello", max_tokens=4)
        assert not r.budget.met and r.budget.tpot_margin_ms <= -25  # ~50 ms a token against 20
        assert r.budget.ttft_margin_ms is None


def test_budget_warn_and_raise_modes(fp32_artifact):
    from edgekit.errors import LatencyBudgetWarning

    with _slowed(edgekit.load(fp32_artifact, device="cpu", budget=edgekit.LatencyBudget(tpot_ms=10)),
                 0.03) as engine:
        with pytest.warns(LatencyBudgetWarning, match="latency budget missed"):
            engine.generate("Hello", max_tokens=3)
    strict = edgekit.LatencyBudget(tpot_ms=10, mode="raise")
    with _slowed(edgekit.load(fp32_artifact, device="cpu", budget=strict), 0.03) as engine:
        with pytest.raises(edgekit.LatencyBudgetExceeded) as info:
            engine.generate("Hello", max_tokens=3)
    assert info.value.metrics.tpot_s >= 0.03 and info.value.budget.tpot_ms == 10
    assert info.value.result.tokens_out == 3  # TPOT is only known at the end: the text comes whole


def test_raise_mode_stops_as_soon_as_the_miss_is_certain_and_keeps_the_text(fp32_artifact):
    """total= runs out after a few slowed tokens: the call ends there, and the exception (and the
    stream) carry what was generated so far."""
    strict = edgekit.LatencyBudget(total_ms=150, mode="raise")
    with _slowed(edgekit.load(fp32_artifact, device="cpu", budget=strict), 0.05) as engine:
        with pytest.raises(edgekit.LatencyBudgetExceeded, match="total") as info:
            engine.generate("Numbers: 1 2 3", max_tokens=40, ignore_eos=True, temperature=0)
        cut = info.value.result
        assert cut.finish_reason == "budget" and 1 <= cut.tokens_out < 20  # of 40: cut short
        assert cut.budget is not None and cut.budget.missed == ["total"]
        stream = engine.generate("Numbers: 1 2 3", max_tokens=40, ignore_eos=True, temperature=0, stream=True)
        pieces = []
        with pytest.raises(edgekit.LatencyBudgetExceeded):
            for piece in stream:
                pieces.append(piece)
        assert stream.result is not None and stream.result.finish_reason == "budget"
        assert "".join(pieces) == stream.result.text and stream.result.tokens_out < 20
    late = edgekit.LatencyBudget(ttft_ms=0.001, mode="raise")  # no first token is that fast
    with edgekit.load(fp32_artifact, device="cpu", budget=late) as engine:
        with pytest.raises(edgekit.LatencyBudgetExceeded, match="TTFT") as info:
            engine.generate("Numbers: 1 2 3", max_tokens=40, ignore_eos=True, temperature=0)
        assert info.value.result.tokens_out == 1
        assert engine._lock.acquire(timeout=5)  # the engine is free for the next call
        engine._lock.release()


def test_threads_take_turns(fp32_artifact):
    import threading

    with edgekit.load(fp32_artifact, device="cpu") as engine:
        expected = engine.generate("Once upon", max_tokens=16, temperature=0).text
        results, errors = [], []

        def worker():
            try:
                results.append(engine.generate("Once upon", max_tokens=16, temperature=0).text)
            except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors and results == [expected] * 4


def test_cancel_a_running_generation(fp32_artifact):
    import threading

    with _slowed(edgekit.load(fp32_artifact, device="cpu"), 0.02) as engine:
        stream = engine.generate("Once upon", max_tokens=200, temperature=0, stream=True)
        timer = threading.Timer(0.2, engine.cancel)
        timer.start()
        "".join(stream)
        timer.join()
    assert stream.result.finish_reason == "cancelled" and stream.result.tokens_out < 200
    stream2 = None
    with edgekit.load(fp32_artifact, device="cpu") as engine:
        stream2 = engine.generate("Once upon", max_tokens=50, temperature=0, stream=True)
        for i, _ in enumerate(stream2):
            if i == 2:
                stream2.cancel()
    assert stream2.result.finish_reason == "cancelled"


def test_bad_options_are_typed_errors(fp32_artifact):
    with edgekit.load(fp32_artifact, device="cpu") as engine:
        with pytest.raises(edgekit.InvalidOptionError, match="top_p"):
            engine.generate("hi", top_p=0)
        with pytest.raises(edgekit.InvalidOptionError, match="unknown sampling option"):
            engine.generate("hi", nucleus=0.9)
        with pytest.raises(edgekit.InvalidOptionError, match="temperature"):
            engine.generate("hi", temperature=-1)


def test_ignore_eos_runs_to_max_tokens(fp32_artifact, monkeypatch):
    with edgekit.load(fp32_artifact, device="cpu") as engine:
        monkeypatch.setattr(engine.backend, "is_end", lambda token_id: True)  # every token ends generation
        ended = engine.generate("Hello", max_tokens=6, temperature=0)
        assert ended.tokens_out == 0 and ended.finish_reason == "stop"
        forced = engine.generate("Hello", max_tokens=6, temperature=0, ignore_eos=True)
        assert forced.tokens_out == 6 and forced.finish_reason == "length"


# ---- user errors, chat templates, cancel and close ---------------------------------------------
HANGING_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture(scope="module", params=["gguf", "onnx"])
def embedding_artifact(request, tiny_artifact):
    return tiny_artifact("bert", request.param, "fp32")


def test_chat_renders_the_artifacts_template(fp32_artifact):
    with edgekit.load(fp32_artifact, device="cpu") as engine:
        prompt = engine.render_chat([{"role": "user", "content": "Hello"}])
        assert prompt == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
        chat = engine.chat([{"role": "user", "content": "Hello"}], max_tokens=6)
        assert chat.text == engine.generate(prompt, max_tokens=6, add_special=False).text
        assert chat.finish_reason in ("stop", "length") and chat.tokens_in > 0


def test_empty_prompt_is_an_invalid_option(fp32_artifact):
    with edgekit.load(fp32_artifact, device="cpu") as engine:  # qwen2 has no BOS: "" is no tokens at all
        with pytest.raises(edgekit.InvalidOptionError, match="the prompt is empty"):
            engine.generate("", max_tokens=4)
        with pytest.raises(edgekit.InvalidOptionError, match="the prompt is empty"):
            engine.generate("", max_tokens=4, add_special=False, stream=True)  # refused before streaming
        engine.manifest["chat_template"] = "{% if false %}{{ messages }}{% endif %}"
        with pytest.raises(edgekit.InvalidOptionError, match="chat template rendered these messages to an"):
            engine.chat([{"role": "user", "content": "hi"}], max_tokens=4)
        assert engine.generate("Hi", max_tokens=2).tokens_out == 2  # the engine still works


def test_lone_surrogates_are_invalid_options(fp32_artifact):
    with edgekit.load(fp32_artifact, device="cpu") as engine:
        with pytest.raises(edgekit.InvalidOptionError,
                           match=r"the prompt contains a lone surrogate \(U\+D800 at index 2"):
            engine.generate("ab\ud800c", max_tokens=4)
        with pytest.raises(edgekit.InvalidOptionError,
                           match=r"messages\[1\]\['content'\] contains a lone surrogate"):
            engine.chat([{"role": "user", "content": "ok"}, {"role": "user", "content": "\udfff"}],
                        max_tokens=4)
        with pytest.raises(edgekit.InvalidOptionError, match=r"texts\[0\] contains a lone surrogate"):
            engine.embed(["\ud83d"])


def test_messages_of_the_wrong_type(fp32_artifact):
    with edgekit.load(fp32_artifact, device="cpu") as engine:
        # one str is one user message, as the conversation a list would spell out
        whole = engine.chat([{"role": "user", "content": "Hello there"}], max_tokens=4)
        assert engine.chat("Hello there", max_tokens=4).text == whole.text
        with pytest.raises(edgekit.InvalidOptionError, match=r"not a single dict; wrap it in a list"):
            engine.chat({"role": "user", "content": "Hello"}, max_tokens=4)
        with pytest.raises(edgekit.InvalidOptionError, match=r"messages\[0\]\['role'\] is missing"):
            engine.chat([{"content": "Hello"}], max_tokens=4)
        with pytest.raises(edgekit.InvalidOptionError, match=r"prompts\[0\] is dict.*use chat\(\)"):
            engine.generate([{"role": "user", "content": "Hello"}], max_tokens=4)
        with pytest.raises(edgekit.InvalidOptionError, match="a str or a list of str, not dict"):
            engine.generate({"role": "user", "content": "Hello"}, max_tokens=4)


def test_embed_refuses_empty_and_non_text_input(embedding_artifact):
    with edgekit.load(embedding_artifact, device="cpu") as engine:
        with pytest.raises(edgekit.InvalidOptionError, match="empty list"):
            engine.embed([])
        with pytest.raises(edgekit.InvalidOptionError, match=r"texts\[1\] is int, not a str"):
            engine.embed(["a", 3])
        one = engine.embed("a single text")  # one vector, not one per character
        assert one.shape == (64,)
        np.testing.assert_allclose(one, engine.embed(["a single text"])[0], rtol=1e-6)
        assert engine.embed(["a", "b"]).shape == (2, 64)


def test_every_call_after_close_says_the_engine_is_closed(fp32_artifact, embedding_artifact):
    psutil = pytest.importorskip("psutil")
    engine = edgekit.load(fp32_artifact, device="cpu")
    engine.chat([{"role": "user", "content": "Hello"}], max_tokens=2)
    pid = engine._template.pid
    assert pid is not None and psutil.pid_exists(pid)
    stream = engine.generate("Hello", max_tokens=4, stream=True)  # made before close, read after
    engine.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    calls = [lambda: engine.generate("Hello"), lambda: engine.chat([{"role": "user", "content": "Hi"}]),
             lambda: engine.render_chat([{"role": "user", "content": "Hi"}]), lambda: engine.embed(["Hi"]),
             lambda: list(stream)]
    for call in calls:
        with pytest.raises(edgekit.BackendError, match="this engine is closed; open the artifact again"):
            call()
    engine.close()  # closing twice is harmless
    embedder = edgekit.load(embedding_artifact, device="cpu")
    embedder.close()
    with pytest.raises(edgekit.BackendError, match="closed"):
        embedder.embed(["Hi"])


def test_a_closed_stream_frees_the_engine_at_once(fp32_artifact):
    """close() (or a with block) mid-stream ends it and lets the next call run; Ctrl-C in `edgekit chat`
    relies on this."""
    import threading

    with edgekit.load(fp32_artifact, device="cpu") as engine:
        with engine.generate("Hello", max_tokens=50, ignore_eos=True, stream=True) as stream:
            first = next(iter(stream))
        # what it had made stays readable: the text so far, its numbers, finish_reason "cancelled"
        assert first and stream.result is not None and stream.result.finish_reason == "cancelled"
        assert stream.result.text.startswith(first) and 1 <= stream.result.tokens_out < 50
        done = []
        worker = threading.Thread(target=lambda: done.append(engine.generate("Hi", max_tokens=3).tokens_out))
        worker.start()
        worker.join(timeout=60)
        assert done == [3]


@pytest.mark.parametrize("how", ["break", "unread", "cancel", "cancel-unread", "exception"])
def test_an_abandoned_stream_never_blocks_another_thread(fp32_artifact, how):
    """A stream left behind (loop broken, never read, cancelled, or an error in the loop body) while
    still referenced must not keep the engine: a generate() from another thread finishes."""
    import threading

    with edgekit.load(fp32_artifact, device="cpu") as engine:
        stream = engine.generate("Hello", max_tokens=50, stream=True)
        if how == "break":
            for _ in stream:
                break
        elif how == "cancel":
            pieces = iter(stream)
            next(pieces)
            stream.cancel()
            list(pieces)
            assert stream.result is not None and stream.result.finish_reason == "cancelled"
        elif how == "cancel-unread":  # cancelled mid-way and never read again
            pieces = iter(stream)
            next(pieces)
            stream.cancel()
        elif how == "exception":
            with pytest.raises(RuntimeError):
                for _ in stream:
                    raise RuntimeError("the caller's own bug")
        done = []
        worker = threading.Thread(target=lambda: done.append(engine.generate("Hi", max_tokens=3).tokens_out))
        worker.start()
        worker.join(timeout=60)
        freed = done == [3]
        stream.close()  # were the engine still held, this frees it, so a failure cannot hang the suite
        worker.join(timeout=60)
        assert freed, f"another thread's generate() still waited after '{how}'"


def test_chat_template_that_raises(fp32_artifact):
    from edgekit.errors import ChatTemplateError

    with edgekit.load(fp32_artifact, device="cpu") as engine:
        engine.manifest["chat_template"] = (
            "{% for m in messages %}{% if m['role'] == 'system' %}"
            "{{ raise_exception('System messages are not supported by this model') }}"
            "{% endif %}{{ m['content'] }}{% endfor %}")
        with pytest.raises(ChatTemplateError,
                           match="refused these messages: System messages are not supported"):
            engine.chat([{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}])
        assert engine.chat([{"role": "user", "content": "Hi"}], max_tokens=3).tokens_out > 0


def test_cancel_stops_a_hanging_chat_template(fp32_artifact):
    import threading
    import time

    with edgekit.load(fp32_artifact, device="cpu") as engine:
        original = engine.manifest["chat_template"]
        engine.manifest["chat_template"] = HANGING_TEMPLATE
        for stream in (False, True):
            timer = threading.Timer(0.5, engine.cancel)
            timer.start()
            start = time.monotonic()
            out = engine.chat([{"role": "user", "content": "Hi"}], max_tokens=8, stream=stream)
            elapsed = time.monotonic() - start
            timer.join()
            assert elapsed < 4  # cancelled: the template's own time limit is 5 s
            if stream:
                assert list(out) == []
                out = out.result
            assert out.finish_reason == "cancelled" and out.text == "" and out.tokens_out == 0
        engine.manifest["chat_template"] = original
        again = engine.chat([{"role": "user", "content": "Hi"}], max_tokens=3)
        assert again.finish_reason in ("stop", "length") and again.tokens_out > 0


def test_a_hanging_chat_template_times_out(fp32_artifact, monkeypatch):
    import time

    from edgekit.errors import ChatTemplateError
    from edgekit.runtimes import chat_template

    monkeypatch.setattr(chat_template, "DEFAULT_TIMEOUT_S", 1.0)  # 5 s in use: the same path, sooner
    with edgekit.load(fp32_artifact, device="cpu") as engine:
        engine.manifest["chat_template"] = HANGING_TEMPLATE
        start = time.monotonic()
        with pytest.raises(ChatTemplateError, match="took longer than 1 s to render"):
            engine.chat([{"role": "user", "content": "Hi"}])
        assert time.monotonic() - start < 20


def test_a_conversation_longer_than_the_context_drops_its_oldest_turns(fp32_artifact):
    """truncate="oldest" keeps the system prompt and the latest turn, drops whole turns from the
    start, and says how many messages went; without it the overflow is an error naming the numbers."""
    with edgekit.load(fp32_artifact, device="cpu", n_ctx=256) as engine:
        system = {"role": "system", "content": "Be brief."}
        turns = []
        for i in range(12):
            turns += [{"role": "user", "content": f"Question {i}: " + "tell me more " * 4},
                      {"role": "assistant", "content": f"Answer {i}: " + "here is more " * 4}]
        history = [system, *turns, {"role": "user", "content": "The last question?"}]
        with pytest.raises(edgekit.ContextOverflowError, match="context window is 256"):
            engine.chat(history, max_tokens=16)
        reply = engine.chat(history, max_tokens=16, truncate="oldest")
        dropped = reply.dropped_messages
        assert dropped > 0 and dropped % 2 == 0  # whole turns: a question and its answer
        kept = [system, *history[1 + dropped:]]
        prompt = engine.render_chat(kept)
        assert reply.tokens_in == engine.count_tokens(prompt) and reply.tokens_in + 16 <= 256
        # one turn fewer dropped would not have fitted
        assert engine.count_tokens(engine.render_chat([system, *history[1 + dropped - 2:]])) + 16 > 256
        streamed = engine.chat(history, max_tokens=16, truncate="oldest", stream=True)
        "".join(streamed)
        assert streamed.result.dropped_messages == dropped
        with pytest.raises(edgekit.ContextOverflowError):  # the last message alone is too long
            engine.chat([system, {"role": "user", "content": "word " * 400}], max_tokens=16,
                        truncate="oldest")
        with pytest.raises(edgekit.InvalidOptionError, match="truncate"):
            engine.chat(history, truncate="newest")


@pytest.mark.parametrize("penalties", [{"frequency_penalty": 2.0}, {"presence_penalty": 1.0},
                                       {"repeat_penalty": 1.3},
                                       {"frequency_penalty": 0.7, "presence_penalty": 0.4}])
def test_the_penalties_sample_alike_on_both_backends(tiny_artifact, penalties):
    """llama.cpp's sampler (GGUF) and edgekit's (ONNX) apply the repetition, frequency and presence
    penalties to the same tokens (the last 64 generated): one artifact family, one answer. Greedy on a
    tiny random model repeats a token within 40; each penalty changes where it would."""
    plain, penalized = {}, {}
    for fmt in ("gguf", "onnx"):
        with edgekit.load(tiny_artifact("qwen2", fmt, "fp32"), device="cpu") as engine:
            plain[fmt] = engine.generate("Once upon a time", max_tokens=40, ignore_eos=True).token_ids
            penalized[fmt] = engine.generate("Once upon a time", max_tokens=40, ignore_eos=True,
                                             **penalties).token_ids
    assert plain["gguf"] == plain["onnx"] and len(set(plain["gguf"])) < 40  # something repeats
    assert penalized["gguf"] == penalized["onnx"] != plain["gguf"]


def test_a_prompt_resumed_from_the_cache_answers_as_a_fresh_one(fp32_artifact, monkeypatch):
    """The next prompt sharing a prefix with the last generation (a second question on a document)
    prefills only what follows the shared chunks, and answers exactly as on a fresh engine; the same
    request twice answers the same."""
    from edgekit.runtimes import onnxrt

    monkeypatch.setattr(onnxrt, "PREFILL_CHUNK", 8)
    doc = "The lighthouse keeper climbed the stairs every evening to light the lamp. " * 3
    questions = [doc + "Who climbed the stairs?", doc + "What was lit?"]
    fed: list[int] = []
    with edgekit.load(fp32_artifact, device="cpu") as engine:
        backend = engine.backend
        if backend.name == "llama.cpp":
            backend._llm.n_batch = 8
            real_eval = backend._llm.eval
            monkeypatch.setattr(backend._llm, "eval", lambda ids: (fed.append(len(ids)), real_eval(ids))[1])
        else:
            real_step = backend._step
            monkeypatch.setattr(backend, "_step", lambda b, ids, n, lg: (fed.append(len(ids)),
                                                                          real_step(b, ids, n, lg))[1])
        answers, prefilled = [], []
        for q in (*questions, questions[1]):
            fed.clear()
            answers.append(engine.generate(q, max_tokens=8, temperature=0, ignore_eos=True).token_ids)
            prefilled.append(sum(fed) - 7)  # less the 7 decode steps of one token each
        first = len(backend.tokenize(questions[0], True))
    with edgekit.load(fp32_artifact, device="cpu") as engine:
        fresh = engine.generate(questions[1], max_tokens=8, temperature=0, ignore_eos=True).token_ids
    assert answers[1] == fresh and answers[2] == fresh
    # the first prompt whole; the second from the document's last whole chunk; the third from its own
    assert prefilled[0] == first and 0 < prefilled[1] < 30 and 0 < prefilled[2] <= 8, prefilled
