"""Hugging Face decoder -> ONNX graph built directly from the checkpoint's tensors (no tracing).

The graph uses ONNX Runtime's fused contrib ops, the ones its CPU and CUDA providers implement:
SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization for RMSNorm + residual,
GroupQueryAttention with rotary embedding and a KV cache, and MatMulNBits for int4/int8 weights.

I/O contract (recorded in edgekit.json so runtimes need not guess):
  input_ids [batch, seq] int64, attention_mask [batch, total] int64,
  past_key_values.{i}.key/value [batch, kv_heads, past, head_dim]
  -> logits [batch, seq, vocab] float32, present.{i}.key/value.
GroupQueryAttention takes its lengths from the mask: seqlens_k = sum(mask) - 1 and
total_sequence_length = mask width. A runtime can therefore preallocate one buffer per layer
[batch, kv_heads, max_len, head_dim], bind it as both past and present, and pass a mask of width
max_len with ones up to the current length: nothing is copied per token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConversionError, UnsupportedArchitectureError

from .onnx_graph import GraphBuilder
from .onnx_quant import GPTQ_DAMPING, dequantize, quantize_blockwise, quantize_gptq
from .source import Checkpoint

Progress = Callable[[str, int, int], None]
MAX_CONTEXT = 32768  # rotary caches beyond this cost memory few edge users want


@dataclass(frozen=True)
class DecoderSpec:
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v
    qk_norm: bool = False  # Qwen3 normalizes q and k per head before rotary


# HF architecture -> graph facts. Rotary is NEOX-style (rotate halves) for all of them in HF layout.
DECODERS: dict[str, DecoderSpec] = {
    "LlamaForCausalLM": DecoderSpec(),  # SmolLM2, TinyLlama, Llama-3.x
    "MistralForCausalLM": DecoderSpec(),
    "Qwen2ForCausalLM": DecoderSpec(qkv_bias=True),  # Qwen2, Qwen2.5
    "Qwen3ForCausalLM": DecoderSpec(qk_norm=True),
}


@dataclass(frozen=True)
class Precision:
    """How weights are stored. bits None = float (dtype); otherwise MatMulNBits per tensor."""

    name: str  # fp32, fp16, int8, int4
    float_type: str  # activations and float weights: "float32" or "float16"
    bits: int | None = None
    block_size: int = 32
    accuracy_level: int = 4  # CPU: int8 activations inside the 4-bit kernels
    # Tensors kept at 8 bits in an int4 model: the ones whose error reaches the output most directly
    # (DESIGN.md section 6: v/o/down at 8 bits took mean KL from 0.45 to 0.14 on SmolLM2) and k, the
    # cheapest to widen for what it gains (its error reaches every query head of its group).
    eight_bit: tuple[str, ...] = ()
    # 8 bits only in the first and last quarter of the layers, 4 bits between: their errors cost the
    # most at the ends (llama.cpp's Q4_K_M widens ffn_down at the ends too).
    eight_bit_ends: tuple[str, ...] = ()
    # Blocks of 8-bit tensors: the largest power of two up to this that divides K. Their weight error
    # is negligible at any block size, but accuracy level 4 quantizes the activations per block too,
    # so wider blocks do cost something (measured below; worth it in int4, not in int8).
    eight_bit_block: int | None = None
    symmetric_eight_bit: bool = False  # 8-bit tensors without zero points (8 bits per block less)
    head_bits: int | None = None  # embedding / lm_head bits when they differ from `bits`
    # float16 scales for the 4-bit tensors in a float32 graph: 0.5 bit per weight less at block 32.
    # MatMulNBits takes scales in its input type, so inputs are cast to float16 and results back;
    # the residual stream, attention and KV cache stay float32. The 8-bit layer tensors keep float32
    # scales: 0.125-0.25 bit less would cost two casts each (per-node cost shows in decode).
    half_scales: bool = False
    # float16 scales for the embedding / lm_head: one cast of the token vectors and one of the
    # logits per step, 0.25 bit per weight less at 8 bits in blocks of 64
    half_scale_head: bool = False
    # Activation-aware scaling before quantizing (AWQ without its search): each linear layer's input
    # channels are scaled by mean|activation|^alpha, measured by running our own fp32 graph on a
    # short built-in text, and the inverse is folded into the op before (norm weight, up or v rows).
    # The fp32 function is unchanged; quantization error moves off the channels that matter.
    awq_alpha: float | None = None
    # Search each 4-bit block's scale and zero point for the least error weighted by its inputs'
    # mean square on the same text, instead of min/max (onnx_quant's docstring has the figures).
    scale_search: bool = False
    # Round the 4-bit matrices block by block, each block's output error on the same text re-fit by
    # the blocks after it (GPTQ; onnx_quant.quantize_gptq), each block's scale still searched.
    gptq: bool = False
    # Add each 4-bit projection's mean output error, (W - dequant(W)) @ mean(x) over the same text,
    # back as MatMulNBits' bias. Off-grid SmolLM2, mean KL over three texts: 0.104 -> 0.097 on
    # round-to-nearest, but GPTQ re-fits most of that error already: 0.085 -> 0.084 with it, for
    # 0.2 MB (bench/int4_variants.py). Off by default: that is within noise, and onnxruntime's CUDA
    # MatMulNBits rejected a bias until mid-2026 (1.28 or later).
    bias_correction: bool = False

    @property
    def scheme(self) -> str:
        """What was really chosen, in words (the manifest's quantization.scheme)."""
        if self.bits is None:
            return self.float_type
        parts = [f"MatMulNBits {self.bits}-bit block {self.block_size} asymmetric"]
        if self.half_scales:
            parts.append(f"float16 scales for {self.bits}-bit")
        how = ", ".join(["symmetric"] * self.symmetric_eight_bit
                        + [f"block up to {self.eight_bit_block}"] * bool(self.eight_bit_block))
        wide = f" ({how})" if how else ""
        tensors = list(self.eight_bit) + [f"{t} in the first and last quarter of the layers" for t in self.eight_bit_ends]
        if tensors:
            parts.append("8-bit" + wide + ": " + ", ".join(tensors))
        parts.append(f"embedding+lm_head {self.head_bits or self.bits}-bit" + (wide if self.head_bits == 8 else "")
                     + (" with float16 scales" if self.half_scale_head else ""))
        if self.awq_alpha is not None:
            parts.append(f"activation-aware scaling alpha {self.awq_alpha}")
        if self.gptq:
            parts.append(f"{self.bits}-bit blocks rounded by GPTQ (damping {GPTQ_DAMPING:g})")
        if self.scale_search:
            parts.append(f"{self.bits}-bit scales searched for the least activation-weighted error")
        if self.bias_correction:
            parts.append(f"{self.bits}-bit mean output error corrected by a bias")
        return "; ".join(parts)

    def widened(self, name: str, layer: int = 0, n_layers: int = 1) -> bool:
        """Whether an int4 model keeps layer matrix `name` (in layer `layer` of n_layers) at 8 bits."""
        return self.bits == 4 and (any(tag in name for tag in self.eight_bit) or (
            any(tag in name for tag in self.eight_bit_ends) and at_ends(layer, n_layers)))

    def layer_spec(self, name: str, k: int, layer: int = 0, n_layers: int = 1) -> tuple[int, int]:
        """(bits, block size) of the quantized matrix `name` (k input features) in layer `layer`."""
        bits = 8 if self.widened(name, layer, n_layers) else self.bits
        return bits, self._wide_block(k) if bits == 8 else self.block_size

    def head_spec(self, k: int) -> tuple[int, int]:
        """(bits, block size) of the embedding and lm_head."""
        bits = self.head_bits or self.bits
        return bits, self._wide_block(k) if bits == 8 else self.block_size

    def scale_dtype(self, bits: int, head: bool = False) -> type:
        """The numpy type the scales of a `bits`-bit matrix (the embedding/lm_head: head) are stored in."""
        half = self.half_scale_head if head else self.half_scales and bits == 4
        return np.float16 if half or self.float_type == "float16" else np.float32

    def symmetric(self, bits: int) -> bool:
        """Whether tensors stored at `bits` go without zero points."""
        return self.symmetric_eight_bit and bits == 8

    def _wide_block(self, k: int) -> int:
        block = self.eight_bit_block or self.block_size
        while block > self.block_size and k % block:
            block //= 2
        return block


def at_ends(layer: int, n_layers: int) -> bool:
    """Whether `layer` is in the first or last quarter of n_layers (at least one layer each end)."""
    return min(layer, n_layers - 1 - layer) < max(1, n_layers // 4)


PRECISIONS = {
    "fp32": Precision("fp32", "float32"),
    "fp16": Precision("fp16", "float16"),
    # int8 keeps accuracy level 4 (int8 activations): level 1 measured mean KL 0.0023 instead of
    # 0.0074 on off-grid SmolLM2, but onnxruntime 1.32's CPU kernel then decoded over 10x slower.
    # It keeps blocks of 32 and float32 scales too: blocks up to 128 measured 0.017 (144 MB), float16
    # scales 0.0080 (147 MB), symmetric blocks 0.0088 (152 MB), against 0.0069 (156 MB) and a target
    # of 0.008.
    "int8": Precision("int8", "float32", bits=8),
    # int4: measured on off-grid SmolLM2 (bench/fidelity.py, 83-token text), mean KL / size:
    # everything 4-bit 0.68 / 89 MB; v/o/down 8-bit 0.35 / 109 MB; plus embedding+lm_head 8-bit
    # 0.22 / 124 MB; plus activation-aware scaling (alpha 0.5; 0.25 gave 0.156) 0.152 / 124 MB;
    # plus float16 scales for the 4-bit tensors and 8-bit blocks up to 128: 0.151 / 111 MB (0.095
    # on the 381-token text). Then per-tensor costs, one tensor at a time on a third text: k gains
    # the most per byte at 8 bits (-0.013 for 1.7 MB), down_proj costs the least at 4 bits away
    # from the ends (layer 29 alone +0.007, middle layers ~+0.001 each for 0.4 MB); 8-bit zero
    # points (~0.002, measured in int8) and float32 head scales (0.002) are within int4's noise
    # for 1.7 MB. So k 8-bit, down 4-bit in the middle half, symmetric 8-bit, float16 head scales:
    # 0.151 / 104.5 MB (0.101), decode speed unchanged. llama.cpp Q4_K_M: 0.176 / 105.5 MB (0.100).
    # Then the 4-bit scales searched for the least activation-weighted error instead of min/max
    # (onnx_quant): 0.151 / 104.5 MB (0.092; over all three texts 0.115 -> 0.104), ~1 s more to convert.
    # Then GPTQ rounding with heavy damping (onnx_quant): 0.122 / 104.5 MB (0.074; all three 0.084),
    # ~2 s more to convert. Not taken: float16 scales on the 8-bit layer tensors (4% slower decode
    # from the casts); a float16 graph (9% slower decode); 4-bit head (+0.10); 4-bit block 16 (0.131
    # / 115 MB; with down 4-bit 0.148 / 104.7 MB but 10% slower decode: the CPU kernel is slower per
    # block); longer calibration texts (no better, within noise). Quality first: "int4" must not buy
    # size with quality.
    "int4": Precision("int4", "float32", bits=4, eight_bit=("k_proj", "v_proj", "o_proj"), eight_bit_ends=("down_proj",),
                      eight_bit_block=128, symmetric_eight_bit=True, head_bits=8, awq_alpha=0.5, half_scales=True,
                      half_scale_head=True, scale_search=True, gptq=True),
}
ALIASES = {"float32": "fp32", "f32": "fp32", "float16": "fp16", "f16": "fp16", "q8": "int8", "q4": "int4"}


def onnx_precision(name: str) -> Precision:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in PRECISIONS:
        raise ConversionError(f"unknown ONNX quantization '{name}'; use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[key]


def rotary_inv_freq(config: dict[str, Any], head_dim: int) -> np.ndarray:
    """Rotation speed of each of the head_dim/2 pairs (float64), rope base and scaling applied."""
    from .gguf_convert import rope_parameters

    rope = rope_parameters(config)
    base = float(rope.get("rope_theta", 10000.0))
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    kind = str(rope.get("rope_type", "default")).lower()
    if kind == "linear":
        inv_freq = inv_freq / float(rope["factor"])
    elif kind == "llama3":
        factor, low, high = float(rope["factor"]), float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
        old = float(rope.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv_freq
        smooth = np.clip((old / wavelen - low) / (high - low), 0.0, 1.0)
        scaled = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = np.where(wavelen > old / low, inv_freq / factor, np.where(wavelen < old / high, inv_freq, scaled))
    elif kind not in ("default", "none"):
        raise ConversionError(f"config.json: rope scaling '{kind}' is not supported by the ONNX builder yet")
    return inv_freq


def build_decoder(ckpt: Checkpoint, out_file: Path, precision: Precision, progress: Progress | None = None,
                  taps: bool = False) -> dict[str, Any]:
    """Write the ONNX decoder for `ckpt` to out_file; return the facts a runtime needs.

    taps: a graph for calibration, run once: its outputs are each linear layer's input (no lm_head,
    no logits) and its weights are inputs, returned as info["feeds"] (nothing to serialize).
    """
    from onnx import TensorProto, helper

    spec = DECODERS.get(ckpt.architecture)
    if spec is None:
        raise UnsupportedArchitectureError(str(ckpt.path / "config.json"), ckpt.architecture, list(DECODERS))
    cfg = ckpt.config
    hidden, n_layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    head_dim = cfg.get("head_dim") or hidden // n_heads
    vocab = cfg["vocab_size"]
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    context = min(int(cfg.get("max_position_embeddings", 2048)), MAX_CONTEXT)
    if head_dim % 16:
        raise ConversionError(f"{ckpt.path}: head_dim {head_dim} is not a multiple of 16, which GroupQueryAttention needs")
    calibrated = (precision.awq_alpha is not None or precision.scale_search or precision.gptq
                  or precision.bias_correction) and not taps
    calibration = _calibrate(ckpt, out_file, precision) if calibrated else Calibration({}, {})
    awq = calibration.multipliers
    g = GraphBuilder(precision.float_type, weights_as_inputs=taps)
    ft = g.np_float
    tap_outputs: list = []

    def weight(name: str) -> np.ndarray:
        w = ckpt.tensor(name).astype(np.float32)
        if name in awq:  # (column scale, row scale): w * cols[None, :] * rows[:, None]
            cols, rows = awq[name]
            if cols is not None:
                w = w * cols if w.ndim == 1 else w * cols[None, :]
            if rows is not None:
                w = w * (rows if w.ndim == 1 else rows[:, None])
        return w

    def tap(value: str, kind: str, layer: int, width: int) -> None:
        if taps:
            name = f"tap.{layer}.{kind}"
            g.op("Identity", [value], outputs=[name], name=name)
            tap_outputs.append(helper.make_tensor_value_info(name, g.elem, ["batch", "seq", width]))

    def linear(x: str, hf_name: str, layer: int) -> str:
        return linears(x, [hf_name], [None], layer)[0]

    def linears(x: str, hf_names: list[str], biases: list[str | None], layer: int) -> list[str]:
        """Projections of one input. Those stored alike run as one MatMulNBits split afterwards:
        fewer, larger kernels and one float16 cast for all of them (per-node cost shows in decode)."""
        ws = [weight(n) for n in hf_names]
        outs: list[str] = []
        if precision.bits is None:
            for name, w in zip(hf_names, ws, strict=True):
                g.count_kind(precision.float_type)
                outs.append(g.op("MatMul", [x, g.init(name + ".T", w.T.astype(ft))])[0])
        else:
            specs = [precision.layer_spec(n, w.shape[1], layer, n_layers) for n, w in zip(hf_names, ws, strict=True)]
            i = 0
            while i < len(ws):
                j = i + 1
                while j < len(ws) and specs[j] == specs[i]:
                    j += 1
                bits, block = specs[i]
                for _ in range(i, j):
                    g.count_kind(f"int{bits}")
                w = ws[i] if j == i + 1 else np.concatenate(ws[i:j])
                name = hf_names[i] if j == i + 1 else "+".join(hf_names[i:j])
                # one input, so one calibration input for all the matrices fused here
                seen = calibration.inputs.get(hf_names[i])
                if precision.gptq and bits == 4 and seen is not None:
                    q = quantize_gptq(w, bits, block, seen, scale_dtype=precision.scale_dtype(bits))
                else:
                    weights = calibration.importance(hf_names[i]) if precision.scale_search else None
                    q = quantize_blockwise(w, bits, block, precision.symmetric(bits), weights, precision.scale_dtype(bits))
                shift = None
                if precision.bias_correction and bits == 4 and seen is not None:
                    shift = (w - dequantize(q)) @ seen.mean(axis=0)
                y = g.matmul_nbits(x, name, q, precision.accuracy_level,
                                   half_scales=precision.scale_dtype(bits) is np.float16, bias=shift)
                if j == i + 1:
                    outs.append(y)
                else:
                    sizes = g.init(f"split_{name}", np.array([m.shape[0] for m in ws[i:j]], np.int64))
                    outs += g.op("Split", [y, sizes], n_out=j - i, axis=-1)
                i = j
        return [out if bias is None else g.op("Add", [out, g.init(bias, weight(bias).astype(ft))])[0]
                for out, bias in zip(outs, biases, strict=True)]

    # ---- inputs and shared values -----------------------------------------------------------
    kv_dtype = g.elem
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])]
    for i in range(n_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", kv_dtype,
                                                        ["batch", n_kv, "past", head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", kv_dtype,
                                                         ["batch", n_kv, "present", head_dim]))
    mask_sum = g.op("ReduceSum", ["attention_mask", g.init("one_axis", np.array([1], np.int64))], keepdims=0)[0]
    seqlens = g.op("Cast", [g.op("Sub", [mask_sum, g.init("one_i64", np.array(1, np.int64))])[0]],
                   to=TensorProto.INT32)[0]
    total = g.op("Cast", [g.op("Gather", [g.op("Shape", ["attention_mask"])[0], g.init("one_idx", np.array(1, np.int64))],
                              axis=0)[0]], to=TensorProto.INT32)[0]
    cos_name, sin_name = _rotary_tables(g, rotary_inv_freq(cfg, head_dim), context)
    cache_bytes = g.weight_bytes  # rotary speeds and shapes are not weights; bits per weight leaves them out

    embed = weight("model.embed_tokens.weight")
    tied = "lm_head.weight" not in ckpt.tensors
    embed_q = None
    g.count_kind(precision.float_type if precision.bits is None else f"int{precision.head_bits or precision.bits}")
    if precision.bits is None:
        x = g.op("Gather", [g.init("model.embed_tokens.weight", embed.astype(ft)), "input_ids"], axis=0)[0]
    else:
        # Quantized embedding read by GatherBlockQuantized; when tied, the lm_head reuses the very
        # same bytes (MatMulNBits' B is the embedding matrix itself, [vocab, hidden]).
        head_bits, head_block = precision.head_spec(embed.shape[1])
        embed_q = quantize_blockwise(embed, head_bits, head_block, precision.symmetric(head_bits),
                                     scale_dtype=precision.scale_dtype(head_bits, head=True))
        x = g.gather_quantized(embed_q, "input_ids", precision.half_scale_head)
    lm_head_source = embed if tied and embed_q is None else None
    del embed

    residual = None
    pending = x  # what the next norm adds to the residual stream
    for i in range(n_layers):
        p = f"model.layers.{i}."
        ln = g.init(p + "input_layernorm.weight", weight(p + "input_layernorm.weight").astype(ft))
        if residual is None:
            normed = g.op("SimplifiedLayerNormalization", [pending, ln], axis=-1, epsilon=eps, stash_type=1)[0]
            residual = pending
        else:
            normed, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [pending, residual, ln], n_out=4,
                                          domain="com.microsoft", epsilon=eps)
        a = p + "self_attn."
        tap(normed, "qkv", i, hidden)
        q, k, v = linears(normed, [f"{a}{n}_proj.weight" for n in "qkv"],
                          [f"{a}{n}_proj.bias" if spec.qkv_bias else None for n in "qkv"], i)
        if spec.qk_norm:
            q = _head_norm(g, q, n_heads, head_dim, g.init(a + "q_norm.weight", weight(a + "q_norm.weight").astype(ft)), eps)
            k = _head_norm(g, k, n_kv, head_dim, g.init(a + "k_norm.weight", weight(a + "k_norm.weight").astype(ft)), eps)
        attn = g.op("GroupQueryAttention",
                    [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, total, cos_name, sin_name],
                    domain="com.microsoft", name=f"layer{i}/attn",
                    outputs=[f"layer{i}/attn_out", f"present.{i}.key", f"present.{i}.value"],
                    num_heads=n_heads, kv_num_heads=n_kv, do_rotary=1, rotary_interleaved=0, local_window_size=-1,
                    scale=1.0 / math.sqrt(head_dim))[0]
        tap(attn, "o", i, n_heads * head_dim)
        o = linear(attn, a + "o_proj.weight", i)
        ln2 = g.init(p + "post_attention_layernorm.weight", weight(p + "post_attention_layernorm.weight").astype(ft))
        normed, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [o, residual, ln2], n_out=4,
                                      domain="com.microsoft", epsilon=eps)
        m = p + "mlp."
        tap(normed, "gate_up", i, hidden)
        gate, up = linears(normed, [m + "gate_proj.weight", m + "up_proj.weight"], [None, None], i)
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])[0]])[0], up])[0]
        tap(act, "down", i, cfg["intermediate_size"])
        pending = linear(act, m + "down_proj.weight", i)
        if progress:
            progress("write", i + 1, n_layers + 1)

    if taps:
        g.save(out_file, "edgekit-calibration", inputs, tap_outputs)  # no weights in it: never a side file
        return {"num_layers": n_layers, "context_length": context, "feeds": g.feeds}
    final = g.init("model.norm.weight", weight("model.norm.weight").astype(ft))
    normed = g.op("SkipSimplifiedLayerNormalization", [pending, residual, final], n_out=4, domain="com.microsoft",
                  epsilon=eps)[0]
    if tied and embed_q is not None:
        b = g.op("Reshape", ["embed.q", g.init("b_shape", np.array(embed_q.packed.shape, np.int64))])[0]
        flat = g.init("flat", np.array([-1], np.int64))
        half = precision.half_scale_head and ft is np.float32  # as gather_quantized stored embed.scales
        ins = [g.half(normed) if half else normed, b, g.op("Reshape", ["embed.scales", flat])[0]]
        if embed_q.zero_points is not None:
            ins.append(g.op("Reshape", ["embed.zp", flat])[0])
        logits = g.op("MatMulNBits", ins, domain="com.microsoft", K=embed_q.k, N=embed_q.n, bits=embed_q.bits,
                      block_size=embed_q.block_size, accuracy_level=precision.accuracy_level)[0]
        if half:
            logits = g.op("Cast", [logits], to=g.elem)[0]
    else:
        g.count_kind(precision.float_type if precision.bits is None else f"int{precision.head_bits or precision.bits}")
        logits = _lm_head(g, normed, lm_head_source if tied else weight("lm_head.weight"), precision)
    if precision.float_type != "float32":
        logits = g.op("Cast", [logits], to=TensorProto.FLOAT)[0]
    g.op("Identity", [logits], outputs=["logits"], name="logits_out")

    external = g.save(out_file, "edgekit-decoder", inputs, outputs)
    if progress:
        progress("write", n_layers + 1, n_layers + 1)
    n_params = sum(int(np.prod(r.shape)) for r in ckpt.tensors.values())
    return {
        "num_layers": n_layers, "num_kv_heads": n_kv, "head_dim": head_dim, "num_heads": n_heads,
        "vocab_size": vocab, "context_length": context, "kv_dtype": precision.float_type, "kv_layout": "shared",
        "inputs": ["input_ids", "attention_mask", "past_key_values.{i}.key", "past_key_values.{i}.value"],
        "outputs": ["logits", "present.{i}.key", "present.{i}.value"],
        "kv_shape": ["batch", n_kv, "sequence", head_dim],
        "external_data": external,
        "bits_per_weight": round((g.weight_bytes - cache_bytes) * 8 / n_params, 3),
        "scheme": precision.scheme,
        "tensor_types": dict(g.kinds),
    }


