"""Fast read of a GGUF file's tensor table (names, shapes, types), skipping the metadata values.

gguf.GGUFReader builds numpy views of every metadata item; on a 49k-token vocabulary that costs
seconds. The conversion only needs the tensor table to report real bits per weight.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import gguf

# GGUF metadata value type -> fixed byte size (8 = string, 9 = array: variable)
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def tensor_table(path: Path) -> list[tuple[str, tuple[int, ...], gguf.GGMLQuantizationType]]:
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        magic, _version, n_tensors, n_kv = struct.unpack_from("<IIQQ", buf, 0)
        if magic != gguf.GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file")
        pos = 24

        def skip_string(p: int) -> int:
            (n,) = struct.unpack_from("<Q", buf, p)
            return p + 8 + n

        def skip_value(p: int, vtype: int) -> int:
            if vtype in _FIXED:
                return p + _FIXED[vtype]
            if vtype == 8:
                return skip_string(p)
            item_type, count = struct.unpack_from("<IQ", buf, p)
            p += 12
            if item_type in _FIXED:
                return p + count * _FIXED[item_type]
            for _ in range(count):
                p = skip_value(p, item_type)
            return p

        for _ in range(n_kv):
            pos = skip_string(pos)
            (vtype,) = struct.unpack_from("<I", buf, pos)
            pos = skip_value(pos + 4, vtype)
        table = []
        for _ in range(n_tensors):
            (n,) = struct.unpack_from("<Q", buf, pos)
            name = bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8")
            pos += 8 + n
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            pos += 4 + 8 * n_dims
            qtype, _offset = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            table.append((name, tuple(dims), gguf.GGMLQuantizationType(qtype)))
        return table


def gguf_stats(path: Path) -> dict[str, Any]:
    """Tensor types and real bits per weight ("int4" is a label, not a size)."""
    counts: Counter[str] = Counter()
    bits = params = 0
    for _name, dims, qtype in tensor_table(path):
        n = 1
        for d in dims:
            n *= d
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        counts[qtype.name] += 1
        bits += n // block * size * 8
        params += n
    return {"tensor_types": dict(counts), "bits_per_weight": round(bits / max(params, 1), 3)}
