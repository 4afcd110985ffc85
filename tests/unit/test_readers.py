"""The readers that stand between user files and native code: safetensors headers, config
values, tokenizer ids and GGUF headers. Pure numpy/gguf: no model, no torch."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from edgekit.converters.safetensors_io import read_index
from edgekit.converters.validate import check_config, check_tensors, check_tokenizer, check_unique_tokens
from edgekit.errors import ArtifactError, CheckpointFormatError, TokenizerError
from edgekit.runtimes.gguf_preflight import preflight, read_header


def _safetensors(path: Path, entries: dict[str, dict], data: bytes) -> Path:
    header = json.dumps(entries).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_contiguous_tensors_read(tmp_path):
    f = _safetensors(tmp_path / "a.safetensors", {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, np.arange(3, dtype="<f4").tobytes())
    refs = read_index(f)
    assert refs["b"].load().tolist() == [2.0]


def test_overlapping_offsets_refused(tmp_path):
    f = _safetensors(tmp_path / "a.safetensors", {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12))
    with pytest.raises(CheckpointFormatError, match=r"a.safetensors: tensor 'b' .* overlaps 'a'"):
        read_index(f)


def test_gap_between_tensors_refused(tmp_path):
    f = _safetensors(tmp_path / "a.safetensors", {
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, bytes(12))
    with pytest.raises(CheckpointFormatError, match="4 unused bytes"):
        read_index(f)


@pytest.mark.parametrize("shape", [[-1], ["2"], [2.0], [10**30]])
def test_malformed_shapes_refused(tmp_path, shape):
    f = _safetensors(tmp_path / "a.safetensors",
                     {"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(CheckpointFormatError, match="tensor 'a'"):
        read_index(f)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_refused_by_name(tmp_path, value):
    data = np.array([1.0, value, 3.0], dtype="<f4")
    f = _safetensors(tmp_path / "w.safetensors", {"layer.weight": {"dtype": "F32", "shape": [3],
                                                                   "data_offsets": [0, 12]}}, data.tobytes())
    with pytest.raises(CheckpointFormatError,
                       match=r"w.safetensors: tensor 'layer.weight' holds 1 NaN or infinite"):
        read_index(f)["layer.weight"].load()


def test_bf16_nan_refused(tmp_path):
    f = _safetensors(tmp_path / "w.safetensors",
                     {"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}},
                     np.array([0x3F80, 0x7FC0], dtype="<u2").tobytes())
    with pytest.raises(CheckpointFormatError, match="NaN"):
        read_index(f)["w"].load()


@pytest.mark.parametrize("key,value,word", [
    ("hidden_size", "576", "whole number"), ("num_attention_heads", 0, ">= 1"),
    ("vocab_size", True, "whole number"), ("vocab_size", 10**12, "whole number"),
    ("rms_norm_eps", -1e-5, "> 0"), ("rope_theta", "1e4", "finite number"),
    ("num_key_value_heads", 1.5, "whole number"),
])
def test_config_values_typed(tmp_path, key, value, word):
    with pytest.raises(CheckpointFormatError, match=rf"config.json: '{key}' is .*{word}"):
        check_config(tmp_path / "config.json", {key: value})


def test_heads_must_divide():
    with pytest.raises(CheckpointFormatError, match="not a multiple"):
        check_config(Path("config.json"), {"num_attention_heads": 9, "num_key_value_heads": 2})


_CONFIG = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "vocab_size": 10}


def _shapes(**override):
    shapes = {"model.embed_tokens.weight": (10, 8), "model.norm.weight": (8,),
              "model.layers.0.self_attn.q_proj.weight": (8, 8),
              "model.layers.0.self_attn.k_proj.weight": (4, 8),
              "model.layers.0.self_attn.v_proj.weight": (4, 8),
              "model.layers.0.self_attn.o_proj.weight": (8, 8),
              "model.layers.0.mlp.gate_proj.weight": (16, 8), "model.layers.0.mlp.up_proj.weight": (16, 8),
              "model.layers.0.mlp.down_proj.weight": (8, 16)}
    shapes.update(override)
    return {k: (v, Path("model.safetensors")) for k, v in shapes.items() if v is not None}


def test_shapes_match_config():
    check_tensors(Path("ckpt"), _CONFIG, "LlamaForCausalLM", _shapes())


@pytest.mark.parametrize("override,config,word", [
    ({"model.layers.0.mlp.up_proj.weight": (12, 8)}, {}, "intermediate_size, hidden_size"),
    ({}, {"vocab_size": 10**12}, "model.embed_tokens.weight' has shape"),
    ({"model.layers.1.self_attn.q_proj.weight": (8, 8)}, {}, "belongs to layer 1"),
    ({"model.layers.0.self_attn.q_proj.weight": None}, {}, "layer 0 has no"),
    ({}, {"num_key_value_heads": 2}, "num_key_value_heads x head_dim"),
])
def test_shape_mismatch_names_tensor_and_config(override, config, word):
    with pytest.raises(CheckpointFormatError, match=word):
        check_tensors(Path("ckpt"), {**_CONFIG, **config}, "LlamaForCausalLM", _shapes(**override))


def test_unknown_family_left_to_its_exporter():
    check_tensors(Path("ckpt"), {}, "DistilBertModel", {"x": ((1,), Path("m"))})


def _tokenizer(tmp_path: Path, vocab: dict[str, int], added: list[dict]) -> Path:
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab},
                                                         "added_tokens": added}))
    return tmp_path


def test_added_token_past_the_embedding_is_tolerated(tmp_path):
    """Gemma 3's tokenizer.json lists <image_soft_token> one past its embedding: left out, not refused."""
    d = _tokenizer(tmp_path, {"a": 0, "b": 1}, [{"id": 2, "content": "<image_soft_token>", "special": True}])
    check_tokenizer(d, {"vocab_size": 2}, "Gemma3ForCausalLM")


