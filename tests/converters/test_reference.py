"""Our GGUFs equal what llama.cpp's own convert_hf_to_gguf.py writes for the same checkpoint:
the same tensors (names, types, shapes, bytes) and the same architecture and tokenizer keys.

Tiny Qwen2/Qwen3/Llama-3 models are not here: their tokenizers are trained in the fixtures, so
llama.cpp's converter (which identifies a pre-tokenizer by hashing known repos' output) refuses
them; their tokenization is checked against transformers through llama.cpp instead.
"""

from __future__ import annotations

import pytest

import edgekit

from helpers import gguf_differences, reference_convert

OUTTYPES = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "q8_0"}


@pytest.mark.parametrize("quant", list(OUTTYPES))
@pytest.mark.parametrize("arch", ["llama-smollm2", "llama-spm", "mistral", "phi3", "gemma2", "gemma3",
                                  "bert"])
def test_tiny_matches_llama_cpp_converter(arch, quant, tiny_checkpoint, converted, tmp_path):
    ref = reference_convert(tiny_checkpoint(arch), OUTTYPES[quant], tmp_path / "ref.gguf")
    assert gguf_differences(converted(arch, quant), ref) == []


@pytest.mark.real
@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "all-minilm-l6-v2"])
def test_real_model_f16_matches_llama_cpp_converter(model, tmp_path):
    from edgekit import bundled

    result = edgekit.convert(f"bundled:{model}", to="gguf", quant="fp16", output=tmp_path / "ours")
    ref = reference_convert(bundled.path(model), "f16", tmp_path / "ref.gguf")
    assert gguf_differences(result.path / result.manifest["model_file"], ref) == []
