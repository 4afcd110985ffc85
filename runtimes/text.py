"""Tokenizer for runtimes that do not carry one (ONNX): tokenizers' tokenizer.json, plus per-token
bytes so streamed text never splits a UTF-8 character."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from edgekit.errors import ArtifactError


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 byte values, inverted."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TextTokenizer:
    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for bad files
            raise ArtifactError(f"{path}: unreadable tokenizer ({exc})") from exc
        self._tok.no_truncation()
        self._tok.no_padding()
        decoder = json.loads(self._tok.to_str()).get("decoder") or {}
        self._byte_level = decoder.get("type") == "ByteLevel"
        # special tokens print as nothing, as llama.cpp's detokenizer does
        self._cache: dict[int, bytes] = {i: b"" for i, t in self._tok.get_added_tokens_decoder().items()
                                         if t.special}

    def encode(self, text: str, add_special: bool) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special).ids

    def token_bytes(self, token_id: int) -> bytes:
        cached = self._cache.get(token_id)
        if cached is not None:
            return cached
        piece = self._tok.id_to_token(token_id) or ""
        if self._byte_level:
            table = _byte_decoder()
            out = (bytes(table[c] for c in piece if c in table) if all(c in table for c in piece)
                   else piece.encode())
        elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            out = bytes([int(piece[3:5], 16)])  # SentencePiece byte fallback
        else:
            out = piece.replace("\u2581", " ").encode("utf-8")
        self._cache[token_id] = out
        return out
