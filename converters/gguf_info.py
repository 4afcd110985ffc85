"""Real bits per weight and tensor types of a GGUF, from its tensor table ("int4" is a label, not
a size: llama.cpp's quantizer mixes types)."""

from __future__ import annotations

import math
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
        n = math.prod(dims)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        counts[qtype.name] += 1
        bits += n // block * size * 8
        params += n
    return {"tensor_types": dict(counts), "bits_per_weight": round(bits / max(params, 1), 3)}


def precision_note(tensors: Iterable[tuple[tuple[int, ...], int]], scheme: str, label: str) -> str | None:
    """Why a GGUF is well above its nominal bits per weight, in one sentence; None when it is not.

    llama.cpp's k-quants pack rows in 256-value blocks: a tensor whose rows are not a multiple of the
    block (SmolLM2's 576-wide rows) gets another type, and the mixes (Q4_K_M) keep some tensors higher.
    """
    nominal_name = scheme[:-2] if scheme.endswith(("_M", "_S", "_L")) else scheme
    try:
        nominal = gguf.GGMLQuantizationType[nominal_name]
    except KeyError:
        return None
    block, size = gguf.GGML_QUANT_SIZES[nominal]
    nominal_bits = size * 8 / block
    share: Counter[str] = Counter()
    off_grid: Counter[int] = Counter()  # row width -> weights in rows the nominal block cannot pack
    stored_as: set[str] = set()
    total = bits = 0
    for dims, kind in tensors:
        qtype = gguf.GGMLQuantizationType(kind)
        n = math.prod(dims)
        if len(dims) < 2:  # norms and biases stay F32 by design; they are few
            continue
        b, s = gguf.GGML_QUANT_SIZES[qtype]
        total, bits = total + n, bits + n // b * s * 8
        share[qtype.name] += n
        if dims[0] % block and qtype != nominal:
            off_grid[dims[0]] += n
            stored_as.add(qtype.name)
    if not total or bits / total < 1.2 * nominal_bits:
        return None
    mix = ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in share.most_common())
    why = ""
    if off_grid:
        widths = " and ".join(str(w) for w in sorted(off_grid))
        why = (f"{100 * sum(off_grid.values()) / total:.0f}% of the weights are in rows of {widths} values, "
               f"not a multiple of {nominal.name}'s {block}-value blocks, so llama.cpp stored them as "
               f"{'/'.join(sorted(stored_as))}; ")
    return (f"{label} ({scheme}) is {bits / total:.1f} bits per matrix weight here, not the "
            f"{nominal_bits:.1f} of {nominal.name}: {why}by weight {mix}")
