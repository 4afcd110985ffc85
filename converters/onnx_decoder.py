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

import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgekit.errors import ConversionError, UnsupportedArchitectureError
from edgekit.progress import Progress

from .onnx_calibration import Calibration, calibrate
from .onnx_graph import GraphBuilder
from .onnx_quant import dequantize, quantize_blockwise, quantize_gptq
from .onnx_recipe import Precision
from .rope import attention_factor, rotary_inv_freq
from .source import Checkpoint

MAX_CONTEXT = 32768  # rotary caches beyond this cost memory few edge users want

# HF architecture -> the family class that builds it; filled by @register
DECODERS: dict[str, type[LlamaDecoder]] = {}
# Family modules beyond this one: importing one runs its @register (one line per new family file)
FAMILY_MODULES = ("onnx_phi3", "onnx_gemma")


def register(*architectures: str) -> Callable[[type[LlamaDecoder]], type[LlamaDecoder]]:
    """Class decorator: the family builds these Hugging Face architectures."""

    def add(cls: type[LlamaDecoder]) -> type[LlamaDecoder]:
        for arch in architectures:
            DECODERS[arch] = cls
        cls.architectures = (*cls.__dict__.get("architectures", ()), *architectures)  # not the parent's
        return cls

    return add


def family_for(ckpt: Checkpoint) -> type[LlamaDecoder]:
    cls = DECODERS.get(ckpt.architecture)
    if cls is None:
        raise UnsupportedArchitectureError(str(ckpt.path / "config.json"), ckpt.architecture, list(DECODERS))
    return cls


def build_decoder(ckpt: Checkpoint, out_file: Path, precision: Precision, progress: Progress | None = None,
                  taps: bool = False) -> dict[str, Any]:
    """Write the ONNX decoder for `ckpt` to out_file; return the facts a runtime needs.

    taps: a graph for calibration, run once: its outputs are each linear layer's input (no lm_head,
    no logits) and its weights are inputs, returned as info["feeds"] (nothing to serialize).
    """
    return family_for(ckpt)(ckpt, precision, taps=taps, progress=progress).build(out_file)


