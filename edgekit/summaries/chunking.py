"""Token-aware chunking of a document at its structure: sections, then paragraphs, then sentences.

Sizes are counted with the model's own tokenizer (any `count_tokens(text) -> int`), so that a chunk,
the prompt around it and the summary it asks for fit the context window. Consecutive chunks share a
little text (`overlap` tokens of whole sentences) so that a fact cut by a boundary is seen whole once.
Pure logic: no model, no files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgekit.summaries.documents import Block

JOIN_TOKENS = 2  # what "\n\n" between two pieces may add to the sum of their counts
# A sentence ends at . ! ? (with closing quotes or brackets) before space and a capital, digit or quote.
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s+[\"'“‘(\[A-Z0-9])")


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    tokens: int  # counted piece by piece, plus JOIN_TOKENS per join: at least the real count
    section: str  # the heading the chunk's first new text sits under ("" before any heading)
    overlap_tokens: int  # how many of `tokens` repeat the end of the previous chunk


@dataclass(frozen=True)
class _Unit:
    text: str
    tokens: int
    heading: bool = False


def split_sentences(text: str) -> list[str]:
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start : m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def _fit(text: str, count: Callable[[str], int], limit: int) -> list[_Unit]:
    """text as pieces of at most `limit` tokens: itself, else its sentences, else halves of them (by
    words, or by characters for text without spaces)."""
    n = count(text)
    if n <= limit:
        return [_Unit(text, n)]
    sentences = split_sentences(text)
    if len(sentences) > 1:
        return [u for s in sentences for u in _fit(s, count, limit)]
    words = text.split()
    if len(words) > 1:
        half = len(words) // 2
        return _fit(" ".join(words[:half]), count, limit) + _fit(" ".join(words[half:]), count, limit)
    half = len(text) // 2
    if half == 0:  # one character over the limit: the limit is too small to be meaningful
        return [_Unit(text, n)]
    return _fit(text[:half], count, limit) + _fit(text[half:], count, limit)


def plan_chunks(
    blocks: Sequence[Block], count_tokens: Callable[[str], int], max_tokens: int, overlap: int = 0
) -> list[Chunk]:
    """Pack the document's blocks into chunks of at most `max_tokens` tokens.

    A chunk ends early at a heading once it is half full, so that sections start chunks; a paragraph
    too long for one chunk is cut between sentences. Each chunk after the first begins with the last
    whole sentences of the one before, up to `overlap` tokens (at most a quarter of max_tokens).
    """
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, not {max_tokens}")
    overlap = max(0, min(overlap, max_tokens // 4))
    chunks: list[Chunk] = []
    units: list[_Unit] = []  # the chunk being filled
    used = carried = 0  # its tokens, and how many of them are overlap
    section = current = ""

    def close() -> None:
        nonlocal units, used, carried, section
        if used > carried:  # something new in it
            chunks.append(Chunk(len(chunks), "\n\n".join(u.text for u in units), used, section, carried))
            units = _tail(units, count_tokens, overlap)
            carried = used = sum(u.tokens for u in units) + JOIN_TOKENS * len(units)
        section = current

    for block in blocks:
        if block.kind == "heading":
            current = block.text
            if (
                used - carried >= max_tokens // 2
            ):  # a new section starts a new chunk once this one is half full
                close()
            elif used == carried:
                section = current
        for unit in _fit(block.text, count_tokens, max_tokens - overlap - JOIN_TOKENS):
            unit = _Unit(unit.text, unit.tokens, block.kind == "heading")
            if used + unit.tokens + JOIN_TOKENS > max_tokens:
                close()
                if used + unit.tokens + JOIN_TOKENS > max_tokens:  # the overlap leaves no room: drop it
                    units, used, carried = [], 0, 0
            if used == carried and block.kind != "heading":
                section = current
            units.append(unit)
            used += unit.tokens + JOIN_TOKENS
    close()
    return chunks


def _tail(units: list[_Unit], count: Callable[[str], int], budget: int) -> list[_Unit]:
    """The last whole sentences of `units` within `budget` tokens (never a lone heading)."""
    if budget <= 0 or not units:
        return []
    out: list[_Unit] = []
    used = 0
    for unit in reversed(units):
        if unit.heading:
            break
        pieces = (
            [unit]
            if unit.tokens + JOIN_TOKENS <= budget - used
            else [_Unit(s, count(s)) for s in split_sentences(unit.text)]
        )
        taken = []
        for piece in reversed(pieces):
            if used + piece.tokens + JOIN_TOKENS > budget:
                break
            taken.insert(0, piece)
            used += piece.tokens + JOIN_TOKENS
        if not taken:
            break
        if len(taken) > 1:  # sentences of one paragraph stay one paragraph
            taken = [_Unit(" ".join(u.text for u in taken), sum(u.tokens for u in taken) + JOIN_TOKENS)]
        out.insert(0, taken[0])
        if len(taken[0].text) < len(unit.text):  # only part of this paragraph fitted: stop here
            break
    return out
