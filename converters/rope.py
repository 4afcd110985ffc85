"""Rotary position embedding settings, read once for both formats.

Configs spell rope in two ways: transformers 5's `rope_parameters` (per layer type for Gemma 3)
and the older top-level `rope_theta` + `rope_scaling`. `rope_parameters` merges both. The
frequencies follow the model's scaling kind: none, linear, Llama 3's frequency-dependent
scaling (stored as llama.cpp's rope_freqs tensor in GGUF, applied to the speeds in ONNX) and
Phi-3's longrope (per-pair factors and an attention scale).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgekit.errors import ConversionError


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """Rope settings from either transformers 5's `rope_parameters` or the older top-level fields."""
    params = dict(config.get("rope_parameters") or {})
    params = dict(params.get("full_attention", params))  # per-layer-type form (gemma3)
    scaling = config.get("rope_scaling") or {}
    for key, value in scaling.items():
        params.setdefault(key, value)
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    if config.get("rope_theta") is not None:
        params.setdefault("rope_theta", config["rope_theta"])
    return params


def local_rope_theta(config: dict[str, Any]) -> float | None:
    """Rope base of sliding-window layers (Gemma 3: 10k locally, 1M globally)."""
    params = config.get("rope_parameters") or {}
    sliding = params.get("sliding_attention") if isinstance(params, dict) else None
    if isinstance(sliding, dict) and sliding.get("rope_theta") is not None:
        return sliding["rope_theta"]
    return config.get("rope_local_base_freq")


def base_frequencies(base: float, rotary_dim: int, dtype: type = np.float64) -> np.ndarray:
    """Rotation speed of each of the rotary_dim/2 pairs: base^(-2i/d)."""
    return 1.0 / (base ** (np.arange(0, rotary_dim, 2, dtype=dtype) / rotary_dim))


def llama3_divisors(rope: dict[str, Any], inv_freq: np.ndarray) -> np.ndarray:
    """Llama 3.1+ scaling as one divisor per pair (llama.cpp's rope_freqs): long wavelengths are
    slowed by `factor`, short ones kept, the band between blended. Computed in inv_freq's dtype."""
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, blended)).astype(
        inv_freq.dtype)


def rotary_inv_freq(config: dict[str, Any], head_dim: int) -> np.ndarray:
    """The speeds a graph rotates with (float64), base and scaling applied."""
    rope = rope_parameters(config)
    inv_freq = base_frequencies(float(rope.get("rope_theta", 10000.0)), head_dim)
    kind = str(rope.get("rope_type", "default")).lower()
    if kind == "linear":
        return inv_freq / float(rope["factor"])
    if kind == "llama3":
        return inv_freq / llama3_divisors(rope, inv_freq)
    if kind in ("longrope", "su"):  # "su": longrope's older name in Phi-3 configs
        return inv_freq / np.asarray(rope["short_factor"], dtype=np.float64)
    if kind not in ("default", "none"):
        raise ConversionError(f"config.json: rope scaling '{kind}' is not supported by the ONNX builder yet")
    return inv_freq


def attention_factor(config: dict[str, Any]) -> float:
    """Scale on cos/sin that longrope applies when the context is extended (1.0 otherwise)."""
    rope = rope_parameters(config)
    if str(rope.get("rope_type", "")).lower() not in ("longrope", "su"):
        return 1.0
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    original = config.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
    factor = (config.get("max_position_embeddings") or original) / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def longrope_attention_factor(config: dict[str, Any]) -> float | None:
    """llama.cpp's rope.scaling.attn_factor for a longrope config with factor lists, else None."""
    rope = rope_parameters(config)
    if str(rope.get("rope_type", "")).lower() not in ("longrope", "su") or not rope.get("long_factor"):
        return None
    original = config.get("original_max_position_embeddings") or rope["original_max_position_embeddings"]
    scale = config["max_position_embeddings"] / original
    return math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0
