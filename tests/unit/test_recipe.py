"""The ONNX quantization recipe (converters/onnx_recipe.py): which tensors get how many bits, in
which block size, with which scale type. Pure Python/numpy: nothing is quantized here."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.converters.onnx_recipe import PRECISIONS, Precision, at_ends, onnx_precision
from edgekit.errors import ConversionError

INT4, INT8, FP32, FP16 = (PRECISIONS[k] for k in ("int4", "int8", "fp32", "fp16"))
LAYER = "model.layers.{}.{}.weight"


# ---- at_ends ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("n_layers", "ends"), [
    (1, {0}),
    (2, {0, 1}),
    (3, {0, 2}),
    (4, {0, 3}),
    (8, {0, 1, 6, 7}),
    (30, set(range(7)) | set(range(23, 30))),  # 30 // 4 = 7 layers at each end
])
def test_at_ends(n_layers, ends):
    assert {layer for layer in range(n_layers) if at_ends(layer, n_layers)} == ends


def test_at_ends_is_symmetric():
    for n in range(1, 41):
        for layer in range(n):
            assert at_ends(layer, n) == at_ends(n - 1 - layer, n), (layer, n)


# ---- layer_spec ------------------------------------------------------------------------------

@pytest.mark.parametrize("tensor", ["self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"])
@pytest.mark.parametrize("layer", [0, 7, 15, 29])
def test_int4_keeps_k_v_o_at_8_bits_everywhere(tensor, layer):
    bits, _ = INT4.layer_spec(LAYER.format(layer, tensor), 576, layer, 30)
    assert bits == 8


@pytest.mark.parametrize("tensor", ["self_attn.q_proj", "mlp.gate_proj", "mlp.up_proj"])
@pytest.mark.parametrize("layer", [0, 7, 15, 29])
def test_int4_keeps_q_gate_up_at_4_bits(tensor, layer):
    assert INT4.layer_spec(LAYER.format(layer, tensor), 576, layer, 30) == (4, 32)


@pytest.mark.parametrize(("layer", "bits"), [(0, 8), (6, 8), (7, 4), (15, 4), (22, 4), (23, 8), (29, 8)])
def test_int4_down_proj_at_8_bits_only_at_the_ends(layer, bits):
    assert INT4.layer_spec(LAYER.format(layer, "mlp.down_proj"), 1536, layer, 30)[0] == bits


def test_int4_down_proj_widened_in_a_single_layer_model():
    assert INT4.layer_spec("model.layers.0.mlp.down_proj.weight", 1536, 0, 1)[0] == 8


@pytest.mark.parametrize(("k", "block"), [(576, 64), (1536, 128), (64, 64), (96, 32), (128, 128),
                                          (384, 128), (192, 64), (32, 32)])
def test_8_bit_block_is_the_largest_power_of_two_up_to_128_dividing_k(k, block):
    assert INT4.layer_spec("model.layers.0.self_attn.v_proj.weight", k, 0, 30) == (8, block)
    assert k % block == 0


def test_4_bit_block_does_not_depend_on_k():
    for k in (576, 1536, 64, 96):
        assert INT4.layer_spec("model.layers.3.mlp.up_proj.weight", k, 3, 30) == (4, 32)


@pytest.mark.parametrize("tensor", ["self_attn.k_proj", "self_attn.q_proj", "mlp.down_proj", "mlp.up_proj"])
def test_int8_is_8_bits_in_blocks_of_32_everywhere(tensor):
    for k in (576, 1536):
        assert INT8.layer_spec(LAYER.format(10, tensor), k, 10, 30) == (8, 32)


def test_only_int4_widens():
    for precision in (INT8, FP32, FP16):
        assert not precision.widened("model.layers.0.self_attn.k_proj.weight", 0, 30)
    assert INT4.widened("model.layers.0.self_attn.k_proj.weight", 0, 30)
    assert not INT4.widened("model.layers.0.self_attn.q_proj.weight", 0, 30)


# ---- head_spec, scales, symmetry -------------------------------------------------------------

@pytest.mark.parametrize(("k", "expected"), [(576, (8, 64)), (1536, (8, 128)), (96, (8, 32))])
def test_int4_head_is_8_bit_with_wide_blocks(k, expected):
    assert INT4.head_spec(k) == expected


def test_int8_head():
    assert INT8.head_spec(576) == (8, 32)


def test_head_bits_fall_back_to_bits():
    custom = Precision("x", "float32", bits=4)
    assert custom.head_spec(576) == (4, 32)
    assert Precision("x", "float32", bits=4, head_bits=8).head_spec(576) == (8, 32)  # no eight_bit_block


def test_int4_scale_dtypes():
    assert INT4.scale_dtype(4) is np.float16  # half_scales: 4-bit tensors
    assert INT4.scale_dtype(8) is np.float32  # 8-bit layer tensors keep float32 scales
    assert INT4.scale_dtype(8, head=True) is np.float16  # half_scale_head
    assert INT4.scale_dtype(4, head=True) is np.float16


def test_int8_scale_dtypes_are_float32():
    assert INT8.scale_dtype(8) is np.float32
    assert INT8.scale_dtype(8, head=True) is np.float32
    assert INT8.scale_dtype(4) is np.float32  # half_scales off


def test_float16_graph_has_float16_scales():
    half_graph = Precision("x", "float16", bits=4)
    assert half_graph.scale_dtype(4) is np.float16
    assert half_graph.scale_dtype(8) is np.float16
    assert half_graph.scale_dtype(8, head=True) is np.float16


def test_symmetric_only_for_8_bit_int4_tensors():
    assert INT4.symmetric(8)
    assert not INT4.symmetric(4)
    assert not INT8.symmetric(8)


# ---- names -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("int4", "int4"), ("q4", "int4"), ("Q4", "int4"), ("INT4", "int4"),
    ("int8", "int8"), ("q8", "int8"),
    ("fp16", "fp16"), ("float16", "fp16"), ("f16", "fp16"),
    ("fp32", "fp32"), ("float32", "fp32"), ("F32", "fp32"),
])
def test_onnx_precision_aliases(name, expected):
    precision = onnx_precision(name)
    assert precision is PRECISIONS[expected]
    assert precision.name == expected


@pytest.mark.parametrize("name", ["int3", "q4_k_m", "bf16", "", "fp64", "int 4"])
def test_onnx_precision_unknown(name):
    with pytest.raises(ConversionError, match="unknown ONNX quantization") as info:
        onnx_precision(name)
    for known in PRECISIONS:
        assert known in str(info.value)


def test_precision_names_match_their_keys():
    assert set(PRECISIONS) == {"fp32", "fp16", "int8", "int4"}
    for key, precision in PRECISIONS.items():
        assert precision.name == key


def test_float_types():
    assert (FP32.bits, FP32.float_type) == (None, "float32")
    assert (FP16.bits, FP16.float_type) == (None, "float16")
    assert (INT8.bits, INT4.bits) == (8, 4)


# ---- scheme ----------------------------------------------------------------------------------

def test_scheme_float():
    assert FP32.scheme == "float32"
    assert FP16.scheme == "float16"


def test_scheme_int4_names_what_was_chosen():
    scheme = INT4.scheme
    assert scheme.startswith("MatMulNBits 4-bit block 32 asymmetric")
    assert "GPTQ" in scheme
    for tensor in ("k_proj", "v_proj", "o_proj"):
        assert tensor in scheme
    assert "down_proj in the first and last quarter of the layers" in scheme
    assert "embedding+lm_head 8-bit" in scheme
    assert "float16 scales" in scheme
    assert "symmetric" in scheme and "block up to 128" in scheme
    assert "activation-aware scaling alpha 0.5" in scheme
    assert "bias" not in scheme  # bias_correction is off


def test_scheme_int8_is_plain():
    scheme = INT8.scheme
    assert scheme.startswith("MatMulNBits 8-bit block 32 asymmetric")
    assert "embedding+lm_head 8-bit" in scheme
    for absent in ("GPTQ", "k_proj", "float16", "activation-aware"):
        assert absent not in scheme


def test_gguf_precision_note_names_the_rows_llama_cpp_could_not_pack():
    """SmolLM2's 576-wide rows do not fit Q4_K's 256-value blocks: "int4" is ~6 bits and the note says why."""
    from gguf import GGMLQuantizationType as T

    from edgekit.converters.gguf_info import precision_note

    smol = [((576, 49152), T.Q8_0)] + 30 * [((576, 576), T.Q5_0), ((576, 1536), T.Q5_0),
                                             ((1536, 576), T.Q4_K), ((576,), T.F32)]
    note = precision_note(smol, "Q4_K_M", "int4")
    assert note is not None and "rows of 576 values" in note and "Q4_K's 256-value blocks" in note
    assert "Q5_0/Q8_0" in note and note.startswith("int4 (Q4_K_M) is 6.")
    # a Llama-1B's layer: 256-aligned rows, Q6_K on the down projection as Q4_K_M mixes in: no note
    aligned = 16 * (4 * [((2048, 2048), T.Q4_K)] + [((2048, 8192), T.Q4_K), ((8192, 2048), T.Q6_K)])
    assert precision_note(aligned, "Q4_K_M", "int4") is None
    assert precision_note(smol, "F16", "fp16") is None  # nothing to explain above 16 bits