class LlamaDecoder:
    """The Llama-style decoder graph: RMSNorm, grouped-query attention with rotary, gated SiLU MLP.

    Families subclass it and override only what differs: class attributes for flags, `tensor` for
    checkpoints that store weights under other names (fused projections), and the graph pieces
    (`attention_inputs`, `activation`). Weights are always asked for by their Llama names
    (model.layers.{i}.self_attn.q_proj.weight ...), which calibration uses too.
    """

    architectures: ClassVar[tuple[str, ...]] = ()
    qkv_bias: ClassVar[bool] = False  # biases on q/k/v (Qwen2)
    qk_norm: ClassVar[bool] = False  # RMSNorm of q and k per head before rotary (Qwen3)
    mlp_norm: ClassVar[str] = "post_attention_layernorm"  # the norm before the MLP
    # the calibration graph's precision: fp16 halves its memory; families whose activations exceed
    # float16's range calibrate in fp32
    calibration_precision: ClassVar[str] = "fp16"
    float16_ok: ClassVar[bool] = True  # whether an fp16 graph of the family stays within float16's range

    def __init__(self, ckpt: Checkpoint, precision: Precision, taps: bool = False,
                 progress: Progress | None = None) -> None:
        cfg = ckpt.config
        self.ckpt, self.precision, self.taps, self.progress = ckpt, precision, taps, progress
        self.hidden, self.n_layers = cfg["hidden_size"], cfg["num_hidden_layers"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = cfg.get("head_dim") or self.hidden // self.n_heads
        self.vocab = cfg["vocab_size"]
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        self.context = min(int(self.context_limit()), MAX_CONTEXT)
        if self.head_dim % 16:
            raise ConversionError(f"{ckpt.path}: head_dim {self.head_dim} is not a multiple of 16, which "
                                  "GroupQueryAttention needs")
        if precision.float_type == "float16" and not self.float16_ok and not taps:
            raise ConversionError(f"{ckpt.path}: {ckpt.architecture}'s activations exceed float16's range, "
                                  "so an fp16 graph would compute inf/NaN; use --quant fp32, int8 or int4")
        scaling = cfg.get("rope_scaling") or {}
        share = cfg.get("partial_rotary_factor") or scaling.get("partial_rotary_factor")
        if share not in (None, 1, 1.0):
            raise ConversionError(f"{ckpt.path / 'config.json'}: partial_rotary_factor {share} (rotary on "
                                  "part of each head, as in Phi-4-mini) is not built by edgekit's ONNX graph "
                                  "yet; convert to GGUF, or use exporter='optimum'")
        self.calibration = Calibration({}, {})

    # ---- what a family may override ------------------------------------------------------------
    def context_limit(self) -> int:
        return self.ckpt.config.get("max_position_embeddings", 2048)

    def tensor(self, name: str) -> np.ndarray:
        """The checkpoint's weight under its Llama name."""
        return self.ckpt.tensor(name)

    def has_tensor(self, name: str) -> bool:
        return name in self.ckpt.tensors

    def activation(self, gate: str) -> str:
        """The MLP's gate activation: SiLU."""
        g = self.g
        return g.op("Mul", [gate, g.op("Sigmoid", [gate])[0]])[0]

    def rotary_speeds(self) -> np.ndarray:
        return rotary_inv_freq(self.ckpt.config, self.head_dim)

    def extra_rotary_caches(self, g: GraphBuilder) -> None:
        """Caches beyond the global one (built before the layers, so node order stays stable)."""

    def attention_window(self, layer: int) -> int:
        """GroupQueryAttention's local_window_size for a layer: keys before the query it may see
        (-1: all of them). Mistral v0.1's sliding_window; Qwen2 states one but turns it off."""
        config = self.ckpt.config
        window = config.get("sliding_window")
        return int(window) if window and config.get("use_sliding_window", True) else -1

    def attention_attributes(self, layer: int) -> dict[str, Any]:
        """GroupQueryAttention's scale and any extra attributes (e.g. softcap)."""
        return {"scale": 1.0 / math.sqrt(self.head_dim)}

    def rotary_cache(self, layer: int) -> tuple[str, str]:
        """The (cos, sin) caches a layer rotates with."""
        return self.cos_sin

    def scale_embedding(self, x: str) -> str:
        """The token vectors as the first layer takes them."""
        return x

    def after_attention(self, layer: int, out: str) -> str:
        """The attention block's output before it joins the residual stream."""
        return out

    def after_mlp(self, layer: int, out: str) -> str:
        """The MLP's output before it joins the residual stream."""
        return out

    def final_logits(self, logits: str) -> str:
        return logits

    # ---- the graph --------------------------------------------------------------------------------
    def weight(self, name: str) -> np.ndarray:
        w = self.tensor(name).astype(np.float32)
        awq = self.calibration.multipliers
        if name in awq:  # (column scale, row scale): w * cols[None, :] * rows[:, None]
            cols, rows = awq[name]
            if cols is not None:
                w = w * cols if w.ndim == 1 else w * cols[None, :]
            if rows is not None:
                w = w * (rows if w.ndim == 1 else rows[:, None])
        return w

    def tap(self, value: str, kind: str, layer: int, width: int) -> None:
        if self.taps:
            from onnx import helper

            name = f"tap.{layer}.{kind}"
            self.g.op("Identity", [value], outputs=[name], name=name)
            self.tap_outputs.append(helper.make_tensor_value_info(name, self.g.elem, ["batch", "seq", width]))

    def linear(self, x: str, hf_name: str, layer: int) -> str:
        return self.linears(x, [hf_name], [None], layer)[0]

    def linears(self, x: str, hf_names: list[str], biases: list[str | None], layer: int) -> list[str]:
        """Projections of one input. Those stored alike run as one MatMulNBits split afterwards:
        fewer, larger kernels and one float16 cast for all of them (per-node cost shows in decode)."""
        g, precision, calibration = self.g, self.precision, self.calibration
        ft = g.np_float
        ws = [self.weight(n) for n in hf_names]
        outs: list[str] = []
        if precision.bits is None:
            for name, w in zip(hf_names, ws, strict=True):
                g.count_kind(precision.float_type)
                outs.append(g.op("MatMul", [x, g.init(name + ".T", w.T.astype(ft))])[0])
        else:
            specs = [precision.layer_spec(n, w.shape[1], layer, self.n_layers)
                     for n, w in zip(hf_names, ws, strict=True)]
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
                    q = quantize_blockwise(w, bits, block, precision.symmetric(bits), weights,
                                           precision.scale_dtype(bits))
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
        return [out if bias is None else g.op("Add", [out, g.init(bias, self.weight(bias).astype(ft))])[0]
                for out, bias in zip(outs, biases, strict=True)]

    def norm_weight(self, name: str) -> str:
        return self.g.init(name, self.weight(name).astype(self.g.np_float))

    def build(self, out_file: Path) -> dict[str, Any]:
        from onnx import TensorProto, helper

        precision = self.precision
        calibrated = (precision.awq_alpha is not None or precision.scale_search or precision.gptq
                      or precision.bias_correction) and not self.taps
        if calibrated:
            self.calibration = calibrate(self, out_file, precision)
        g = self.g = GraphBuilder(precision.float_type, weights_as_inputs=self.taps)
        self.tap_outputs: list = []
        ft = g.np_float
        n_layers, n_heads, n_kv, head_dim, eps = (self.n_layers, self.n_heads, self.n_kv,
                                                  self.head_dim, self.eps)

        # ---- inputs and shared values -----------------------------------------------------------
        kv_dtype = g.elem
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "kept", self.vocab])]
        for i in range(n_layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", kv_dtype,
                                                            ["batch", n_kv, "past", head_dim]))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", kv_dtype,
                                                             ["batch", n_kv, "present", head_dim]))
        mask_sum = g.op("ReduceSum", ["attention_mask", g.init("one_axis", np.array([1], np.int64))],
                        keepdims=0)[0]
        seqlens = g.op("Cast", [g.op("Sub", [mask_sum, g.init("one_i64", np.array(1, np.int64))])[0]],
                       to=TensorProto.INT32)[0]
        width = g.op("Gather", [g.op("Shape", ["attention_mask"])[0],
                                g.init("one_idx", np.array(1, np.int64))],
                     axis=0)[0]
        total = g.op("Cast", [width], to=TensorProto.INT32)[0]
        self.cos_sin = _rotary_tables(g, self.rotary_speeds(), self.context,
                                      attention_factor(self.ckpt.config))
        self.extra_rotary_caches(g)
        # rotary speeds and shapes are not weights; bits per weight leaves them out
        cache_bytes = g.weight_bytes

        embed = self.weight("model.embed_tokens.weight")
        tied = not self.has_tensor("lm_head.weight")
        embed_q = None
        g.count_kind(precision.float_type if precision.bits is None
                     else f"int{precision.head_bits or precision.bits}")
        if precision.bits is None:
            x = g.op("Gather", [g.init("model.embed_tokens.weight", embed.astype(ft)), "input_ids"],
                     axis=0)[0]
        else:
            # Quantized embedding read by GatherBlockQuantized; when tied, the lm_head reuses the very
            # same bytes (MatMulNBits' B is the embedding matrix itself, [vocab, hidden]).
            head_bits, head_block = precision.head_spec(embed.shape[1])
            embed_q = quantize_blockwise(embed, head_bits, head_block, precision.symmetric(head_bits),
                                         scale_dtype=precision.scale_dtype(head_bits, head=True))
            x = g.gather_quantized(embed_q, "input_ids", precision.half_scale_head)
        x = self.scale_embedding(x)
        lm_head_source = embed if tied and embed_q is None else None
        del embed

        residual = None
        pending = x  # what the next norm adds to the residual stream
        for i in range(n_layers):
            p = f"model.layers.{i}."
            ln = self.norm_weight(p + "input_layernorm.weight")
            if residual is None:
                normed = g.op("SimplifiedLayerNormalization", [pending, ln], axis=-1, epsilon=eps,
                              stash_type=1)[0]
                residual = pending
            else:
                normed, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [pending, residual, ln],
                                              n_out=4, domain="com.microsoft", epsilon=eps)
            a = p + "self_attn."
            self.tap(normed, "qkv", i, self.hidden)
            q, k, v = self.linears(normed, [f"{a}{n}_proj.weight" for n in "qkv"],
                                   [f"{a}{n}_proj.bias" if self.qkv_bias else None for n in "qkv"], i)
            if self.qk_norm:
                q = _head_norm(g, q, n_heads, head_dim, self.norm_weight(a + "q_norm.weight"), eps)
                k = _head_norm(g, k, n_kv, head_dim, self.norm_weight(a + "k_norm.weight"), eps)
            cos_name, sin_name = self.rotary_cache(i)
            attn = g.op("GroupQueryAttention",
                        [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, total,
                         cos_name, sin_name],
                        domain="com.microsoft", name=f"layer{i}/attn",
                        outputs=[f"layer{i}/attn_out", f"present.{i}.key", f"present.{i}.value"],
                        num_heads=n_heads, kv_num_heads=n_kv, do_rotary=1, rotary_interleaved=0,
                        local_window_size=_window(self.attention_window(i), self.context),
                        **self.attention_attributes(i))[0]
            self.tap(attn, "o", i, n_heads * head_dim)
            o = self.after_attention(i, self.linear(attn, a + "o_proj.weight", i))
            ln2 = self.norm_weight(p + self.mlp_norm + ".weight")
            normed, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [o, residual, ln2], n_out=4,
                                          domain="com.microsoft", epsilon=eps)
            m = p + "mlp."
            self.tap(normed, "gate_up", i, self.hidden)
            gate, up = self.linears(normed, [m + "gate_proj.weight", m + "up_proj.weight"], [None, None], i)
            act = g.op("Mul", [self.activation(gate), up])[0]
            self.tap(act, "down", i, self.ckpt.config["intermediate_size"])
            pending = self.after_mlp(i, self.linear(act, m + "down_proj.weight", i))
            if self.progress:
                self.progress("write", i + 1, n_layers + 1)

        if self.taps:
            g.save(out_file, "edgekit-calibration", inputs, self.tap_outputs)  # no weights: never a side file
            return {"num_layers": n_layers, "context_length": self.context, "feeds": g.feeds,
                    "kv_type": g.np_float}
        final = self.norm_weight("model.norm.weight")
        normed = g.op("SkipSimplifiedLayerNormalization", [pending, residual, final], n_out=4,
                      domain="com.microsoft", epsilon=eps)[0]
        # Only the last `logits_to_keep` rows reach the lm_head: generating needs the last one (the
        # head is a fifth of a prompt's compute, its [seq, vocab] output 200 MB at 1,024 tokens),
        # scoring keeps them all.
        inputs.append(helper.make_tensor_value_info("logits_to_keep", TensorProto.INT64, [1]))
        normed = g.op("Slice", [normed, g.op("Neg", ["logits_to_keep"])[0],
                                g.init("rows_end", np.array([np.iinfo(np.int64).max], np.int64)),
                                g.init("rows_axis", np.array([1], np.int64))])[0]
        if tied and embed_q is not None:
            b = g.op("Reshape", ["embed.q", g.init("b_shape", np.array(embed_q.packed.shape, np.int64))])[0]
            flat = g.init("flat", np.array([-1], np.int64))
            half = precision.half_scale_head and ft is np.float32  # as gather_quantized stored embed.scales
            ins = [g.half(normed) if half else normed, b, g.op("Reshape", ["embed.scales", flat])[0]]
            if embed_q.zero_points is not None:
                ins.append(g.op("Reshape", ["embed.zp", flat])[0])
            logits = g.op("MatMulNBits", ins, domain="com.microsoft", K=embed_q.k, N=embed_q.n,
                          bits=embed_q.bits, block_size=embed_q.block_size,
                          accuracy_level=precision.accuracy_level)[0]
            if half:
                logits = g.op("Cast", [logits], to=g.elem)[0]
        else:
            g.count_kind(precision.float_type if precision.bits is None
                         else f"int{precision.head_bits or precision.bits}")
            logits = _lm_head(g, normed, lm_head_source if tied else self.weight("lm_head.weight"), precision)
        logits = self.final_logits(logits)
        if precision.float_type != "float32":
            logits = g.op("Cast", [logits], to=TensorProto.FLOAT)[0]
        g.op("Identity", [logits], outputs=["logits"], name="logits_out")

        external = g.save(out_file, "edgekit-decoder", inputs, outputs)
        if self.progress:
            self.progress("write", n_layers + 1, n_layers + 1)
        n_params = sum(int(np.prod(r.shape)) for r in self.ckpt.tensors.values())
        return {
            "num_layers": n_layers, "num_kv_heads": n_kv, "head_dim": head_dim, "num_heads": n_heads,
            "vocab_size": self.vocab, "context_length": self.context, "kv_dtype": precision.float_type,
            "kv_layout": "shared",
            "inputs": ["input_ids", "attention_mask", "past_key_values.{i}.key", "past_key_values.{i}.value",
                       "logits_to_keep"],
            "outputs": ["logits", "present.{i}.key", "present.{i}.value"],
            "kv_shape": ["batch", n_kv, "sequence", head_dim],
            "external_data": external,
            "bits_per_weight": round((g.weight_bytes - cache_bytes) * 8 / n_params, 3),
            "scheme": precision.scheme,
            "tensor_types": dict(g.kinds),
        }


