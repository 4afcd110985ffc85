"""Lazy, validating safetensors reader.

We parse the header ourselves instead of using safetensors' numpy loader because (1) numpy has no
bfloat16, (2) we want every truncation or garbling reported as a typed error naming the file and
tensor before native code sees the bytes, and (3) a memmap view keeps peak memory at one tensor.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import CheckpointFormatError

# safetensors dtype -> (numpy storage dtype, bytes per element)
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # stored as raw 16-bit words, widened to float32 on load
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorRef:
    """One tensor inside a safetensors file, read only when asked."""

    file: Path
    name: str
    dtype: str  # safetensors dtype name, e.g. "BF16"
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int

    def raw(self) -> np.ndarray:
        storage = _DTYPES[self.dtype]
        count = self.nbytes // storage.itemsize
        mm = np.memmap(self.file, dtype=storage, mode="r", offset=self.offset, shape=(count,))
        return mm.reshape(self.shape)

    def load(self) -> np.ndarray:
        """Return the tensor as a numpy array: float32 for bf16/f64, the stored type otherwise.

        Float weights must be finite: a NaN or inf would convert silently and generate garbage.
        """
        data = self.raw()
        if self.dtype == "BF16":
            out = (data.astype(np.uint32) << 16).view(np.float32)
        elif self.dtype == "F64":
            with np.errstate(over="ignore"):
                out = data.astype(np.float32)
        else:
            out = np.array(data)  # copy out of the memmap so the file can close
        # a float64 sum is non-finite exactly when some value is (no overflow for real weights), and
        # needs no tensor-sized temporary, unlike isfinite().all()
        if out.dtype.kind == "f" and not np.isfinite(out.sum(dtype=np.float64)):
            bad = int(out.size - np.count_nonzero(np.isfinite(out)))
            raise CheckpointFormatError(
                f"{self.file}: tensor '{self.name}' holds {bad} NaN or infinite value(s) (of {out.size}"
                f"{', or values beyond float32' if self.dtype == 'F64' else ''}); the checkpoint is damaged")
        return out


def read_index(path: Path) -> dict[str, TensorRef]:
    """Validate a .safetensors file's header and layout; return its tensors, nothing read yet."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointFormatError(f"{path}: file is truncated ({size} bytes); "
                                            "not a safetensors file")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > _MAX_HEADER or 8 + hlen > size:
                raise CheckpointFormatError(
                    f"{path}: header length {hlen} does not fit a {size}-byte file; "
                    "the file is truncated or not safetensors"
                )
            header_bytes = fh.read(hlen)
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"{path}: header is not valid JSON ({exc}); the file is garbled") from exc
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: header is not a JSON object; the file is garbled")
    data_start = 8 + hlen
    data_len = size - data_start
    tensors: dict[str, TensorRef] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            if not all(type(v) is int and v >= 0 for v in (*shape, begin, end)):
                raise ValueError("shape and data_offsets must be whole numbers >= 0")
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointFormatError(f"{path}: tensor '{name}' has a malformed header entry "
                                        f"({exc})") from exc
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise CheckpointFormatError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
        expected = _DTYPES[dtype].itemsize
        for d in shape:  # Python ints: a huge shape cannot overflow into a small product
            expected *= d
        if not (0 <= begin <= end) or end - begin != expected:
            raise CheckpointFormatError(
                f"{path}: tensor '{name}' spans {end - begin} bytes but shape {list(shape)} of {dtype} "
                f"needs {expected}"
            )
        if end > data_len:
            raise CheckpointFormatError(
                f"{path}: tensor '{name}' ends at byte {data_start + end} but the file has {size}; "
                "the file is truncated"
            )
        spans.append((begin, end, name))
        tensors[name] = TensorRef(path, name, dtype, shape, data_start + begin, expected)
    # The format lays tensors end to end: any gap or overlap means a damaged or crafted header.
    position, previous = 0, None
    for begin, end, name in sorted(spans):
        if begin != position:
            what = (f"overlaps '{previous}'" if begin < position
                    else f"leaves {begin - position} unused bytes before it")
            raise CheckpointFormatError(f"{path}: tensor '{name}' starts at data byte {begin}, which {what}; "
                                        "the header is damaged")
        position, previous = end, name
    if position != data_len:
        raise CheckpointFormatError(
            f"{path}: {data_len - position} unexpected trailing bytes after the tensor data; "
            "the file is garbled"
        )
    return tensors
