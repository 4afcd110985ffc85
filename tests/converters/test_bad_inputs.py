"""Each bad input ends in a typed EdgekitError naming the file, and leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edgekit
from edgekit.errors import (
    CheckpointFormatError,
    ConversionError,
    OutputExistsError,
    RemoteCodeRefused,
    SourceNotFoundError,
    TokenizerError,
    UnsupportedArchitectureError,
)

from helpers import leftovers


def _convert(src, out, **kw):
    return edgekit.convert(str(src), to="gguf", quant=kw.pop("quant", "fp16"), output=out, **kw)


def test_no_config(ckpt, tmp_path):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointFormatError, match="no config.json"):
        _convert(ckpt, tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_invalid_config_json(ckpt, tmp_path):
    (ckpt / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"],', encoding="utf-8")
    with pytest.raises(CheckpointFormatError, match=r"config.json: invalid JSON at line 1"):
        _convert(ckpt, tmp_path / "out")


def test_unsupported_architecture_lists_supported(ckpt, tmp_path):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError) as info:
        _convert(ckpt, tmp_path / "out")
    assert "FalconForCausalLM" in str(info.value) and "LlamaForCausalLM" in str(info.value)
    assert "Qwen2ForCausalLM" in str(info.value)
    assert leftovers(tmp_path / "out") == []


def test_auto_map_refused_unless_allowed(ckpt, tmp_path):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RemoteCodeRefused, match="auto_map"):
        _convert(ckpt, tmp_path / "out")
    result = _convert(ckpt, tmp_path / "out", allow_remote_code=True)  # weights only; no code is run
    assert (result.path / result.manifest["model_file"]).is_file()


def test_truncated_safetensors(ckpt, tmp_path):
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointFormatError, match=r"model.safetensors: .*truncated"):
        _convert(ckpt, tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_garbled_safetensors_header(ckpt, tmp_path):
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\xff" * 32
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointFormatError, match=r"model.safetensors: header is not valid JSON"):
        _convert(ckpt, tmp_path / "out")


def test_pickle_only_refused(ckpt, tmp_path):
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointFormatError, match="pickle"):
        _convert(ckpt, tmp_path / "out")


def test_pickle_converts_when_allowed(ckpt, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    torch.save(load_file(ckpt / "model.safetensors"), ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()
    result = _convert(ckpt, tmp_path / "out", allow_pickle=True)
    assert result.manifest["source"]["files"]  # hashes of what was really read
    assert result.tensor_types["F16"] > 0


def test_missing_tokenizer(ckpt, tmp_path):
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="no tokenizer"):
        _convert(ckpt, tmp_path / "out")


def test_unknown_pre_tokenizer_is_an_error_not_a_guess(ckpt, tmp_path):
    tj = json.loads((ckpt / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (ckpt / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(TokenizerError, match="pre-tokenizer"):
        _convert(ckpt, tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_missing_source():
    with pytest.raises(SourceNotFoundError, match="no such directory"):
        edgekit.convert("./definitely/not/here", to="gguf")


def test_unknown_quant_and_format(ckpt, tmp_path):
    with pytest.raises(ConversionError, match="unknown quantization 'int3x'"):
        _convert(ckpt, tmp_path / "out", quant="int3x")
    with pytest.raises(ConversionError, match="unknown format 'tflite'"):
        edgekit.convert(str(ckpt), to="tflite", output=tmp_path / "out")


def test_output_exists_refused_then_overwritten(ckpt, tmp_path):
    out = tmp_path / "out"
    first = _convert(ckpt, out, quant="int8")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _convert(ckpt, out)
    assert (out / first.manifest["model_file"]).is_file()
    result = _convert(ckpt, out, overwrite=True)  # an edgekit artifact may be replaced
    assert not (out / first.manifest["model_file"]).exists() and (out / "edgekit.json").is_file()
    assert leftovers(out) == ["out"]
    assert result.path == out.absolute()


def test_failure_midway_leaves_nothing(ckpt, tmp_path, monkeypatch):
    import gguf

    calls = {"n": 0}
    real = gguf.GGUFWriter.write_tensor_data

    def failing(self, tensor, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(self, tensor, *a, **kw)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", failing)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="no space left"):
        _convert(ckpt, out)
    assert calls["n"] == 3
    assert leftovers(out) == []


def test_failure_in_quantize_step_removes_intermediate(ckpt, tmp_path, monkeypatch):
    from edgekit.converters import llama_quantize

    def boom(src, dst, file_type, threads=None):
        assert Path(src).is_file()  # the intermediate exists while quantizing
        raise ConversionError("simulated quantizer failure")

    monkeypatch.setattr(llama_quantize, "quantize", boom)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="simulated"):
        _convert(ckpt, out, quant="int4")
    assert leftovers(out) == []
