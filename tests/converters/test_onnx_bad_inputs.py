"""Bad inputs on the ONNX path: each a typed error, nothing half-written."""

from __future__ import annotations

import json
import shutil

import pytest

import edgekit
from edgekit.artifact import file_entry
from edgekit.errors import (
    CheckpointFormatError,
    OutputExistsError,
    UnsafePathError,
    UnsupportedArchitectureError,
)


@pytest.mark.parametrize("arch,model_type", [("FooForCausalLM", "foo"),  # nobody knows it
                                             ("Qwen2ForSequenceClassification", "qwen2")])  # no task we serve
def test_unsupported_architecture_lists_onnx_families(arch, model_type, tiny_checkpoint, tmp_path):
    """An architecture neither the native builders nor the optimum-onnx fallback serve."""
    src = tmp_path / "src"
    shutil.copytree(tiny_checkpoint("qwen2"), src)
    config = json.loads((src / "config.json").read_text())
    config.update(architectures=[arch], model_type=model_type)
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError) as info:
        edgekit.convert(str(src), to="onnx", quant="int8", output=tmp_path / "o")
    assert arch in str(info.value) and "Qwen2ForCausalLM" in str(info.value)
    assert "BertModel" in str(info.value) and "nor does the optimum-onnx fallback" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_both_formats_refuse_before_writing_either(tiny_checkpoint, tmp_path):
    (tmp_path / "out" / "onnx").mkdir(parents=True)
    with pytest.raises(OutputExistsError):
        edgekit.convert(str(tiny_checkpoint("qwen2")), to="onnx,gguf", quant="int8", output=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["onnx"]


def test_corrupt_weights(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("qwen2"), ckpt)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[:-4096])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        edgekit.convert(str(ckpt), to="onnx", quant="int4", output=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_external_data_escaping_the_artifact_is_refused_on_load(tiny_checkpoint, tmp_path):
    import onnx

    result = edgekit.convert(str(tiny_checkpoint("qwen2")), to="onnx", quant="fp32", output=tmp_path / "art")
    model_path = result.path / "model.onnx"
    model = onnx.load(str(model_path))
    victim = model.graph.initializer[-1]
    victim.ClearField("raw_data")
    victim.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../../outside.bin"), ("offset", "0"), ("length", "16")):
        entry = victim.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(model_path))
    manifest = json.loads((result.path / "edgekit.json").read_text())
    manifest["files"][0] = file_entry(result.path, "model.onnx")  # a consistent but hostile artifact
    (result.path / "edgekit.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsafePathError, match="escapes the artifact directory"):
        edgekit.read_manifest(result.path)


def test_two_formats_one_call(tiny_checkpoint, tmp_path):
    results = edgekit.convert(str(tiny_checkpoint("qwen2")), to="onnx,gguf", quant="int8",
                              output=tmp_path / "both")
    assert [r.format for r in results] == ["onnx", "gguf"]
    assert results[1].quant == "Q8_0" and results[0].label == "int8"
    for r in results:
        assert edgekit.read_manifest(r.path)["format"] == r.format
