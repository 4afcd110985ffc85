"""The runtimes: GGUF through llama.cpp and ONNX through ONNX Runtime, one Engine API.

Greedy tokens equal transformers' on tiny fp32 artifacts; streaming, stop strings, context
overflow and devices behave the same on both backends.
"""

from __future__ import annotations

import pytest

import edgekit
from edgekit.errors import ContextOverflowError, DeviceUnavailableError

from helpers import hf_tokenizer


@pytest.fixture(scope="module", params=["gguf", "onnx"])
def fp32_artifact(request, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("eng") / f"qwen2-{request.param}"
    return edgekit.convert(str(tiny_checkpoint("qwen2")), to=request.param, quant="fp32", output=out).path


def test_greedy_tokens_equal_transformers(fp32_artifact, tiny_checkpoint):
    import torch
    import transformers

    ckpt = tiny_checkpoint("qwen2")
    tok = hf_tokenizer(ckpt)
    prompt = "Hello world, this is"
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = tok.decode(ref[0, ids.shape[1]:])
    with edgekit.load(fp32_artifact, device="cpu") as engine:
        result = engine.generate(prompt, max_tokens=32, temperature=0)
    assert result.tokens_out == 32 and result.finish_reason == "length"
    assert result.text == expected


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
        with pytest.raises(ContextOverflowError, match=rf"prompt is \d+ tokens and max_tokens is 8, but the context window is {limit}"):
            engine.generate("word " * (limit + 10), max_tokens=8)


def test_absent_gpu_is_an_error_not_a_fallback(fp32_artifact, monkeypatch):
    from edgekit.runtimes import llamacpp, onnxrt

    monkeypatch.setattr(llamacpp, "gpu_offload_supported", lambda: False)
    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DeviceUnavailableError, match="no GPU offload|no CUDAExecutionProvider"):
        edgekit.load(fp32_artifact, device="cuda")


@pytest.mark.parametrize("plat,machine,expected", [("linux", "x86_64", "cuda"), ("darwin", "arm64", "apple")])
def test_auto_picks_the_gpu_llama_cpp_can_offload_to(plat, machine, expected, tiny_checkpoint, tmp_path, monkeypatch):
    """Faked detection: CI has no GPU, the branch still runs (llama.cpp ignores offload on a CPU build)."""
    import platform
    import sys

    from edgekit.runtimes import llamacpp

    artifact = edgekit.convert(str(tiny_checkpoint("qwen2")), to="gguf", quant="fp32", output=tmp_path / "a").path
    monkeypatch.setattr(llamacpp, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(sys, "platform", plat)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    with edgekit.load(artifact, device="auto") as engine:
        assert engine.device == expected
    monkeypatch.setattr(llamacpp, "gpu_offload_supported", lambda: False)
    with edgekit.load(artifact, device="auto") as engine:
        assert engine.device == "cpu"


def test_onnx_auto_prefers_cuda_when_onnxruntime_has_it(tiny_checkpoint, tmp_path, monkeypatch):
    """Faked detection picks CUDA; the session creation then fails for real on this CPU-only build."""
    from edgekit.errors import BackendError
    from edgekit.runtimes import onnxrt

    artifact = edgekit.convert(str(tiny_checkpoint("qwen2")), to="onnx", quant="fp32", output=tmp_path / "a").path
    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendError):  # chosen "cuda": onnxruntime (CPU build) cannot create it
        edgekit.load(artifact, device="auto")