# A short, varied text (prose, dialogue, code, numbers, Spanish) for the activation statistics.
CALIBRATION_TEXT = (
    "Once upon a time, in a small village by the sea, there lived an old fisherman and his wife. Every "
    "morning he went out in his boat before sunrise and came back at noon with the day's catch.\n"
    "User: What is the tallest mountain in the world?\nAssistant: Mount Everest, at about 8,849 metres.\n"
    "import os\nfor name in sorted(os.listdir('.')):\n    print(name.upper(), len(name))\n"
    "The mitochondria produce most of the energy a cell uses. Water boils at 100 degrees Celsius at sea level.\n"
    "Hola, ¿cómo estás? Me gustaría reservar una mesa para dos personas esta noche, por favor."
)


def calibration_ids(ckpt: Checkpoint) -> list[int]:
    """CALIBRATION_TEXT in the checkpoint's tokens: tokenizer.json, else tokenizer.model
    (SentencePiece), else BERT's vocab.txt (WordPiece between [CLS] and [SEP])."""
    if ckpt.has("tokenizer.json"):
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(ckpt.path / "tokenizer.json")).encode(CALIBRATION_TEXT).ids
    if ckpt.has("tokenizer.model"):
        import sentencepiece as spm

        return spm.SentencePieceProcessor(model_file=str(ckpt.path / "tokenizer.model")).EncodeAsIds(CALIBRATION_TEXT)
    if ckpt.has("vocab.txt"):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        wordpiece = Tokenizer(models.WordPiece.from_file(str(ckpt.path / "vocab.txt"), unk_token="[UNK]"))
        lower = bool((ckpt.json_file("tokenizer_config.json") or {}).get("do_lower_case", True))
        wordpiece.normalizer = normalizers.BertNormalizer(lowercase=lower)
        wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        marks = [wordpiece.token_to_id(t) for t in ("[CLS]", "[SEP]")]
        ids = wordpiece.encode(CALIBRATION_TEXT).ids
        return [marks[0], *ids, marks[1]] if None not in marks else ids
    raise ConversionError(f"{ckpt.path}: no tokenizer.json, tokenizer.model or vocab.txt to tokenize the calibration "
                          "text with; int4 scales are fitted on it (int8 and float need none)")


