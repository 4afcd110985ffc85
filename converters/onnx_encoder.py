"""BERT-family encoder -> ONNX graph built from the checkpoint's tensors (no tracing), for embeddings.

Standard ONNX ops plus ORT's Gelu; linear layers become MatMulNBits when quantized. Output is the
last hidden state [batch, seq, hidden]; pooling and normalization (from the sentence-transformers
config) are recorded in the manifest and applied by the runtime, as sentence-transformers does.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConversionError, UnsupportedArchitectureError
from edgekit.progress import Progress

from .onnx_calibration import Calibration, calibration_ids, run_taps
from .onnx_graph import GraphBuilder
from .onnx_quant import quantize_blockwise
from .onnx_recipe import PRECISIONS, Precision
from .source import Checkpoint, sentence_pooling

ENCODERS = ("BertModel", "BertForMaskedLM")  # MiniLM (all-MiniLM-L6-v2), bge-small, e5-small ...
# BERT's names for the roles Precision.eight_bit speaks of (decoder names)
_ROLES = {"attention.self.key": "k_proj", "attention.self.value": "v_proj",
          "attention.output.dense": "o_proj", "output.dense": "down_proj"}


def build_encoder(ckpt: Checkpoint, out_file: Path, precision: Precision, progress: Progress | None = None,
                  taps: bool = False) -> dict[str, Any]:
    """Write the ONNX encoder for `ckpt` to out_file; return the facts a runtime needs.

    taps: the calibration graph (as build_decoder's): outputs each linear layer's input, weights as
    inputs returned in info["feeds"].
    """
    from onnx import TensorProto, helper

    if ckpt.architecture not in ENCODERS:
        raise UnsupportedArchitectureError(str(ckpt.path / "config.json"), ckpt.architecture, list(ENCODERS))
    cfg = ckpt.config
    hidden, n_layers, n_heads = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    head_dim = hidden // n_heads
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(f"{ckpt.path / 'config.json'}: hidden_act {cfg.get('hidden_act')} "
                              "is not supported for ONNX yet")
    # Of the decoder's calibrated steps only the scale search: activation-aware scaling has nothing to
    # fold its inverse into before output.dense (a Gelu), and on all-MiniLM-L6-v2 int4 (16 sentences,
    # cosine to sentence-transformers, mean / min) GPTQ gave 0.9894 / 0.9799 where the search alone
    # gives 0.9897 / 0.9813 (min/max scales: 0.9870 / 0.9799). Bias correction: not measured here.
    precision = replace(precision, awq_alpha=None, gptq=False, bias_correction=False)
    calibrated = precision.scale_search and precision.bits is not None and not taps
    calibration = _calibrate(ckpt, out_file) if calibrated else Calibration({}, {})
    g = GraphBuilder(precision.float_type, weights_as_inputs=taps)
    ft = g.np_float
    prefix = "bert." if any(n.startswith("bert.") for n in ckpt.tensors) else ""
    tapped: dict[str, str] = {}  # input value -> its tap output (q/k/v share one)
    tap_of: dict[str, str] = {}  # weight name -> the tap of its input

    def weight(name: str) -> np.ndarray:
        return ckpt.tensor(prefix + name).astype(np.float32)

    def const(name: str) -> str:
        return g.init(name, weight(name).astype(ft))

    def linear(x: str, name: str, layer: int) -> str:
        w = weight(name + ".weight")
        role = _ROLES.get(name.split(".", 3)[-1])  # "encoder.layer.3.output.dense" -> "output.dense"
        if taps and x not in tapped:
            tapped[x] = f"tap.{name}"
            g.op("Identity", [x], outputs=[tapped[x]], name=tapped[x])
        if taps:
            tap_of[prefix + name + ".weight"] = tapped[x]
        if precision.bits is None:
            g.count_kind(precision.float_type)
            out = g.op("MatMul", [x, g.init(name + ".T", w.T.astype(ft))])[0]
        else:
            bits, block = precision.layer_spec(role or name, w.shape[1], layer, n_layers)
            g.count_kind(f"int{bits}")
            importance = calibration.importance(prefix + name + ".weight")
            q = quantize_blockwise(w, bits, block, precision.symmetric(bits), importance,
                                   precision.scale_dtype(bits))
            out = g.matmul_nbits(x, name, q, precision.accuracy_level,
                                 half_scales=precision.scale_dtype(bits) is np.float16)
        return g.op("Add", [out, const(name + ".bias")])[0]

    def layer_norm(x: str, name: str) -> str:
        return g.op("LayerNormalization", [x, const(name + ".weight"), const(name + ".bias")],
                    axis=-1, epsilon=eps)[0]

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                             ["batch", "seq", hidden])]
    # positions 0..seq-1 for every row, as a cumulative sum (no Shape/Range arithmetic)
    ones = g.op("Add", [g.op("Mul", ["input_ids", g.init("zero_i", np.array(0, np.int64))])[0],
                        g.init("one_i", np.array(1, np.int64))])[0]
    positions = g.op("Sub", [g.op("CumSum", [ones, g.init("axis1", np.array(1, np.int64))])[0], "one_i"])[0]
    words = weight("embeddings.word_embeddings.weight")
    if precision.bits is None:
        g.count_kind(precision.float_type)
        word_vecs = g.op("Gather", [g.init("embeddings.word_embeddings.weight", words.astype(ft)),
                                    "input_ids"])[0]
    else:  # the vocabulary table is most of a small encoder: quantized like the linear layers
        bits, block = precision.head_spec(words.shape[1])
        g.count_kind(f"int{bits}")
        q = quantize_blockwise(words, bits, block, precision.symmetric(bits),
                               scale_dtype=precision.scale_dtype(bits, head=True))
        word_vecs = g.gather_quantized(q, "input_ids", precision.half_scale_head)
    del words
    x = g.op("Add", [word_vecs, g.op("Gather", [const("embeddings.position_embeddings.weight"),
                                                positions])[0]])[0]
    x = g.op("Add", [x, g.op("Gather", [const("embeddings.token_type_embeddings.weight"),
                                        "token_type_ids"])[0]])[0]
    x = layer_norm(x, "embeddings.LayerNorm")
    # additive mask [batch, 1, 1, seq]: 0 where attended, a large negative where padded
    mask = g.op("Cast", [g.op("Unsqueeze", ["attention_mask",
                                            g.init("axes12", np.array([1, 2], np.int64))])[0]],
                to=g.elem)[0]
    bias = g.op("Mul", [g.op("Sub", [g.init("one_f", np.array(1.0, ft)), mask])[0],
                        g.init("neg", np.array(-1e4, ft))])[0]
    heads_shape = g.init("heads_shape", np.array([0, 0, n_heads, head_dim], np.int64))
    flat_shape = g.init("flat_shape", np.array([0, 0, hidden], np.int64))
    scale = g.init("scale", np.array(1.0 / math.sqrt(head_dim), ft))
    for i in range(n_layers):
        p = f"encoder.layer.{i}."

        def split(t: str, perm: list[int]) -> str:
            return g.op("Transpose", [g.op("Reshape", [t, heads_shape])[0]], perm=perm)[0]

        q = split(linear(x, p + "attention.self.query", i), [0, 2, 1, 3])
        k = split(linear(x, p + "attention.self.key", i), [0, 2, 3, 1])
        v = split(linear(x, p + "attention.self.value", i), [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k])[0], scale])[0], bias])[0]
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1)[0], v])[0]
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3])[0], flat_shape])[0]
        x = layer_norm(g.op("Add", [linear(ctx, p + "attention.output.dense", i), x])[0],
                       p + "attention.output.LayerNorm")
        h = g.op("Gelu", [linear(x, p + "intermediate.dense", i)], domain="com.microsoft")[0]
        x = layer_norm(g.op("Add", [linear(h, p + "output.dense", i), x])[0], p + "output.LayerNorm")
        if progress:
            progress("write", i + 1, n_layers)
    if taps:
        tap_outputs = [helper.make_tensor_value_info(t, g.elem, ["batch", "seq", None])
                       for t in tapped.values()]
        g.save(out_file, "edgekit-calibration", inputs, tap_outputs)  # no weights in it: never a side file
        return {"feeds": g.feeds, "tap_of": tap_of}
    if precision.float_type != "float32":
        x = g.op("Cast", [x], to=TensorProto.FLOAT)[0]
    g.op("Identity", [x], outputs=["last_hidden_state"], name="output")
    external = g.save(out_file, "edgekit-encoder", inputs, outputs)
    n_params = sum(int(np.prod(r.shape)) for n, r in ckpt.tensors.items()
                   if "pooler" not in n and "cls." not in n)
    return {
        "hidden_size": hidden, "num_layers": n_layers,
        "context_length": int(cfg.get("max_position_embeddings", 512)),
        "inputs": ["input_ids", "attention_mask", "token_type_ids"], "outputs": ["last_hidden_state"],
        "pooling": sentence_pooling(ckpt),
        "external_data": external,
        "bits_per_weight": round(g.weight_bytes * 8 / n_params, 3),
        "tensor_types": dict(g.kinds),
        "scheme": precision.scheme.replace("embedding+lm_head", "embedding"),
    }


def _calibrate(ckpt: Checkpoint, out_file: Path) -> Calibration:
    """Each linear layer's input on CALIBRATION_TEXT (with the tokenizer's [CLS]/[SEP]), from our
    own fp16 graph: the decoder's calibration, without the activation-aware multipliers."""
    ids = calibration_ids(ckpt)
    ids = np.array([ids[: int(ckpt.config.get("max_position_embeddings", 512))]], np.int64)
    calib = out_file.with_name(".calibration.onnx")
    try:
        info = build_encoder(ckpt, calib, PRECISIONS["fp16"], taps=True)
        seen = run_taps(ckpt, calib, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                      "token_type_ids": np.zeros_like(ids), **info.pop("feeds")})
    finally:
        calib.unlink(missing_ok=True)
    return Calibration({}, {weight: seen[tap] for weight, tap in info["tap_of"].items()})
