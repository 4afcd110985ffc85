"""Read a GGUF file's header in pure Python and refuse what would take llama.cpp down.

llama.cpp aborts the whole process (no exception to catch) on some inputs, e.g. a vocabulary
with two identical tokens; others fail deep inside its loader with a message that names no
field. This reader parses the metadata and tensor table with bounds checks on every length, and
`preflight` refuses such files with an ArtifactError naming the file and field before llama.cpp
opens them. Only the header is read: a few milliseconds even for a 50k-token vocabulary.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError

_MAGIC = b"GGUF"
# value type -> struct format of a scalar (8 = string, 9 = array are handled apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_MAX_DIMS = 4
@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    # name -> (ne, type, offset)
    tensors: dict[str, tuple[tuple[int, ...], int, int]] = field(default_factory=dict)
    data_start: int = 0


class _Reader:
    def __init__(self, data: memoryview, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> ArtifactError:
        return ArtifactError(f"{self.path}: not a valid GGUF file ({what} at byte {self.pos})")

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise self.fail("truncated")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> bytes:
        n = self.take("<Q")
        if n > len(self.data) - self.pos:
            raise self.fail(f"string of {n} bytes past the end")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9 and depth == 0:
            inner, count = self.take("<I"), self.take("<Q")
            if count > len(self.data) - self.pos:  # every element takes at least one byte
                raise self.fail(f"array of {count} items past the end")
            if inner in _SCALARS:
                fmt = _SCALARS[inner]
                size = struct.calcsize(fmt)
                if count * size > len(self.data) - self.pos:
                    raise self.fail("array past the end")
                items = list(struct.unpack_from(f"<{count}{fmt[1]}", self.data, self.pos))
                self.pos += count * size
                return items
            if inner == 8:
                return self._strings(count)
            return [self.value(inner, depth + 1) for _ in range(count)]
        raise self.fail(f"unknown value type {kind}")

    def _strings(self, count: int) -> list[bytes]:
        """An array of strings (a vocabulary: tens of thousands), in one tight loop."""
        data, pos, end, unpack = self.data, self.pos, len(self.data), struct.Struct("<Q").unpack_from
        out = []
        append = out.append
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                raise self.fail("truncated")
            (n,) = unpack(data, pos)
            pos += 8
            if n > end - pos:
                self.pos = pos
                raise self.fail(f"string of {n} bytes past the end")
            append(bytes(data[pos:pos + n]))
            pos += n
        self.pos = pos
        return out


def read_header(path: Path, limit: int = 64 << 20) -> GGUFHeader:
    """Parse magic, metadata and tensor table (at most `limit` bytes of header are read)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size == 0:
            raise ArtifactError(f"{path}: not a GGUF file (it is empty)")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:  # only what is parsed is read
            data = memoryview(mapped)[: min(size, limit)]
            try:
                return _parse(data, path, size)
            finally:
                data.release()


def _parse(data: memoryview, path: Path, size: int) -> GGUFHeader:
    r = _Reader(data, path)
    if r.take("4s") != _MAGIC:
        raise ArtifactError(f"{path}: not a GGUF file (its first bytes are not 'GGUF')")
    version = r.take("<I")
    if version not in (2, 3):
        raise ArtifactError(f"{path}: GGUF version {version} is not one llama.cpp reads (2 or 3)")
    n_tensors, n_kv = r.take("<Q"), r.take("<Q")
    if n_tensors > size // 24 or n_kv > size // 12:
        raise r.fail(f"{n_tensors} tensors / {n_kv} keys cannot fit a {size}-byte file")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string().decode("utf-8", "replace")
        if key in metadata:
            raise r.fail(f"duplicate key '{key}'")
        metadata[key] = r.value(r.take("<I"))
    header = GGUFHeader(version, metadata)
    for _ in range(n_tensors):
        name = r.string().decode("utf-8", "replace")
        n_dims = r.take("<I")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise r.fail(f"tensor '{name}' has {n_dims} dimensions")
        ne = tuple(r.take("<Q") for _ in range(n_dims))
        header.tensors[name] = (ne, r.take("<I"), r.take("<Q"))
    align = metadata.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise r.fail(f"general.alignment {align} is not a power of two")
    header.data_start = -(-r.pos // align) * align
    _check_tensor_bounds(header, size, path, align)
    return header


def _check_tensor_bounds(header: GGUFHeader, size: int, path: Path, align: int) -> None:
    from gguf import GGML_QUANT_SIZES  # ggml type -> (elements per block, bytes per block)

    sizes = {int(k): v for k, v in GGML_QUANT_SIZES.items()}
    for name, (ne, kind, offset) in header.tensors.items():
        if kind not in sizes:
            raise ArtifactError(f"{path}: tensor '{name}' has ggml type {kind}, "
                                "which this llama.cpp does not know")
        block, nbytes = sizes[kind]
        count = 1
        for d in ne:
            count *= d
        if ne[0] % block or offset % align:
            raise ArtifactError(f"{path}: tensor '{name}' is misaligned (row {ne[0]}, offset {offset})")
        if header.data_start + offset + count // block * nbytes > size:
            raise ArtifactError(f"{path}: tensor '{name}' ends past the end of the file; "
                                "the file is truncated")


def preflight(path: Path) -> GGUFHeader:
    """Refuse a GGUF that llama.cpp would abort on, naming the field; return its header."""
    header = read_header(path)
    meta = header.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, bytes):
        raise ArtifactError(f"{path}: general.architecture is missing; not a model GGUF")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, bytes) for t in tokens):
        raise ArtifactError(f"{path}: tokenizer.ggml.tokens is missing or not a list of strings")
    seen: dict[bytes, int] = {}
    for i, token in enumerate(tokens):
        first = seen.setdefault(token, i)
        if first != i:
            raise ArtifactError(f"{path}: tokenizer.ggml.tokens has {token.decode('utf-8', 'replace')!r} "
                                f"twice (ids {first} and {i}); llama.cpp would abort the process loading it")
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        if key in meta and (not isinstance(meta[key], list) or len(meta[key]) != len(tokens)):
            raise ArtifactError(f"{path}: {key} does not have one entry per token ({len(tokens)})")
    for key, value in meta.items():
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id") and \
                not (isinstance(value, int) and 0 <= value < len(tokens)):
            raise ArtifactError(f"{path}: {key} is {value}, outside the vocabulary of {len(tokens)} tokens")
    name = meta.get("general.name", b"")
    name = name.decode("utf-8", "replace").lower() if isinstance(name, bytes) else ""
    if "phi3" in name or "phi-3" in name:  # llama.cpp looks these up by text in any model so named
        missing = [t for t in (b"</s>", b"<unk>", b"<s>", b"<|endoftext|>") if t not in seen]
        if missing:
            raise ArtifactError(f"{path}: general.name {name!r} makes llama.cpp treat it as Phi-3, "
                                f"which needs the tokens {', '.join(t.decode() for t in missing)}; "
                                "they are missing")
    embd = header.tensors.get("token_embd.weight")
    if embd is None:
        raise ArtifactError(f"{path}: no token_embd.weight tensor")
    if len(embd[0]) < 2 or embd[0][1] != len(tokens):
        rows = embd[0][1] if len(embd[0]) > 1 else 1
        raise ArtifactError(f"{path}: token_embd.weight has {rows} rows "
                            f"but the vocabulary has {len(tokens)} tokens")
    return header