# SmolLM/SmolLM2, TinyLlama, Llama-2/3.x; Mistral 7B-style students share the graph
register("LlamaForCausalLM", "MistralForCausalLM")(LlamaDecoder)


@register("Qwen2ForCausalLM")
class Qwen2Decoder(LlamaDecoder):
    """Qwen2, Qwen2.5: biases on q/k/v."""

    qkv_bias = True


@register("Qwen3ForCausalLM")
class Qwen3Decoder(LlamaDecoder):
    """Qwen3: q and k normalized per head before rotary."""

    qk_norm = True




def _window(window: int, context: int) -> int:
    """A window as wide as the context is no window (Phi-3.5 states 262144 for a 4096 context)."""
    return -1 if window < 0 or window >= context else window


def _rotary_tables(g: GraphBuilder, inv_freq: np.ndarray, context: int, factor: float = 1.0,
                   prefix: str = "") -> tuple[str, str]:
    """GroupQueryAttention's cos/sin caches [context, head_dim/2], computed in the graph from the
    head_dim/2 speeds: for 8192 positions the stored tables would be 2 MB of the file. They depend on
    no input, so onnxruntime folds them into constants once, when the session loads. factor scales
    both tables (longrope's attention factor)."""
    positions = g.op("Range", [g.init("rope_start", np.array(0.0, np.float32)),
                               g.init("rope_limit", np.array(float(context), np.float32)),
                               g.init("rope_delta", np.array(1.0, np.float32))])[0]
    column = g.op("Unsqueeze", [positions, g.init("rope_axis", np.array([1], np.int64))])[0]
    angles = g.op("Mul", [column, g.init(prefix + "rope_inv_freq", inv_freq.astype(np.float32))])[0]
    tables = []
    for fn in ("Cos", "Sin"):
        table = g.op(fn, [angles])[0]
        if factor != 1.0:
            table = g.op("Mul", [table, g.init("rope_attention_factor", np.array(factor, np.float32))])[0]
        if g.np_float is not np.float32:
            table = g.op("Cast", [table], to=g.elem)[0]
        name = prefix + fn.lower() + "_cache"
        tables.append(g.op("Identity", [table], outputs=[name], name=name)[0])
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
    q = quantize_blockwise(head, bits, block, precision.symmetric(bits),
                           scale_dtype=precision.scale_dtype(bits, head=True))
    return g.matmul_nbits(x, "lm_head", q, precision.accuracy_level, half_scales=precision.half_scale_head)


# the family files register themselves (they import this module, so this comes last)
for _module in FAMILY_MODULES:
    importlib.import_module(f"{__package__}.{_module}")
