"""Our GGUFs equal what llama.cpp's own convert_hf_to_gguf.py writes for the same checkpoint:
the same tensors (names, types, shapes, bytes) and the same architecture and tokenizer keys.

Tiny Qwen2/Qwen3/Llama-3 models are not here: their tokenizers are trained in the fixtures, so
llama.cpp's converter (which identifies a pre-tokenizer by hashing known repos' output) refuses
them; their tokenization is checked against transformers through llama.cpp instead.
"""

from __future__ import annotations

import pytest

from edgekit.artifact import read_manifest

from helpers import gguf_differences, reference_convert

OUTTYPES = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "q8_0"}
ARCHS = ["llama-smollm2", "llama-spm", "mistral", "phi3", "gemma2", "gemma3", "bert"]


REAL = ["smollm2-135m-instruct", "all-minilm-l6-v2"]


@pytest.fixture(scope="module")
def references(request, tiny_checkpoint):
    """llama.cpp's GGUF of every tiny checkpoint at every outtype, and of the real models at f16 when
    their tests are selected: made in one process (one torch import for all)."""
    from edgekit import bundled

    jobs = [(tiny_checkpoint(arch), outtype) for arch in ARCHS for outtype in OUTTYPES.values()]
    selected = request.session.items
    if any(item.module is request.module and item.get_closest_marker("real") for item in selected):
        jobs += [(bundled.path(model), "f16") for model in REAL]
    return reference_convert(jobs)


@pytest.mark.parametrize("quant", list(OUTTYPES))
@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_matches_llama_cpp_converter(arch, quant, tiny_checkpoint, converted, references):
    ref = references[(tiny_checkpoint(arch), OUTTYPES[quant])]
    assert gguf_differences(converted(arch, quant), ref) == []


@pytest.mark.real
@pytest.mark.parametrize("model", REAL)
def test_real_model_f16_matches_llama_cpp_converter(model, real_artifact, references):
    from edgekit import bundled

    ours = real_artifact(model, "gguf", "fp16")
    ref = references[(bundled.path(model), "f16")]
    assert gguf_differences(ours / read_manifest(ours)["model_file"], ref) == []