def test_negative_or_non_integer_ids_refused(tmp_path):
    for bad in (-1, 1.5, "2"):
        d = _tokenizer(tmp_path, {"a": 0, "b": bad}, [])
        with pytest.raises(TokenizerError, match="ids are whole numbers"):
            check_tokenizer(d, {"vocab_size": 3}, "LlamaForCausalLM")


def test_added_token_restating_its_vocab_entry_is_fine(tmp_path):
    d = _tokenizer(tmp_path, {"<s>": 0, "b": 1}, [{"id": 0, "content": "<s>", "special": True}])
    check_tokenizer(d, {"vocab_size": 2}, "LlamaForCausalLM")


def test_token_id_past_the_embedding_refused(tmp_path):
    d = _tokenizer(tmp_path, {"a": 0, "b": 5}, [])
    with pytest.raises(TokenizerError, match="token id 5 does not fit the embedding's 3 rows"):
        check_tokenizer(d, {"vocab_size": 3}, "Qwen2ForCausalLM")


def test_unique_tokens_for_gguf():
    check_unique_tokens(["a", "b"], Path("t"))
    with pytest.raises(TokenizerError, match='tokens 0 and 2 are both "a"'):
        check_unique_tokens(["a", "b", "a"], Path("t"))


def write_gguf(path: Path, tokens: list[str], rows: int | None = None, **extra) -> Path:
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    for key, value in extra.items():
        w.add_uint32(key, value)
    w.add_tensor("token_embd.weight", np.zeros((rows or len(tokens), 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_header_read(tmp_path):
    f = write_gguf(tmp_path / "m.gguf", ["a", "b", "c"])
    header = preflight(f)
    assert header.metadata["tokenizer.ggml.tokens"] == [b"a", b"b", b"c"]
    assert header.tensors["token_embd.weight"][0] == (4, 3)


def test_gguf_duplicate_tokens_refused(tmp_path):
    f = write_gguf(tmp_path / "m.gguf", ["a", "b", "a"])
    with pytest.raises(ArtifactError, match=r"m.gguf: tokenizer.ggml.tokens has 'a' twice \(ids 0 and 2\)"):
        preflight(f)


def test_gguf_vocab_embedding_mismatch_refused(tmp_path):
    f = write_gguf(tmp_path / "m.gguf", ["a", "b", "c"], rows=5)
    with pytest.raises(ArtifactError, match="token_embd.weight has 5 rows but the vocabulary has 3 tokens"):
        preflight(f)


def test_gguf_special_id_outside_vocab_refused(tmp_path):
    f = write_gguf(tmp_path / "m.gguf", ["a", "b"], **{"tokenizer.ggml.eos_token_id": 7})
    with pytest.raises(ArtifactError, match="eos_token_id is 7, outside the vocabulary"):
        preflight(f)


def test_gguf_truncated_refused(tmp_path):
    f = write_gguf(tmp_path / "m.gguf", ["a", "b", "c"])
    data = f.read_bytes()
    for cut in (3, 20, 60, len(data) - 40):  # the last cut falls inside the tensor data
        (tmp_path / "t.gguf").write_bytes(data[:cut])
        with pytest.raises(ArtifactError, match="t.gguf"):
            preflight(tmp_path / "t.gguf")


def test_gguf_huge_counts_refused_without_allocating(tmp_path):
    f = tmp_path / "h.gguf"
    f.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 2**60) + bytes(64))
    with pytest.raises(ArtifactError, match="cannot fit"):
        read_header(f)
