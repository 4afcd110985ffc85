"""The bundled real models are faithful HF checkpoints (SmolLM2's real tokenizer facts)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.real


def test_smollm2_tokenizer_facts(smollm2_dir):
    tj = json.loads((smollm2_dir / "tokenizer.json").read_text())
    assert tj["normalizer"] is None
    assert tj["decoder"]["type"] == "ByteLevel"
    assert [p["type"] for p in tj["pre_tokenizer"]["pretokenizers"]] == ["Digits", "ByteLevel"]
    assert not tj["model"]["byte_fallback"]
    cfg = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert (cfg["bos_token"], cfg["eos_token"], cfg["pad_token"], cfg["unk_token"]) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert not (smollm2_dir / "tokenizer.model").exists()


def test_smollm2_transformers_answers(smollm2_dir):
    import torch

    from helpers import hf_model

    tok, model = hf_model(smollm2_dir)
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_minilm_has_pooling_config(minilm_dir):
    pooling = json.loads((minilm_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True
    assert (minilm_dir / "model.safetensors").stat().st_size > 80_000_000


def test_unknown_bundled_name_is_clear():
    from edgekit import bundled
    from edgekit.errors import SourceNotFoundError

    with pytest.raises(SourceNotFoundError, match="bundled models: smollm2-135m-instruct, all-minilm-l6-v2"):
        bundled.path("gpt-5")
