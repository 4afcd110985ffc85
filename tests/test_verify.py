"""edgekit verify and convert's fidelity gate, on tiny random checkpoints: sound conversions pass,
deliberately damaged ones fail, a failed conversion leaves nothing unless kept, and a reference that
is not the source is an error."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.artifact import MANIFEST, sha256_file

from helpers import cli as _cli


def _rehash(artifact: Path) -> None:
    """Make edgekit.json agree with files changed on purpose: what a buggy converter would have written."""
    path = artifact / MANIFEST
    manifest = json.loads(path.read_text())
    for entry in manifest["files"]:
        member = artifact / entry["name"]
        entry["size"], entry["sha256"] = member.stat().st_size, sha256_file(member)
    manifest.pop("fidelity", None)
    path.write_text(json.dumps(manifest))


def _convert(ckpt: Path, out: Path, fmt: str, quant: str, **kw) -> Path:
    return edgekit.convert(str(ckpt), to=fmt, quant=quant, output=out, **kw).path


def test_convert_verifies_by_default_and_records_the_report(tiny_checkpoint, tmp_path):
    result = edgekit.convert(str(tiny_checkpoint("qwen2")), to="gguf", quant="int8", output=tmp_path / "a")
    report = result.fidelity
    assert report is not None and report.passed and report.reference["kind"] == "transformers"
    assert report.eval_text["name"] == "edgekit-eval-v1" and report.eval_text["calibrated_on"] is False
    assert 0 < report.metrics["kl_mean"] < report.thresholds["max_kl"]
    manifest = edgekit.read_manifest(result.path)  # the report added to edgekit.json; hashes still hold
    assert manifest["fidelity"]["passed"] is True and manifest["fidelity"]["metrics"] == report.metrics
    info = _cli("info", str(result.path))
    assert info.returncode == 0 and "fidelity against transformers" in info.stdout
    assert "KL mean" in info.stdout
    skipped = edgekit.convert(str(tiny_checkpoint("qwen2")), to="gguf", quant="int8", output=tmp_path / "b",
                              verify=False)
    assert skipped.fidelity is None and "fidelity" not in skipped.manifest
    assert "not verified" in _cli("info", str(skipped.path)).stdout


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_the_two_references_agree(tiny_checkpoint, tmp_path, fmt):
    """transformers and edgekit's own fp32 build measure the same loss (within 20%)."""
    ckpt = tiny_checkpoint("llama3")
    artifact = _convert(ckpt, tmp_path / "a", fmt, "int4", verify=False)
    by_torch = edgekit.verify(artifact, ckpt, reference_kind="transformers", save=False)
    by_ours = edgekit.verify(artifact, ckpt, reference_kind="edgekit")
    assert by_ours.reference["kind"] == "edgekit-fp32" and by_torch.reference["kind"] == "transformers"
    assert by_ours.metrics["kl_mean"] == pytest.approx(by_torch.metrics["kl_mean"], rel=0.2)
    assert by_ours.metrics["positions"] == by_torch.metrics["positions"] > 100
    assert edgekit.read_manifest(artifact)["fidelity"]["reference"]["kind"] == "edgekit-fp32"  # saved


def _damage(path: Path, change: dict) -> None:
    """Rewrite tensors of a GGUF file in place: name -> function of its data (same shape and type)."""
    from gguf import GGUFReader

    reader = GGUFReader(path, "r+")
    for tensor in reader.tensors:
        if tensor.name in change:
            tensor.data[...] = change[tensor.name](np.array(tensor.data))
    reader.data.flush()


