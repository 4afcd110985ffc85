"""The ONNX fallback path: architectures edgekit does not build natively go through optimum-onnx's
exporter and onnxruntime's quantizers, and run on the same runtime (KV layout "concat").

Tiny random Gemma-2 (a decoder outside onnx_decoder.DECODERS) and DistilBERT (an encoder outside
onnx_encoder.ENCODERS). Bounds as in test_onnx_matrix.py: fp32 1e-4 and fp16 1e-2 relative, int8
KL 0.01, int4 KL 0.5 (tiny uniform-noise models); embeddings by cosine against transformers.
"""

from __future__ import annotations

import numpy as np
import pytest

import edgekit
from edgekit.errors import MissingDependencyError

import tiny
from helpers import hf_logits, hf_tokenizer, mean_kl, onnx_logits, rel_error

BOUNDS = {"fp32": ("rel", 1e-4), "fp16": ("rel", 1e-2), "int8": ("kl", 0.01), "int4": ("kl", 0.5)}


@pytest.fixture(scope="module")
def gemma2_onnx(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("optimum")
    built = {}

    def make(quant: str):
        if quant not in built:
            # Gemma 2 has a native graph now; exporter="optimum" keeps this a test of the fallback
            built[quant] = edgekit.convert(str(tiny_checkpoint("gemma2")), to="onnx", quant=quant,
                                           output=root / quant, exporter="optimum")
        return built[quant]

    return make


@pytest.mark.parametrize("quant", list(BOUNDS))
def test_gemma2_through_optimum_matches_transformers(quant, tiny_checkpoint, gemma2_onnx):
    ckpt = tiny_checkpoint("gemma2")
    result = gemma2_onnx(quant)
    assert result.exporter == "optimum-onnx" and result.manifest["exporter"] == "optimum-onnx"
    assert result.manifest["onnx"]["kv_layout"] == "concat"
    ids = hf_tokenizer(ckpt)(tiny.PROBE_TEXT, add_special_tokens=False)["input_ids"][:64]
    ref = hf_logits(ckpt, ids)
    model = result.path / "model.onnx"
    kind, bound = BOUNDS[quant]
    for mode, ours in (("full", onnx_logits(model, ids)), ("decode", onnx_logits(model, ids, prompt=8))):
        value = rel_error(ours, ref) if kind == "rel" else mean_kl(ours, ref)
        assert value <= bound, f"gemma2 {quant} {mode}: {kind} {value:.3g} > {bound}"
    if quant.startswith("int"):  # every matrix quantized, the tied head included (its own transposed copy)
        kinds = set(result.tensor_types)
        assert kinds == ({"int8"} if quant == "int8" else {"int4", "int8"}), result.tensor_types


def test_optimum_decoder_greedy_tokens_equal_transformers(tiny_checkpoint, gemma2_onnx):
    import torch
    import transformers

    ckpt = tiny_checkpoint("gemma2")
    tok = hf_tokenizer(ckpt)
    prompt = "Der schnelle braune Fuchs"
    ids = tok(prompt, add_special_tokens=True, return_tensors="pt")["input_ids"]
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    with edgekit.load(gemma2_onnx("fp32").path, device="cpu") as engine:
        result = engine.generate(prompt, max_tokens=32, temperature=0)
    assert list(result.token_ids) == ref[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("quant,min_cos", [("fp32", 0.99999), ("int8", 0.995), ("int4", 0.95)])
def test_distilbert_embeddings_through_optimum(quant, min_cos, tiny_checkpoint, tmp_path):
    import torch
    import transformers

    ckpt = tiny_checkpoint("distilbert")
    result = edgekit.convert(str(ckpt), to="onnx", quant=quant, output=tmp_path / quant)
    assert result.exporter == "optimum-onnx" and result.manifest["task"] == "feature-extraction"
    sentences = ["A cat sat on the mat.", "Quantum tunnelling in semiconductors", "short",
                 tiny.PROBE_TEXT[:120]]
    tok = hf_tokenizer(ckpt)
    model = transformers.AutoModel.from_pretrained(ckpt).eval()
    batch = tok(sentences, return_tensors="pt", padding=True, return_token_type_ids=False)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    ref = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    with edgekit.load(result.path, device="cpu") as engine:
        ours = engine.embed(sentences)
    cos = np.sum(ours * ref, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= min_cos, cos


def test_cli_says_which_path_was_taken(tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli import app

    out = CliRunner().invoke(app, ["convert", str(tiny_checkpoint("distilbert")), "--to", "onnx",
                                   "--quant", "fp32", "-o", str(tmp_path / "o")])
    assert out.exit_code == 0, out.output
    assert "exported through optimum-onnx" in out.output and "DistilBertModel" in out.output


def test_without_the_optimum_extra_the_error_names_it(tiny_checkpoint, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "optimum.exporters.onnx", None)  # as if optimum-onnx were absent
    with pytest.raises(MissingDependencyError) as info:
        edgekit.convert(str(tiny_checkpoint("distilbert")), to="onnx", quant="int8", output=tmp_path / "o")
    assert 'pip install "edgekit[optimum]"' in str(info.value)
    assert not (tmp_path / "o").exists()


def test_exporter_choice(tiny_checkpoint, tmp_path):
    """exporter='optimum' takes the fallback for a native family too; 'edgekit' refuses what it lacks."""
    from edgekit.errors import UnsupportedArchitectureError

    forced = edgekit.convert(str(tiny_checkpoint("qwen2")), to="onnx", quant="fp32", output=tmp_path / "q",
                             exporter="optimum")
    assert forced.exporter == "optimum-onnx" and forced.manifest["onnx"]["kv_layout"] == "concat"
    with edgekit.load(forced.path) as engine:
        assert engine.generate("Hello", max_tokens=4, temperature=0).tokens_out == 4
    with pytest.raises(UnsupportedArchitectureError):
        edgekit.convert(str(tiny_checkpoint("distilbert")), to="onnx", quant="fp32", output=tmp_path / "g",
                        exporter="edgekit")
    assert not (tmp_path / "g").exists()
    with pytest.raises(edgekit.ConversionError, match="exporter"):
        edgekit.convert(str(tiny_checkpoint("qwen2")), to="gguf", output=tmp_path / "x", exporter="optimum")
    with pytest.raises(edgekit.ConversionError, match="unknown exporter"):
        edgekit.convert(str(tiny_checkpoint("qwen2")), to="onnx", output=tmp_path / "x", exporter="torch")
    assert not (tmp_path / "x").exists()


def test_fallback_keeps_the_native_int4_tensor_choices():
    """The fallback picks its 8-bit MatMuls on optimum's node names by the same rules as the native
    graphs: k/v/o and the lm_head always, down_proj only in the first and last quarter of the layers."""
    from edgekit.converters.onnx_optimum import _wide
    from edgekit.converters.onnx_recipe import onnx_precision

    int4 = onnx_precision("int4")
    assert _wide("/model/layers.15/self_attn/k_proj/MatMul", int4, 30)
    assert _wide("/lm_head/MatMul", int4, 30)
    assert _wide("/model/layers.0/mlp/down_proj/MatMul", int4, 30)
    assert _wide("/model/layers.29/mlp/down_proj/MatMul", int4, 30)
    assert not _wide("/model/layers.15/mlp/down_proj/MatMul", int4, 30)
    assert not _wide("/model/layers.0/self_attn/q_proj/MatMul", int4, 30)
    assert _wide("/model/mlp/down_proj/MatMul", int4, None)  # no layer number: kept at 8 bits
    assert not _wide("/model/layers.0/self_attn/k_proj/MatMul", onnx_precision("int8"), 30)