@dataclass
class Calibration:
    """What one run of our own graph over CALIBRATION_TEXT tells the quantizers."""

    # activation-aware scaling: tensor name -> (column, row) multipliers (empty without awq_alpha)
    multipliers: dict[str, tuple]
    # weight name -> its input on each token [tokens, K], divided by the weight's column multipliers
    # (what the scaled weight sees); matrices sharing an input share the array
    inputs: dict[str, np.ndarray]

    def importance(self, name: str) -> np.ndarray | None:
        """Mean square of each input feature of weight `name` (the scale search's weights)."""
        x = self.inputs.get(name)
        return None if x is None else (x * x).mean(axis=0)


def _calibrate(ckpt: Checkpoint, out_file: Path, precision: Precision) -> Calibration:
    """Each linear layer's input on CALIBRATION_TEXT from our own graph, and the activation-aware
    scaling multipliers taken from it."""
    cfg = ckpt.config
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    calib = out_file.with_name(".calibration.onnx")
    try:
        # fp16 weights: half the memory of an fp32 graph; the statistics need no more precision (an
        # overflow is caught)
        info = build_decoder(ckpt, calib, PRECISIONS["fp16"], taps=True)
        weights = info.pop("feeds")
        ids = calibration_ids(ckpt)[: info["context_length"]]
        feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64), **weights}
        for i in range(info["num_layers"]):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = np.zeros((1, n_kv, 0, head_dim), np.float16)
        seen = run_taps(ckpt, calib, feeds)
        del feeds, weights  # the fp16 weights go before the real build reads the checkpoint
    finally:
        calib.unlink(missing_ok=True)

    def scale(x: np.ndarray) -> np.ndarray:
        if precision.awq_alpha is None:
            return np.ones_like(x)
        s = np.power(np.maximum(x, 1e-6), precision.awq_alpha)
        return (s / np.sqrt(s.max() * s.min())).astype(np.float32)

    group = n_heads // n_kv
    out: dict[str, tuple] = {}
    for i in range(cfg["num_hidden_layers"]):
        p, a, m = f"model.layers.{i}.", f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        s_qkv, s_gu, s_down = (scale(np.abs(seen[f"tap.{i}.{k}"]).mean(axis=0)) for k in ("qkv", "gate_up", "down"))
        # o_proj's input is a mix of v rows per kv head: heads sharing a kv head share one scale
        s_kv = scale(np.abs(seen[f"tap.{i}.o"]).mean(axis=0)).reshape(n_kv, group, head_dim).mean(axis=1).reshape(-1)
        s_o = np.repeat(s_kv.reshape(n_kv, head_dim), group, axis=0).reshape(-1)
        out[p + "input_layernorm.weight"] = (1 / s_qkv, None)
        out[a + "q_proj.weight"] = (s_qkv, None)
        out[a + "k_proj.weight"] = (s_qkv, None)
        out[a + "v_proj.weight"] = (s_qkv, 1 / s_kv)
        out[a + "v_proj.bias"] = (None, 1 / s_kv)
        out[a + "o_proj.weight"] = (s_o, None)
        out[p + "post_attention_layernorm.weight"] = (1 / s_gu, None)
        out[m + "gate_proj.weight"] = (s_gu, None)
        out[m + "up_proj.weight"] = (s_gu, 1 / s_down)
        out[m + "down_proj.weight"] = (s_down, None)
    # the inputs the quantized matrices see are divided by their column multipliers
    taps = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "o", "gate_proj": "gate_up",
            "up_proj": "gate_up", "down_proj": "down"}
    inputs: dict[str, np.ndarray] = {}
    for i in range(cfg["num_hidden_layers"]):
        scaled: dict[str, np.ndarray] = {}  # tap -> its input as the scaled weights see it
        for proj, tap in taps.items():
            name = f"model.layers.{i}.{'self_attn' if proj[0] in 'qkvo' else 'mlp'}.{proj}.weight"
            if tap not in scaled:  # projections of one tap share one column multiplier
                scaled[tap] = seen.pop(f"tap.{i}.{tap}") / out[name][0]
            inputs[name] = scaled[tap]
    return Calibration(out if precision.awq_alpha is not None else {}, inputs)