def test_a_tensor_scaled_by_one_and_a_half_fails(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("qwen2")
    artifact = _convert(ckpt, tmp_path / "a", "gguf", "fp16")
    model = artifact / edgekit.read_manifest(artifact)["model_file"]
    _damage(model, {"blk.1.ffn_down.weight": lambda w: w * 1.5})
    _rehash(artifact)
    report = edgekit.verify(artifact, ckpt)
    assert not report.passed and "mean KL" in report.failures[0]
    cli = _cli("verify", str(artifact), "--reference", str(ckpt))
    assert cli.returncode == 1 and "FAIL" in cli.stdout


def test_q_and_k_rows_permuted_wrongly_fail(tiny_checkpoint, tmp_path):
    """The classic GGUF bug: the rotary permutation of q/k applied a second time (a Llama-3 layout:
    the same permutation as SmolLM2's, with a vocabulary small enough to rewrite in a moment)."""
    ckpt = tiny_checkpoint("llama3")
    artifact = _convert(ckpt, tmp_path / "a", "gguf", "fp32")
    model = artifact / edgekit.read_manifest(artifact)["model_file"]
    config = json.loads((ckpt / "config.json").read_text())
    def permute(n_head: int):
        def apply(w: np.ndarray) -> np.ndarray:
            rows, cols = w.shape
            return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)
        return apply

    heads = {"q": config["num_attention_heads"], "k": config["num_key_value_heads"]}
    _damage(model, {f"blk.{layer}.attn_{kind}.weight": permute(n_head) for kind, n_head in heads.items()
                    for layer in range(config["num_hidden_layers"])})
    _rehash(artifact)
    report = edgekit.verify(artifact, ckpt)
    assert not report.passed and report.metrics["kl_mean"] > report.thresholds["max_kl"]


def test_a_dropped_tokenizer_merge_fails(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("llama-smollm2")
    artifact = _convert(ckpt, tmp_path / "a", "onnx", "fp32")
    tokenizer = json.loads((artifact / "tokenizer.json").read_text(encoding="utf-8"))
    merges = tokenizer["model"]["merges"]
    dropped = merges.pop(0)  # the highest-priority merge ("Ġ t" in SmolLM2's BPE)
    (artifact / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    _rehash(artifact)
    report = edgekit.verify(artifact, ckpt)
    assert not report.passed and not report.metrics["tokenizer_match"], dropped
    assert "the tokenizer differs" in report.failures[0]


def test_a_zeroed_onnx_initializer_fails(tiny_checkpoint, tmp_path):
    import onnx
    from onnx import numpy_helper

    ckpt = tiny_checkpoint("qwen2")
    artifact = _convert(ckpt, tmp_path / "a", "onnx", "fp32")
    model = onnx.load(str(artifact / "model.onnx"))
    biggest = max((i for i in model.graph.initializer if "layers.0" in i.name or "layer.0" in i.name),
                  key=lambda i: int(np.prod(i.dims)))
    biggest.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(biggest)), biggest.name))
    onnx.save(model, str(artifact / "model.onnx"))
    _rehash(artifact)
    report = edgekit.verify(artifact, ckpt)
    assert not report.passed, biggest.name


def test_a_failed_gate_leaves_nothing_unless_kept(tiny_checkpoint, tmp_path):
    from helpers import leftovers

    ckpt = tiny_checkpoint("qwen2")
    out = tmp_path / "strict"
    with pytest.raises(edgekit.FidelityGateFailed, match="failed its fidelity gate") as info:
        edgekit.convert(str(ckpt), to="gguf", quant="int4", output=out, max_kl=1e-9)
    assert info.value.report.metrics["kl_mean"] > 1e-9 and leftovers(out) == []
    cli = _cli("convert", str(ckpt), "-q", "int4", "-o", str(out), "--max-kl", "1e-9")
    assert cli.returncode == 1 and "nothing was written" in cli.stderr and leftovers(out) == []
    kept = edgekit.convert(str(ckpt), to="gguf", quant="int4", output=out, max_kl=1e-9, keep_failed=True)
    assert kept.fidelity is not None and not kept.fidelity.passed
    assert edgekit.read_manifest(out)["fidelity"]["passed"] is False
    with pytest.warns(edgekit.FidelityWarning, match="failed its fidelity check"):
        edgekit.load(out).close()
    passed = edgekit.convert(str(ckpt), to="gguf", quant="int8", output=tmp_path / "ok").path
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an artifact that passed loads without a warning
        edgekit.load(passed).close()


