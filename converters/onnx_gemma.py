"""Gemma 2 and Gemma 3 text models (Gemma2ForCausalLM, Gemma3ForCausalLM) on the Llama graph.

What differs from Llama: token vectors are scaled by sqrt(hidden); RMSNorms scale by (1 + w);
each block's attention and MLP outputs are normalized again before they join the residual stream
(post_attention / post_feedforward norms, the MLP reading pre_feedforward_layernorm); the MLP's
activation is GELU with the tanh approximation; attention scales by query_pre_attn_scalar^-0.5;
sliding-window layers alternate with global ones. Gemma 2 soft-caps attention scores and logits
(c * tanh(x / c)); Gemma 3 normalizes q and k per head and gives its sliding layers a rope base of
their own (10k against 1M).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .onnx_decoder import LlamaDecoder, _rotary_tables, register
from .rope import base_frequencies, local_rope_theta


class _Gemma(LlamaDecoder):
    mlp_norm = "pre_feedforward_layernorm"
    # Gemma's residual stream grows past float16's range in real checkpoints (reported for Gemma 3 at
    # ~8e5): calibrate in fp32
    calibration_precision = "fp32"

    def tensor(self, name: str) -> np.ndarray:
        w = super().tensor(name)
        return w.astype(np.float32) + 1.0 if name.endswith("norm.weight") else w  # RMSNorm scales by 1 + w

    def sliding(self, layer: int) -> bool:
        types = self.ckpt.config.get("layer_types")
        if isinstance(types, list) and len(types) == self.n_layers:
            return types[layer] == "sliding_attention"
        return self.default_sliding(layer)

    def default_sliding(self, layer: int) -> bool:
        """Without `layer_types` in the config: Gemma 2's local, global, local ... pattern."""
        return layer % 2 == 0

    def attention_window(self, layer: int) -> int:
        window = self.ckpt.config.get("sliding_window")
        return int(window) if window and self.sliding(layer) else -1

    def attention_attributes(self, layer: int) -> dict[str, Any]:
        scalar = self.ckpt.config.get("query_pre_attn_scalar") or self.head_dim
        out: dict[str, Any] = {"scale": float(scalar) ** -0.5}
        if cap := self.ckpt.config.get("attn_logit_softcapping"):
            out["softcap"] = float(cap)
        return out

    def activation(self, gate: str) -> str:
        return self.g.op("FastGelu", [gate], domain="com.microsoft")[0]  # GELU, tanh approximation

    def scale_embedding(self, x: str) -> str:
        scale = np.array(math.sqrt(self.hidden), dtype=self.g.np_float)  # in the activations' type, as in HF
        return self.g.op("Mul", [x, self.g.init("embed_scale", scale)])[0]

    def _norm(self, x: str, name: str) -> str:
        return self.g.op("SimplifiedLayerNormalization", [x, self.norm_weight(name)], axis=-1,
                         epsilon=self.eps, stash_type=1)[0]

    def after_attention(self, layer: int, out: str) -> str:
        return self._norm(out, f"model.layers.{layer}.post_attention_layernorm.weight")

    def after_mlp(self, layer: int, out: str) -> str:
        return self._norm(out, f"model.layers.{layer}.post_feedforward_layernorm.weight")

    def final_logits(self, logits: str) -> str:
        cap = self.ckpt.config.get("final_logit_softcapping")
        if not cap:
            return logits
        g = self.g
        c = g.init("final_softcap", np.array(cap, dtype=g.np_float))
        return g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, c])[0]])[0], c])[0]


@register("Gemma2ForCausalLM")
class Gemma2Decoder(_Gemma):
    pass


@register("Gemma3ForCausalLM")
class Gemma3Decoder(_Gemma):
    qk_norm = True
    float16_ok = False  # fp16 graphs compute inf: refused, fp32/int8/int4 run in float32

    def default_sliding(self, layer: int) -> bool:
        pattern = (self.ckpt.config.get("sliding_window_pattern")
                   or self.ckpt.config.get("_sliding_window_pattern") or 6)
        return (layer + 1) % pattern != 0  # five local layers, then a global one

    def extra_rotary_caches(self, g) -> None:
        theta = local_rope_theta(self.ckpt.config) or 10000.0
        self.local_cos_sin = _rotary_tables(g, base_frequencies(float(theta), self.head_dim), self.context,
                                            prefix="local_")

    def rotary_cache(self, layer: int) -> tuple[str, str]:
        return self.local_cos_sin if self.sliding(layer) else self.cos_sin
