"""Phi-3 / Phi-3.5-mini (Phi3ForCausalLM) on the Llama graph.

What differs from Llama: q/k/v are one `qkv_proj` and gate/up one `gate_up_proj` (rows in that
order), every layer attends within a sliding window, and the 128k-context models scale rotary
with longrope (per-pair factors and a cos/sin attention factor). The graph runs the short factors,
which is what transformers uses up to the original context length, so the context is capped there.
"""

from __future__ import annotations

import re

import numpy as np

from .onnx_decoder import LlamaDecoder, register
from .rope import rope_parameters

# Llama name -> (fused Phi-3 tensor, which part of its rows)
_FUSED = re.compile(r"(model\.layers\.\d+\.)(self_attn|mlp)\.(q|k|v|gate|up)_proj\.weight")


@register("Phi3ForCausalLM")
class Phi3Decoder(LlamaDecoder):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._last: tuple[str, np.ndarray] | None = None  # q, k, v read one fused tensor in a row
        window = self.ckpt.config.get("sliding_window")
        # transformers' window of W reaches W tokens back, as GroupQueryAttention's local_window_size W
        # does in onnxruntime from 1.24 (checked against transformers' logits position by position)
        self.window = int(window) if window else -1

    def context_limit(self) -> int:
        config = self.ckpt.config
        if str(rope_parameters(config).get("rope_type", "")).lower() in ("longrope", "su"):
            return config.get("original_max_position_embeddings") or config["max_position_embeddings"]
        return super().context_limit()

    def tensor(self, name: str) -> np.ndarray:
        m = _FUSED.fullmatch(name)
        if m is None:
            return super().tensor(name)
        prefix, block, part = m.groups()
        fused = prefix + block + (".qkv_proj.weight" if block == "self_attn" else ".gate_up_proj.weight")
        if self._last is None or self._last[0] != fused:
            self._last = (fused, self.ckpt.tensor(fused))
        rows = self._last[1]
        q, kv, inter = self.n_heads * self.head_dim, self.n_kv * self.head_dim, rows.shape[0] // 2
        start, size = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv),
                       "gate": (0, inter), "up": (inter, inter)}[part]
        return rows[start:start + size]

    def has_tensor(self, name: str) -> bool:
        return _FUSED.fullmatch(name) is not None or super().has_tensor(name)

    def attention_window(self, layer: int) -> int:
        return self.window