def test_a_reference_that_is_not_the_source_is_an_error(tiny_checkpoint, tmp_path):
    artifact = _convert(tiny_checkpoint("qwen2"), tmp_path / "a", "gguf", "fp16", verify=False)
    with pytest.raises(edgekit.VerificationError, match="not the same model"):
        edgekit.verify(artifact, tiny_checkpoint("llama3"))  # another architecture
    other = tmp_path / "other"  # same architecture and files, other weights
    import shutil

    shutil.copytree(tiny_checkpoint("qwen2"), other)
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(other / "model.safetensors"))
    weights = {k: v * 1.01 for k, v in weights.items()}
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(edgekit.VerificationError, match="not the same checkpoint"):
        edgekit.verify(artifact, other)
    # the source was a local folder, named in the manifest by its name alone: this machine's record
    # finds it again (once it moves, verify says to pass it: the local-source test below)
    assert edgekit.verify(artifact, save=False).passed
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest.pop("source")
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    cli = _cli("verify", str(artifact))
    assert cli.returncode == 1 and "names no source checkpoint" in cli.stderr
    assert "Traceback" not in cli.stderr


def test_embedders_are_graded_by_cosine_and_json_and_eval_file(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("bert")
    artifact = _convert(ckpt, tmp_path / "a", "onnx", "int8", verify=False)
    p = _cli("verify", str(artifact), "--reference", str(ckpt), "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)["report"]
    assert report["task"] == "feature-extraction" and report["metrics"]["sentences"] == 16
    assert report["metrics"]["cosine_mean"] > report["thresholds"]["min_cosine"]
    notes = tmp_path / "notes.txt"
    notes.write_text("First line of my own text.\nZweite Zeile.\n", encoding="utf-8")
    own = edgekit.verify(artifact, ckpt, eval_file=notes, save=False)
    assert own.eval_text["name"] == "notes.txt" and own.metrics["sentences"] == 2
    (tmp_path / "empty.txt").write_text("")
    bad = _cli("verify", str(artifact), "--reference", str(ckpt), "--eval-file", str(tmp_path / "empty.txt"))
    assert bad.returncode == 1 and "empty" in bad.stderr


def test_convert_without_torch_grades_against_the_file_llama_cpp_quantized(tiny_checkpoint, tmp_path):
    """reference_kind="edgekit" (what a machine without torch gets): a k-quant GGUF is compared with
    the unquantized GGUF its quantizer read, which then leaves the artifact."""
    result = edgekit.convert(str(tiny_checkpoint("llama3")), to="gguf", quant="int4", output=tmp_path / "a",
                             reference_kind="edgekit")
    assert result.fidelity.passed and "the file llama.cpp's quantizer read" in result.fidelity.reference[
        "description"]
    assert sorted(p.name for p in result.path.iterdir() if p.name.startswith(".")) == []
    torch_says = edgekit.verify(result.path, tiny_checkpoint("llama3"), reference_kind="transformers")
    assert result.fidelity.metrics["kl_mean"] == pytest.approx(torch_says.metrics["kl_mean"], rel=0.2)


def test_verify_finds_a_local_source_again_from_anywhere(tiny_checkpoint, tmp_path, monkeypatch):
    """`edgekit convert ./student` names the source "student" in the portable manifest; this
    machine's record finds the folder by its files' hashes, so `verify` works from any folder until
    the checkpoint moves (then it says to pass --reference)."""
    import shutil

    from edgekit.errors import VerificationError

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    student = tmp_path / "work" / "student"
    shutil.copytree(tiny_checkpoint("qwen2"), student)
    monkeypatch.chdir(tmp_path / "work")
    artifact = edgekit.convert("./student", to="gguf", quant="int8", output=tmp_path / "out",
                               verify=False).path
    assert edgekit.read_manifest(artifact)["source"]["id"] == "student"
    monkeypatch.chdir(tmp_path)  # "student" is no path from here
    report = edgekit.verify(artifact, save=False)
    assert report.passed, report.summary()
    shutil.move(student, tmp_path / "moved")
    with pytest.raises(VerificationError, match="--reference"):
        edgekit.verify(artifact, save=False)
    assert edgekit.verify(artifact, tmp_path / "moved", save=False).passed