def run_taps(ckpt: Checkpoint, graph: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a calibration graph once and return its outputs (first batch row, float32). No graph
    optimization: one short run does not repay it. Activations that overflow float16 stop the
    conversion: statistics of them would be garbage."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    seen = {}
    for name, value in zip(names, sess.run(names, feeds), strict=True):
        seen[name] = value[0].astype(np.float32)
        if not np.isfinite(seen[name]).all():
            raise ConversionError(f"{ckpt.path}: activations overflow float16 at {name} on the calibration text; "
                                  "use --quant int8 or fp32 for this model")
    return seen


def _rotary_tables(g: GraphBuilder, inv_freq: np.ndarray, context: int) -> tuple[str, str]:
    """GroupQueryAttention's cos/sin caches [context, head_dim/2], computed in the graph from the
    head_dim/2 speeds: for 8192 positions the stored tables would be 2 MB of the file. They depend on
    no input, so onnxruntime folds them into constants once, when the session loads."""
    positions = g.op("Range", [g.init("rope_start", np.array(0.0, np.float32)),
                               g.init("rope_limit", np.array(float(context), np.float32)),
                               g.init("rope_delta", np.array(1.0, np.float32))])[0]
    column = g.op("Unsqueeze", [positions, g.init("rope_axis", np.array([1], np.int64))])[0]
    angles = g.op("Mul", [column, g.init("rope_inv_freq", inv_freq.astype(np.float32))])[0]
    tables = []
    for fn in ("Cos", "Sin"):
        table = g.op(fn, [angles])[0]
        if g.np_float is not np.float32:
            table = g.op("Cast", [table], to=g.elem)[0]
        tables.append(g.op("Identity", [table], outputs=[fn.lower() + "_cache"], name=fn.lower() + "_cache")[0])
    return tables[0], tables[1]


def _head_norm(g: GraphBuilder, x: str, heads: int, head_dim: int, weight: str, eps: float) -> str:
    """RMSNorm over each head's vector (Qwen3's q_norm / k_norm)."""
    shape4 = g.init(f"shape_heads_{heads}", np.array([0, 0, heads, head_dim], np.int64))
    shape3 = g.init(f"shape_flat_{heads}", np.array([0, 0, heads * head_dim], np.int64))
    y = g.op("Reshape", [x, shape4])[0]
    y = g.op("SimplifiedLayerNormalization", [y, weight], axis=-1, epsilon=eps, stash_type=1)[0]
    return g.op("Reshape", [y, shape3])[0]


def _lm_head(g: GraphBuilder, x: str, head: np.ndarray, precision: Precision) -> str:
    """Output projection; quantized too, also when tied to the embedding (no fp32 copy left behind)."""
    if precision.bits is None:
        return g.op("MatMul", [x, g.init("lm_head.T", head.T.astype(g.np_float))])[0]
    bits, block = precision.head_spec(head.shape[1])
    q = quantize_blockwise(head, bits, block, precision.symmetric(bits), scale_dtype=precision.scale_dtype(bits, head=True))
    return g.matmul_nbits(x, "lm_head", q, precision.accuracy_level, half_scales=precision.half_scale_head)
