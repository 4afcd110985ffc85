"""The real models installed from PyPI (SmolLM2-135M-Instruct, all-MiniLM-L6-v2), offline."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import edgekit

pytestmark = pytest.mark.real
FIDELITY_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type with an oil-based ink. def fib(n):\n"
    "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
    "La biblioteca de la ciudad abre todos los días a las nueve de la mañana."
)


SMOLLM2, MINILM = "smollm2-135m-instruct", "all-minilm-l6-v2"
SEA = [{"role": "user", "content": "Write one sentence about the sea."}]


@pytest.fixture(scope="module")
def smollm2_artifacts(real_artifact):
    return {q: real_artifact(SMOLLM2, "gguf", q) for q in ("int8", "int4")}


@pytest.fixture(scope="module")
def smollm2_onnx(real_artifact):
    return {q: real_artifact(SMOLLM2, "onnx", q) for q in ("int8", "int4")}


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_smollm2_onnx_answers_sensibly(quant, smollm2_onnx):
    """Through onnxruntime: at least two of three simple questions answered right."""
    with edgekit.load(smollm2_onnx[quant], device="cpu") as engine:
        ask = _asker(engine)
        answers = [
            sum(c in ask("Name three colors.").lower() for c in ("red", "blue", "green", "yellow")) >= 2,
            "paris" in ask("What is the capital of France?").lower() or "4" in ask("What is 2 + 2?"),
            "blue" in ask("What color is the sky on a clear day?").lower(),
        ]
    assert sum(answers) >= 2, answers


# Grid-aligned bundled weights, 83 tokens. Measured: ONNX int8 0.006, int4 0.104. The off-grid
# comparison against llama.cpp and the targets lives in bench/fidelity.py.
@pytest.mark.parametrize("quant,bound", [("int8", 0.015), ("int4", 0.2)])
def test_smollm2_onnx_fidelity(quant, bound, smollm2_onnx):
    from edgekit import bundled

    from helpers import hf_logits, hf_tokenizer, mean_kl, onnx_logits

    ids = hf_tokenizer(bundled.path())(FIDELITY_TEXT, add_special_tokens=False)["input_ids"]
    ours = onnx_logits(smollm2_onnx[quant] / "model.onnx", ids)
    kl = mean_kl(ours, hf_logits(bundled.path(), ids))
    assert kl <= bound, f"ONNX {quant}: mean KL {kl:.4f}"


def test_smollm2_onnx_int4_size(smollm2_onnx):
    """The int4 storage choices hold SmolLM2 to 104.5 MB (llama.cpp's Q4_K_M: 105.5 MB): float16
    scales for the 4-bit tensors and the embedding, symmetric 8-bit blocks up to 128, down_proj 4-bit
    in the middle half of the layers, rotary tables computed in the graph."""
    manifest = edgekit.read_manifest(smollm2_onnx["int4"])
    size = (smollm2_onnx["int4"] / manifest["model_file"]).stat().st_size
    assert size <= 105e6, size
    assert manifest["quantization"]["bits_per_weight"] <= 6.22
    # 4-bit: q, gate, up and 16 middle down_proj; 8-bit: k, v, o, 14 end down_proj and the head
    assert manifest["quantization"]["tensor_types"] == {"int4": 106, "int8": 105}


def _asker(engine):
    """One question at a time, each a conversation of its own, greedy."""
    def ask(question: str) -> str:
        return engine.chat([{"role": "user", "content": question}], max_tokens=40, temperature=0).text

    return ask


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_smollm2_answers_sensibly(quant, smollm2_artifacts):
    with edgekit.load(smollm2_artifacts[quant], device="cpu") as engine:
        ask = _asker(engine)
        colors = ask("Name three colors.").lower()
        assert sum(c in colors
                   for c in ("red", "blue", "green", "yellow", "orange", "purple", "black", "white")) >= 2
        assert "4" in ask("What is 2 + 2?")
        sky = ask("What color is the sky on a clear day?").lower()
        assert "blue" in sky


# Mean KL against transformers fp32 on prose, code and Spanish (83 tokens). Measured: Q8_0 0.009,
# Q4_K_M 0.10, in line with llama.cpp's own pipeline (docs/measurements.md: 0.008 and 0.13 on
# off-grid weights). The bounds leave 2x headroom.
@pytest.mark.parametrize("quant,bound", [("int8", 0.02), ("int4", 0.2)])
def test_smollm2_fidelity_against_transformers(quant, bound, smollm2_artifacts):
    from edgekit import bundled

    from helpers import hf_logits, hf_tokenizer, llama_logits, mean_kl

    ids = hf_tokenizer(bundled.path())(FIDELITY_TEXT, add_special_tokens=False)["input_ids"]
    artifact = smollm2_artifacts[quant]
    manifest = edgekit.read_manifest(artifact)
    kl = mean_kl(llama_logits(artifact / manifest["model_file"], ids), hf_logits(bundled.path(), ids))
    assert kl <= bound, f"{quant}: mean KL {kl:.4f}"


def test_smollm2_manifest_reports_real_bits(smollm2_artifacts):
    manifest = edgekit.read_manifest(smollm2_artifacts["int4"])
    q = manifest["quantization"]
    assert q["scheme"] == "Q4_K_M" and q["label"] == "int4"
    # 576-wide rows cannot use 256-wide k-quants: llama.cpp mixes Q5_0/Q8_0/Q6_K/Q4_K, ~6 bits a weight
    assert 5.0 < q["bits_per_weight"] < 7.0
    assert {"Q5_0", "Q4_K", "Q6_K", "Q8_0"} <= set(q["tensor_types"])
    assert manifest["tokenizer"]["pre"] == "smollm"
    assert manifest["tokenizer"]["special_ids"]["eos"] == 2


# int8 must reach 0.99 (the issues' target); int4 measured 0.984-0.991, held to 0.98. The optimum
# row takes the fallback path on purpose (optimum-onnx's export + onnxruntime's quantizer).
SENTENCES = ["The cat sits outside.", "A man is playing guitar.", "I love pasta.",
             "Quantum computers use qubits.", "Der Hund schläft im Garten.", "Stocks fell sharply on Monday."]


@pytest.fixture(scope="module")
def sentence_transformers_vectors():
    from sentence_transformers import SentenceTransformer

    from edgekit import bundled

    return SentenceTransformer(str(bundled.path(MINILM)), device="cpu").encode(SENTENCES)


@pytest.mark.parametrize("fmt,quant,min_cos,exporter", [
    ("gguf", "fp16", 0.99, "auto"), ("gguf", "int8", 0.99, "auto"), ("onnx", "int8", 0.99, "auto"),
    ("onnx", "int4", 0.98, "auto"), ("onnx", "int8", 0.99, "optimum")])
def test_minilm_embeddings_match_sentence_transformers(fmt, quant, min_cos, exporter, real_artifact,
                                                       sentence_transformers_vectors):
    reference = sentence_transformers_vectors
    artifact = real_artifact(MINILM, fmt, quant, exporter)
    with edgekit.load(artifact, device="cpu") as engine:
        ours = engine.embed(SENTENCES)
    cos = np.sum(ours * reference, axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() >= min_cos, cos


def test_sigterm_midway_leaves_nothing(tmp_path):
    out = tmp_path / "smol"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "convert", "bundled:smollm2-135m-instruct",
                             "--quant", "fp32", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".smol.partial") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(1.0)  # well into writing tensors
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == [], err.decode()[-500:]


def _greedy_32(checkpoint, artifact, messages: list[dict[str, str]]) -> tuple[list[int], list[int], object]:
    """(ours, transformers', transformers' generate output): the first 32 greedy tokens of the
    artifact and of transformers fp32 on its checkpoint, for the same chat prompt."""
    import torch

    from helpers import checkpoint_key, hf_model, memo

    with edgekit.load(artifact, device="cpu") as engine:
        prompt = engine.render_chat(messages)
        ours = list(engine.chat(messages, max_tokens=32, temperature=0).token_ids)
    tok, model = hf_model(checkpoint)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # the same prompt for every format: generated once
        out = memo(("generate", checkpoint_key(checkpoint), prompt), lambda: model.generate(
            ids, max_new_tokens=32, do_sample=False, output_scores=True, return_dict_in_generate=True))
    ref = out.sequences[0, ids.shape[1]:].tolist()
    if ref and ref[-1] == tok.eos_token_id:  # transformers keeps the EOS it stopped at; the engine does not
        ref = ref[:-1]
    return ours, ref, out


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_smollm2_int8_greedy_tokens_follow_transformers(fmt, smollm2_artifacts, smollm2_onnx):
    """First 32 greedy tokens against transformers fp32. int8 is allowed a small divergence: the
    tokens must agree up to the first point where the reference's top-2 logits are close (a tie
    that any rounding can flip), and at least the first 8 must agree."""
    import torch

    from edgekit import bundled

    artifact = smollm2_artifacts["int8"] if fmt == "gguf" else smollm2_onnx["int8"]
    ours, ref, out = _greedy_32(bundled.path(), artifact, SEA)
    agree = next((i for i, (a, b) in enumerate(zip(ours, ref, strict=False)) if a != b),
                 min(len(ours), len(ref)))
    if agree < min(len(ours), len(ref)):
        top2 = torch.topk(out.scores[agree][0].float(), 2).values
        assert agree >= 8 and float(top2[0] - top2[1]) < 1.0, (
            f"diverged at token {agree}: {ours[:agree + 2]} vs {ref[:agree + 2]}"
        )


def test_the_optimum_fallback_graph_follows_transformers_exactly(tmp_path):
    """The fallback path's graph (optimum-onnx export, concat KV cache) on edgekit's runtime, at fp32:
    all 32 greedy tokens agree with transformers. On SmolLM2's first 4 layers (its real weights,
    vocabulary, tokenizer and chat template): the export is the same for 4 layers as for 30, at a
    seventh of torch.onnx's time."""
    from safetensors.numpy import load_file, save_file

    from edgekit import bundled

    source, sliced = bundled.path(), tmp_path / "smollm2-4-layers"
    sliced.mkdir()
    for f in source.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, sliced / f.name)
    config = json.loads((source / "config.json").read_text())
    (sliced / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4}))
    kept = {k: v for k, v in load_file(source / "model.safetensors").items()
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < 4}
    save_file(kept, sliced / "model.safetensors", metadata={"format": "pt"})
    artifact = edgekit.convert(str(sliced), to="onnx", quant="fp32", output=tmp_path / "o",
                               exporter="optimum", verify=False).path
    assert edgekit.read_manifest(artifact)["exporter"] == "optimum-onnx"
    ours, ref, _ = _greedy_32(sliced, artifact, SEA)
    assert ours == ref and len(ours) >= 8


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_smollm2_int4_reports_agree_across_references(fmt, smollm2_artifacts, smollm2_onnx):
    """convert graded the artifact against transformers; edgekit's own fp32 build (the reference
    without torch) measures the same loss, and both pass the int4 gate."""
    path = (smollm2_artifacts if fmt == "gguf" else smollm2_onnx)["int4"]
    recorded = edgekit.read_manifest(path)["fidelity"]
    assert recorded["reference"]["kind"] == "transformers" and recorded["passed"]
    ours = edgekit.verify(path, reference_kind="edgekit", save=False)
    assert ours.passed and ours.reference["kind"] == "edgekit-fp32"
    assert ours.metrics["kl_mean"] == pytest.approx(recorded["metrics"]["kl_mean"], rel=0.2)
    assert 0.02 < ours.metrics["kl_mean"] < 0.2 and ours.metrics["top1_confident"] > 0.9
