"""Every registered architecture, on a tiny random model, through llama.cpp against transformers.

Bounds. fp32 and fp16 follow the issue (1e-3 and 1e-2 relative; measured 2e-6 and 2-6e-3, with
an f32 KV cache so only the conversion is measured). For the quantized types the bound is a mean
KL(transformers || llama.cpp) over the probe text. Tiny random models are a harsh case: rows of
64-128 values make llama.cpp fall back from 256-wide k-quants to 32-wide Q4_0/Q5_0, the weights are
wide uniform noise (initializer_range 0.2, so logits are sharp and every error shows), and Q8_0
also quantizes activations in its dot products. Measured: Q8_0 1-3e-3, Q4_K_M 0.04-0.15 (top-1
56-71%). Bounds 0.01 and 0.3 leave ~3x headroom and still fail on any conversion defect: a wrong
q/k permutation or a misplaced tensor gives KL above 1.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.converters.gguf_arch import ARCHITECTURES

import tiny
from helpers import hf_logits, hf_tokenizer, llama_logits, mean_kl, rel_error

DECODERS = [a for a in tiny.ARCHS if a != "bert"]
TOLERANCES = {"fp32": ("rel", 1e-3), "fp16": ("rel", 1e-2), "int8": ("kl", 0.01), "int4": ("kl", 0.3)}
# HF architecture each tiny model exercises
COVERS = {"llama-smollm2": "LlamaForCausalLM", "llama-spm": "LlamaForCausalLM", "llama3": "LlamaForCausalLM",
          "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
          "phi3": "Phi3ForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
          "bert": "BertModel"}


def test_every_registered_architecture_has_a_tiny_model():
    aliases = {"BertForMaskedLM": "BertModel"}
    missing = {aliases.get(a, a) for a in ARCHITECTURES} - set(COVERS.values())
    assert not missing, f"architectures without a tiny model in tests/tiny.py: {missing}"


def _probe_ids(checkpoint) -> list[int]:
    return hf_tokenizer(checkpoint)(tiny.PROBE_TEXT, add_special_tokens=False)["input_ids"][:96]


@pytest.mark.parametrize("quant", list(TOLERANCES))
@pytest.mark.parametrize("arch", DECODERS)
def test_decoder_logits_match_transformers(arch, quant, tiny_checkpoint, converted):
    ckpt = tiny_checkpoint(arch)
    ids = _probe_ids(ckpt)
    ref = hf_logits(ckpt, ids)
    ours = llama_logits(converted(arch, quant), ids)
    assert ours.shape == ref.shape
    kind, bound = TOLERANCES[quant]
    value = rel_error(ours, ref) if kind == "rel" else mean_kl(ours, ref)
    assert value <= bound, f"{arch} {quant}: {kind} {value:.3g} > {bound}"
    # top-1 agreement is reported alongside; at fp32/fp16 it must be essentially total
    top1 = float(np.mean(ours.argmax(-1) == ref.argmax(-1)))
    if quant in ("fp32", "fp16"):
        assert top1 >= 0.97, f"{arch} {quant}: top-1 agreement {top1:.2f}"


@pytest.mark.parametrize("arch", [*DECODERS, "bert"])
def test_gguf_tokenizer_ids_equal_hf(arch, tiny_checkpoint, converted):
    """llama.cpp, reading our GGUF, tokenizes like the checkpoint's own HF tokenizer.

    For WordPiece the Korean words are left out: HF's BertNormalizer decomposes Hangul syllables
    into jamo (NFD) when stripping accents and llama.cpp's WPM does not. That is a difference of
    the two tokenizer implementations, not of the file (ours equals llama.cpp's converter's).
    """
    from llama_cpp import Llama

    ckpt = tiny_checkpoint(arch)
    text = tiny.PROBE_TEXT.replace(", 한국어", "") if arch == "bert" else tiny.PROBE_TEXT
    expected = hf_tokenizer(ckpt)(text, add_special_tokens=False)["input_ids"]
    llm = Llama(model_path=str(converted(arch, "fp32")), vocab_only=True, verbose=False)
    try:
        got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    finally:
        llm.close()
    assert got == expected


@pytest.mark.parametrize("quant,min_cos", [("fp32", 0.9999), ("fp16", 0.999), ("int8", 0.995)])
def test_bert_embeddings_match_transformers(quant, min_cos, tiny_checkpoint, converted):
    import torch
    import transformers
    from llama_cpp import Llama

    ckpt = tiny_checkpoint("bert")
    sentences = ["A cat sat on the mat.", "Quantum tunnelling in semiconductors", tiny.PROBE_TEXT[:120]]
    tok = hf_tokenizer(ckpt)
    model = transformers.AutoModel.from_pretrained(ckpt).eval()
    llm = Llama(model_path=str(converted("bert", quant)), embedding=True, verbose=False, n_ctx=128)
    try:
        for s in sentences:
            batch = tok(s, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**batch).last_hidden_state[0]
            ref = hidden.mean(0).numpy()
            ours = np.asarray(llm.embed(s), dtype=np.float32)
            cos = float(ours @ ref / np.linalg.norm(ours) / np.linalg.norm(ref))
            assert cos >= min_cos, f"{quant} {s!r}: cosine {cos:.5f}"
    finally:
        llm.close()
