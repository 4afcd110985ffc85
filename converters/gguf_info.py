"""Real bits per weight and tensor types of a GGUF, from its tensor table ("int4" is a label, not
a size: llama.cpp's quantizer mixes types)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import gguf


def gguf_stats(tensors: Iterable[tuple[tuple[int, ...], int]]) -> dict[str, Any]:
    """tensors: (dims, ggml type) of each tensor, as a GGUF's tensor table lists them."""
    counts: Counter[str] = Counter()
    bits = params = 0
    for dims, kind in tensors:
        qtype = gguf.GGMLQuantizationType(kind)
        n = 1
        for d in dims:
            n *= d
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        counts[qtype.name] += 1
        bits += n // block * size * 8
        params += n
    return {"tensor_types": dict(counts), "bits_per_weight": round(bits / max(params, 1), 3)}
