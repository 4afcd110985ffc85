"""Quantization names: what a user may ask for, and how each GGUF type is produced.

"int8" is Q8_0 and "int4" is Q4_K_M (llama.cpp's usual 4-bit default, which mixes in higher-bit
tensors where they matter). Any llama.cpp type that needs no importance matrix can be named too.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from edgekit.errors import ConversionError

FT = gguf.LlamaFileType
QT = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class GGUFQuant:
    name: str  # llama.cpp's name, e.g. "Q4_K_M"
    label: str  # family word: fp32, fp16, bf16, int8, int5, int4 ...
    file_type: gguf.LlamaFileType
    direct: QT | None  # written by us with this tensor type; None = llama.cpp's quantizer


_TABLE = [
    GGUFQuant("F32", "fp32", FT.ALL_F32, QT.F32),
    GGUFQuant("F16", "fp16", FT.MOSTLY_F16, QT.F16),
    GGUFQuant("BF16", "bf16", FT.MOSTLY_BF16, QT.BF16),
    GGUFQuant("Q8_0", "int8", FT.MOSTLY_Q8_0, QT.Q8_0),
    GGUFQuant("Q6_K", "int6", FT.MOSTLY_Q6_K, None),
    GGUFQuant("Q5_K_M", "int5", FT.MOSTLY_Q5_K_M, None),
    GGUFQuant("Q5_K_S", "int5", FT.MOSTLY_Q5_K_S, None),
    GGUFQuant("Q5_0", "int5", FT.MOSTLY_Q5_0, None),
    GGUFQuant("Q5_1", "int5", FT.MOSTLY_Q5_1, None),
    GGUFQuant("Q4_K_M", "int4", FT.MOSTLY_Q4_K_M, None),
    GGUFQuant("Q4_K_S", "int4", FT.MOSTLY_Q4_K_S, None),
    GGUFQuant("Q4_0", "int4", FT.MOSTLY_Q4_0, None),
    GGUFQuant("Q4_1", "int4", FT.MOSTLY_Q4_1, None),
    GGUFQuant("IQ4_NL", "int4", FT.MOSTLY_IQ4_NL, None),
    GGUFQuant("IQ4_XS", "int4", FT.MOSTLY_IQ4_XS, None),
    GGUFQuant("Q3_K_L", "int3", FT.MOSTLY_Q3_K_L, None),
    GGUFQuant("Q3_K_M", "int3", FT.MOSTLY_Q3_K_M, None),
    GGUFQuant("Q3_K_S", "int3", FT.MOSTLY_Q3_K_S, None),
    GGUFQuant("Q2_K", "int2", FT.MOSTLY_Q2_K, None),
]
GGUF_QUANTS = {q.name: q for q in _TABLE}
ALIASES = {"fp32": "F32", "float32": "F32", "fp16": "F16", "float16": "F16", "int8": "Q8_0", "int4": "Q4_K_M"}


def gguf_quant(name: str) -> GGUFQuant:
    key = ALIASES.get(name.lower(), name.upper())
    if key not in GGUF_QUANTS:
        raise ConversionError(
            f"unknown quantization '{name}'; use one of {', '.join(ALIASES)} or a llama.cpp type: "
            f"{', '.join(GGUF_QUANTS)}"
        )
    return GGUF_QUANTS[key]
