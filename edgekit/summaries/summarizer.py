"""Offline summaries of documents of any length with a local model: edgekit.summarize() and
edgekit.summarize_many().

A document is read into headings and paragraphs (documents.py), cut into chunks that fit the model's
context window with the model's own tokenizer (chunking.py), and summarized by map-reduce: one
partial summary per chunk, then partial summaries combined, in several rounds when they do not fit
one prompt, so that memory stays bounded at any length. "refine" instead carries one running summary
through the chunks. Every call is greedy, through the artifact's chat template, and guarded against
what small models do wrong: a repetition loop is cut where it starts, a label or an echo of the
instruction is removed, an empty answer is asked again with the prompt laid out differently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import (
    ContextOverflowError,
    DocumentError,
    EdgekitError,
    InvalidOptionError,
    SummarizationError,
)
from edgekit.progress import Progress
from edgekit.summaries.chunking import Chunk, plan_chunks, split_sentences
from edgekit.summaries.documents import SUFFIXES, Document, file_hash, read_document

PROMPT_VERSION = "1"  # part of the resume fingerprint: bump when prompts or guards change
STRATEGIES = ("map-reduce", "refine")
FORMATS = ("txt", "md", "json")
LOOP_NGRAM = 8  # a summary never repeats a run of this many words
INDEX_NAME = ".edgekit-summaries.jsonl"  # the record of a folder run, in the output folder
DEFAULT_MODEL = "smollm2-135m-instruct"  # as ONNX int4: conversion.references makes that of a name
_SYSTEM = "You write short, faithful summaries. Use only facts stated in the text."


# ---- what small models get wrong, as pure functions ---------------------------------------------
_TOKEN = re.compile(r"\S+")
_EDGES = ".,;:!?\"'“”‘’()[]*_"


def _words(text: str) -> list[tuple[int, str]]:
    """(offset, word) for each whitespace-separated token, case and edge punctuation ignored; a token
    of symbols alone ("#", "|", "---") stays itself, so loops of symbols are found too."""
    out = []
    for m in _TOKEN.finditer(text):
        word = m.group().lower()
        out.append((m.start(), word.strip(_EDGES) or word))
    return out


def find_loop(text: str, n: int = LOOP_NGRAM) -> int | None:
    """Where a repetition loop starts: the offset of the first run of `n` words (case and punctuation
    ignored) that already appeared earlier in `text`; None when no run repeats."""
    words = _words(text)
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        gram = tuple(w for _, w in words[i : i + n])
        if gram in seen:
            return words[i][0]
        seen.add(gram)
    return None


def repeated_ngram(text: str, n: int = LOOP_NGRAM) -> tuple[str, ...] | None:
    """The first run of `n` words that occurs twice in text, or None (what tests and reports check)."""
    at = find_loop(text, n)
    if at is None:
        return None
    return tuple(w for _, w in _words(text[at:])[:n])


_LABEL = re.compile(
    r"^\s*(?:\*\*|#+\s*)?(?:(?:here(?:'s| is)|below is)\b[^\n:]{0,80}|summary|tl;?dr)"
    r"\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*",
    re.IGNORECASE,
)


def clean_output(text: str, instruction: str = "") -> str:
    """The summary without a leading label ("Summary:", "Here is a summary of the text:"), without an
    echo of the instruction, with whitespace tidied."""
    text = text.strip()
    if instruction:  # the instruction, or any sentence of it, repeated anywhere
        for sentence in [instruction, *split_sentences(instruction)]:
            if len(sentence.split()) >= 4:
                text = re.sub(re.escape(sentence), "", text, flags=re.IGNORECASE).strip()
    text = _LABEL.sub("", text, count=1)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def trim_to_sentence(text: str) -> str:
    """A summary cut by the token limit ends at its last full sentence (one of three words or more)."""
    text = text.rstrip()
    if text.endswith((".", "!", "?", '."', ".)")):
        return text
    end = max(text.rfind(". "), text.rfind(".\n"), text.rfind("! "), text.rfind("? "))
    if end > 0 and len(text[: end + 1].split()) >= 3:
        return text[: end + 1]
    return text


def copied_fraction(output: str, source: str, n: int = LOOP_NGRAM) -> float:
    """Share of the output's runs of n words found verbatim in the source (1.0: a pure copy)."""
    out = [w for _, w in _words(output)]
    if len(out) < n:
        return 0.0
    src = [w for _, w in _words(source)]
    grams = {tuple(src[i : i + n]) for i in range(len(src) - n + 1)}
    hits = sum(tuple(out[i : i + n]) in grams for i in range(len(out) - n + 1))
    return hits / (len(out) - n + 1)


# ---- prompts ------------------------------------------------------------------------------------
def _instruction(words: int) -> str:
    return f"Write a summary of the text above in about {words} words."


def _map_messages(text: str, words: int, plain: bool = False) -> list[dict[str, str]]:
    if plain:  # the second try after an empty answer: instruction first, no system prompt
        return [{"role": "user", "content": f"Summarize this text in about {words} words:\n\n{text}"}]
    return [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": f"{text}\n\n{_instruction(words)}"},
    ]


def _reduce_messages(partials: Sequence[str], words: int, plain: bool = False) -> list[dict[str, str]]:
    listed = "\n\n".join(partials)
    ask = (
        f"The paragraphs above summarize consecutive parts of one document. Write one summary of the "
        f"whole document in about {words} words."
    )
    if plain:
        return [
            {
                "role": "user",
                "content": f"Summarize these notes on one document in about {words} words:\n\n{listed}",
            }
        ]
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": f"{listed}\n\n{ask}"}]


def _refine_messages(running: str, text: str, words: int, plain: bool = False) -> list[dict[str, str]]:
    ask = f"Rewrite the summary so far so that it also covers the next part, in about {words} words."
    body = f"Summary so far: {running}\n\nNext part of the document:\n{text}"
    if plain:
        return [{"role": "user", "content": f"{ask}\n\n{body}"}]
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": f"{body}\n\n{ask}"}]


# ---- results ------------------------------------------------------------------------------------
@dataclass
class Step:
    """One model call: a chunk's summary ("map"), a combination ("reduce", with its round) or an
    update of the running summary ("refine")."""

    kind: str
    index: int
    round: int
    tokens_in: int
    tokens_out: int
    prefill_s: float
    decode_s: float
    finish_reason: str  # "stop", "length" or "loop" (a repetition was cut)
    summary: str
    section: str = ""
    retried: bool = False
    fallback: bool = False  # the model answered nothing twice: the chunk's first sentences stand in


@dataclass
class Summary:
    source: str
    summary: str
    model: dict[str, Any]
    strategy: str
    words_asked: int
    document: dict[str, Any]  # kind, pages, words, tokens, chunks
    timings: dict[str, float]  # read_s, load_s, chunk_s, prefill_s, decode_s, model_s, outside_s, total_s
    steps: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def chunks(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "map"]

    def to_dict(self) -> dict[str, Any]:
        tokens_in = sum(s.tokens_in for s in self.steps)
        tokens_out = sum(s.tokens_out for s in self.steps)
        return {
            "source": self.source,
            "summary": self.summary,
            "words": len(self.summary.split()),
            "words_asked": self.words_asked,
            "strategy": self.strategy,
            "model": self.model,
            "document": self.document,
            "timings": self.timings,
            "tokens": {"document": self.document.get("tokens"), "prompt": tokens_in, "generated": tokens_out},
            "steps": [asdict(s) for s in self.steps],
            "warnings": self.warnings,
        }

    def markdown(self) -> str:
        return f"{self.heading()}\n\n{self.summary}\n\n{self.footer()}\n"

    def heading(self) -> str:
        return f"# Summary of {Path(self.source).name}"

    def footer(self) -> str:
        d, m = self.document, self.model
        pages = f"{d['pages']} pages, " if d.get("pages") else ""
        return (
            f"*edgekit, {m.get('name')} ({m.get('format')} {m.get('quant')}): {pages}{d['words']:,} words, "
            f"{d['tokens']:,} tokens in {d['chunks']} chunk{'s' if d['chunks'] != 1 else ''}, "
            f"{self.timings['total_s']:.1f} s*"
        )

    def render(self, fmt: str) -> str:
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        if fmt == "md":
            return self.markdown()
        return self.summary + "\n"


# ---- the engine ---------------------------------------------------------------------------------
def default_model(progress: Progress | None = None, say: Callable[[str], None] | None = None) -> Path:
    """The model summaries use unless told: the bundled SmolLM2-135M-Instruct as ONNX int4, converted
    once into edgekit's cache. ONNX Runtime prefills a long chunk about twice as fast as llama.cpp here,
    and a summary is mostly prefill (docs/measurements.md)."""
    from edgekit.conversion.references import artifact_for

    return artifact_for(DEFAULT_MODEL, progress, say)


def _open(model, device: str, n_ctx: int | None, threads: int | None, parallel: int = 1):
    """(engine, whether we opened it and must close it)."""
    from edgekit.engine import Engine, load

    if isinstance(model, Engine):
        if parallel != 1:
            raise InvalidOptionError("parallel applies to a model summarize opens; an engine given is used "
                                     "as it was loaded (edgekit.load(..., parallel=N))")
        return model, False
    return load(default_model() if model is None else model, device=device, n_ctx=n_ctx, threads=threads,
                parallel=parallel), True


def _model_facts(engine) -> dict[str, Any]:
    quant = engine.manifest.get("quantization") or {}
    source = engine.manifest.get("source") or {}
    ident = str(source.get("id") or "")
    name = ident.split(":")[-1].rstrip("/").split("/")[-1] or engine.path.name  # bundled:x, owner/x, /a/x
    return {
        "path": str(engine.path),
        "name": name,
        "format": engine.manifest.get("format"),
        "quant": quant.get("label") or quant.get("scheme"),
        "backend": engine.backend.name,
        "device": engine.device,
        "context_length": engine.context_length,
    }


class _Run:
    """One document's calls: each asked, guarded and timed."""

    def __init__(self, engine, words: int, progress: Progress | None, total: int) -> None:
        self.engine, self.words = engine, words
        self.max_tokens = int(words * 1.6) + 24  # English is ~1.3 tokens a word; room to finish
        self.progress, self.done, self.total = progress, 0, total
        self.steps: list[Step] = []
        self.warnings: list[str] = []
        self.lock = threading.Lock()  # the asks of one phase may run at once (engine.backend.parallel)
        self.overlapped = 0.0  # model seconds that ran beside others (summed twice in the steps)

    def tick(self, what: str) -> None:
        if self.progress is not None:
            with self.lock:
                self.progress(what, self.done, self.total)

    def ask_all(self, calls: list[tuple]) -> list[str]:
        """ask(*call) for each call, in order; all at once on an engine that decodes several streams
        (their prompts prefilled one after the other, their answers decoded together)."""
        streams = int(getattr(self.engine.backend, "parallel", 1))
        if streams == 1 or len(calls) == 1:
            return [self.ask(*call) for call in calls]
        from concurrent.futures import ThreadPoolExecutor

        first = len(self.steps)
        start = time.perf_counter()
        with ThreadPoolExecutor(min(streams, len(calls)), "edgekit-summary") as pool:
            texts = list(pool.map(lambda call: self.ask(*call), calls))
        wall = time.perf_counter() - start
        phase = self.steps[first:]
        phase.sort(key=lambda step: step.index)
        self.steps[first:] = phase
        self.overlapped += max(0.0, sum(st.prefill_s + st.decode_s for st in phase) - wall)
        return texts

    def ask(
        self,
        kind: str,
        index: int,
        rnd: int,
        messages_for: Callable[[bool], list[dict[str, str]]],
        source_text: str,
        section: str = "",
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        self.tick(f"{kind} {index + 1}" if kind != "reduce" else f"combining (round {rnd})")
        text, reason, stats = self._call(messages_for(False), on_text)
        retried = fallback = False
        if not text:  # small models sometimes answer nothing: once more, laid out differently
            retried = True
            text, reason, more = self._call(messages_for(True), on_text)
            stats = [a + b for a, b in zip(stats, more, strict=True)]
        if not text:
            fallback = True
            text = self._lead(source_text)
            with self.lock:
                self.warnings.append(
                    f"{kind} {index + 1}: the model gave no summary twice; the first sentences "
                    "of its text stand in"
                )
            if on_text is not None:
                on_text(text)
        if on_text is None:  # a partial summary (the final one was shown as it came)
            text = self._cap(text)
        with self.lock:
            if reason == "loop":
                self.warnings.append(f"{kind} {index + 1}: a repetition loop was cut")
            self.steps.append(Step(kind, index, rnd, *stats, reason, text, section, retried, fallback))
            self.done += 1
        self.tick(f"{kind} {index + 1} done")
        return text

    def _cap(self, text: str) -> str:
        """text within max_tokens of the model's tokens when encoded again (odd output can encode to
        more tokens than were generated), so that partial summaries always pack two to a prompt."""
        if self.engine.count_tokens(text) <= self.max_tokens:
            return text
        words = text.split()
        lo, hi = 0, len(words)
        while lo < hi:  # the most words that fit
            mid = (lo + hi + 1) // 2
            if self.engine.count_tokens(" ".join(words[:mid])) <= self.max_tokens:
                lo = mid
            else:
                hi = mid - 1
        return " ".join(words[:lo])

    def _lead(self, text: str) -> str:
        """The first sentences of text, within the tokens of one answer."""
        out = ""
        for sentence in split_sentences(text):
            longer = f"{out} {sentence}".strip()
            if self.engine.count_tokens(longer) > self.max_tokens:
                break
            out = longer
        if not out:  # one long first sentence: its first words
            out = " ".join(text.split()[: max(1, self.max_tokens // 3)])
        return out

    def _call(self, messages: list[dict[str, str]], on_text) -> tuple[str, str, list]:
        """Greedy reply, stopped where a repetition loop begins.

        Returns (text, finish reason, [tokens in, tokens out, prefill s, decode s])."""
        content = messages[-1]["content"]  # the instruction leads a plain prompt and ends the others
        plain = messages[0]["role"] != "system"
        instruction = content.split("\n\n", 1)[0] if plain else content.rsplit("\n\n", 1)[-1]
        stream = self.engine.chat(messages, max_tokens=self.max_tokens, temperature=0.0, stream=True)
        raw, shown, looped = "", "", False
        with stream:
            for piece in stream:
                raw += piece
                cut = find_loop(raw)
                if cut is not None:
                    raw, looped = raw[:cut], True
                    break
                if on_text is not None:  # show what can no longer change: all but the last few words
                    visible = _settled(clean_output(raw, instruction))
                    if visible.startswith(shown) and len(visible) > len(shown):
                        on_text(visible[len(shown) :])
                        shown = visible
        result = stream.result
        reason = "loop" if looped else result.finish_reason
        text = clean_output(raw, instruction)
        if reason in ("length", "loop"):
            text = trim_to_sentence(text)
        if on_text is not None:
            if not text.startswith(shown):  # trimmed inside what was already shown: keep what was shown
                text = shown.rstrip()
            elif len(text) > len(shown):
                on_text(text[len(shown) :])
        m = result.metrics
        return text, reason, [m.tokens_in, m.tokens_out, m.ttft_s, max(0.0, m.total_s - m.ttft_s)]


def _settled(text: str) -> str:
    """What of a streamed answer can be shown: whole sentences that end before its last LOOP_NGRAM
    words (a loop cut or a trim to the last sentence can still take those back)."""
    words = _words(text)
    if len(words) < LOOP_NGRAM:
        return ""
    limit = words[-LOOP_NGRAM][0]
    ends = [m.end() for m in re.finditer(r"[.!?][\"'”’)\]]*(?=\s)", text[:limit])]
    return text[: ends[-1]] if ends else ""


def summarize(
    source: str | Path | Document,
    model: Any = None,
    words: int = 150,
    *,
    strategy: str = "map-reduce",
    chunk_tokens: int = 1024,
    overlap: int = 128,
    device: str = "auto",
    n_ctx: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    on_text: Callable[[str], None] | None = None,
    parallel: int = 1,
) -> Summary:
    """Summarize a .txt, .md, .html, .pdf or .docx file in about `words` words with a local model.

    model: an artifact directory, an open Engine (left open), or None for the bundled SmolLM2 as ONNX
    int4 (converted into the cache on first use). strategy: "map-reduce" (default; partial summaries
    combined, in rounds when they do not fit one prompt) or "refine" (one running summary updated chunk
    by chunk). chunk_tokens: largest chunk, in the model's tokens (less when the context window is
    smaller); overlap: tokens of whole sentences repeated from one chunk into the next. progress(stage,
    done, total) follows the model calls (stage: the call running now, e.g. "map 3"); on_text(piece)
    receives the final summary as it is written. parallel: streams the model decodes at once (load's;
    ONNX): a document's chunks are then summarized together, faster, though a near-tie of greedy
    decoding may break differently from one run to the next. The same happens on an engine given
    that was loaded with parallel > 1.
    """
    t0 = time.perf_counter()
    _check_options(words, strategy, chunk_tokens, overlap)
    document = source if isinstance(source, Document) else read_document(source)
    t_read = time.perf_counter()
    engine, owned = _open(model, device, n_ctx, threads, parallel)
    t_load = time.perf_counter()
    try:
        if engine.manifest.get("task") == "feature-extraction":
            raise SummarizationError(f"{engine.path} is an embedding model; summaries need a text generator")
        if not engine.manifest.get("chat_template"):
            raise SummarizationError(f"{engine.path} has no chat template; summaries need an instruct model")
        return _summarize(
            document, engine, words, strategy, chunk_tokens, overlap, progress, on_text, (t0, t_read, t_load)
        )
    finally:
        if owned:
            engine.close()


def _check_options(words: int, strategy: str, chunk_tokens: int, overlap: int) -> None:
    if type(words) is not int or not 10 <= words <= 2000:
        raise InvalidOptionError(f"words must be a whole number from 10 to 2000, not {words!r}")
    if strategy not in STRATEGIES:
        raise InvalidOptionError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if type(chunk_tokens) is not int or chunk_tokens < 64:
        raise InvalidOptionError(f"chunk_tokens must be a whole number >= 64, not {chunk_tokens!r}")
    if type(overlap) is not int or overlap < 0:
        raise InvalidOptionError(f"overlap must be a whole number >= 0, not {overlap!r}")


def _summarize(
    document: Document,
    engine,
    words: int,
    strategy: str,
    chunk_tokens: int,
    overlap: int,
    progress: Progress | None,
    on_text,
    times: tuple[float, float, float],
) -> Summary:
    t0, t_read, t_load = times
    if document.words <= words:  # nothing to shorten: a model asked anyway would invent the rest
        return _as_it_is(document, engine, words, strategy, on_text, times)
    run = _Run(engine, words, progress, 1)
    # what the prompt costs around the text: the template rendered with an empty text, plus a margin
    second = _reduce_messages([""], words) if strategy == "map-reduce" else _refine_messages("", "", words)
    wrapper = max(engine.count_tokens(engine.render_chat(m)) for m in (_map_messages("", words), second))
    room = engine.context_length - wrapper - run.max_tokens - 16
    if strategy == "refine":
        room -= run.max_tokens  # the running summary rides along with every chunk
    budget = int(min(chunk_tokens, room) * 0.95)  # the counts add up piece by piece: keep a margin
    least = max(64, 2 * (run.max_tokens + 16) if strategy == "map-reduce" else 0)  # two answers per prompt
    if budget < least:
        if chunk_tokens < room:  # the window is large enough; the chunks asked for are not
            raise SummarizationError(
                f"chunks of {chunk_tokens} tokens are too small for {words}-word answers: two answers must "
                f"fit one prompt to combine them; use chunk_tokens (--chunk-tokens) of "
                f"{int(least / 0.95) + 1} or more, or ask for fewer words"
            )
        raise SummarizationError(
            f"the context window of {engine.context_length} tokens leaves {max(budget, 0)} for the text "
            f"after the prompt ({wrapper}) and a {words}-word answer ({run.max_tokens}); give the model a "
            "larger context (n_ctx, --ctx-size) or ask for fewer words"
        )
    chunks = plan_chunks(document.blocks, engine.count_tokens, budget, overlap)
    t_chunk = time.perf_counter()
    doc_tokens = sum(c.tokens - c.overlap_tokens for c in chunks)
    run.total = len(chunks) + (1 if len(chunks) > 1 and strategy == "map-reduce" else 0)
    try:
        if strategy == "refine":
            text = _refine(run, chunks, on_text)
        else:
            text = _map_reduce(run, chunks, budget, on_text)
    except ContextOverflowError as exc:  # the margins above make this a bug, but say what happened
        raise SummarizationError(f"{document.path}: a prompt did not fit the context window ({exc})") from exc
    end = time.perf_counter()
    prefill = sum(s.prefill_s for s in run.steps)
    decode = sum(s.decode_s for s in run.steps)
    model = prefill + decode - run.overlapped  # calls that ran side by side count once
    timings = {
        "read_s": t_read - t0,
        "load_s": t_load - t_read,
        "chunk_s": t_chunk - t_load,
        "prefill_s": prefill,
        "decode_s": decode,
        "model_s": model,
        "outside_s": (end - t0) - model,
        "total_s": end - t0,
    }
    facts = {
        "kind": document.kind,
        "pages": document.pages,
        "words": document.words,
        "tokens": doc_tokens,
        "chunks": len(chunks),
        "rounds": max((s.round for s in run.steps), default=0),
    }
    return Summary(
        str(document.path),
        text,
        _model_facts(engine),
        strategy,
        words,
        facts,
        {k: round(v, 4) for k, v in timings.items()},
        run.steps,
        run.warnings,
    )


def _as_it_is(document: Document, engine, words: int, strategy: str, on_text,
              times: tuple[float, float, float]) -> Summary:
    """A document no longer than the summary asked for, returned whole, with a note saying so."""
    t0, t_read, t_load = times
    text = document.text.strip()
    if on_text is not None:
        on_text(text)
    end = time.perf_counter()
    timings = {"read_s": t_read - t0, "load_s": t_load - t_read, "chunk_s": 0.0, "prefill_s": 0.0,
               "decode_s": 0.0, "model_s": 0.0, "outside_s": end - t0, "total_s": end - t0}
    facts = {"kind": document.kind, "pages": document.pages, "words": document.words,
             "tokens": engine.count_tokens(text), "chunks": 0, "rounds": 0}
    note = (f"the document has {document.words} words, no more than the {words} asked for: it is its own "
            "summary (returned as it is, the model not asked)")
    return Summary(str(document.path), text, _model_facts(engine), strategy, words, facts,
                   {k: round(v, 4) for k, v in timings.items()}, [], [note])


def _map_reduce(run: _Run, chunks: list[Chunk], budget: int, on_text) -> str:
    if len(chunks) == 1:
        c = chunks[0]
        return run.ask(
            "map", 0, 0, lambda plain: _map_messages(c.text, run.words, plain), c.text, c.section, on_text
        )
    partials = run.ask_all([
        ("map", c.index, 0, lambda plain, c=c: _map_messages(c.text, run.words, plain), c.text, c.section)
        for c in chunks
    ])
    rnd = 0
    while True:
        rnd += 1
        groups = _groups(partials, run.engine.count_tokens, budget)
        if len(groups) == 1:
            return run.ask(
                "reduce",
                0,
                rnd,
                lambda plain, last=partials: _reduce_messages(last, run.words, plain),
                "\n\n".join(partials),
                on_text=on_text,
            )
        run.total += len(groups)  # one more round than planned
        partials = run.ask_all([
            ("reduce", i, rnd, lambda plain, g=g: _reduce_messages(g, run.words, plain), "\n\n".join(g))
            for i, g in enumerate(groups)
        ])


def _groups(partials: list[str], count: Callable[[str], int], budget: int) -> list[list[str]]:
    """Consecutive partial summaries packed greedily into prompts of at most `budget` tokens (each is
    at most half of it, so every group but the last holds two or more and the rounds shrink)."""
    groups: list[list[str]] = [[]]
    used: list[int] = [0]
    for p in partials:
        n = count(p) + 2  # the blank line between two
        if groups[-1] and used[-1] + n > budget:
            groups.append([])
            used.append(0)
        groups[-1].append(p)
        used[-1] += n
    return groups


def _refine(run: _Run, chunks: list[Chunk], on_text) -> str:
    last = len(chunks) - 1
    c = chunks[0]
    running = run.ask(
        "map",
        0,
        0,
        lambda plain: _map_messages(c.text, run.words, plain),
        c.text,
        c.section,
        on_text if last == 0 else None,
    )
    for c in chunks[1:]:
        prev = running
        running = run.ask(
            "refine",
            c.index,
            0,
            lambda plain, c=c, prev=prev: _refine_messages(prev, c.text, run.words, plain),
            c.text,
            c.section,
            on_text if c.index == last else None,
        )
    return running


# ---- many files ---------------------------------------------------------------------------------
@dataclass
class FileRecord:
    """One file of a summarize_many run, as the run's index in the output folder records it."""

    path: str
    output: str | None
    status: str  # "ok", "skipped" (already summarized: same content, model and settings) or "failed"
    sha256: str | None = None
    fingerprint: str = ""
    error: str | None = None
    attempts: int = 1
    seconds: float = 0.0
    summary: Summary | None = None
    name: str = ""  # the path relative to the folder given (the index's key), or the file's name

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("name", "path", "output", "status", "sha256", "fingerprint",
                                             "error", "attempts", "seconds")}
        if self.summary is not None:
            t = self.summary.timings
            out.update(
                words=len(self.summary.summary.split()),
                chunks=self.summary.document["chunks"],
                model_s=t["model_s"],
                outside_s=t["outside_s"],
            )
        return out


@dataclass
class SummaryRun:
    files: list[FileRecord]
    out: str | None
    model: dict[str, Any]
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (name, why) of entries not read

    @property
    def failed(self) -> list[FileRecord]:
        return [f for f in self.files if f.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(f.status == s for f in self.files) for s in ("ok", "skipped", "failed")}
        return {
            "out": self.out,
            "model": self.model,
            "counts": counts,
            "files": [f.to_dict() for f in self.files],
            "ignored": [{"name": name, "why": why} for name, why in self.ignored],
        }


def collect(paths: Sequence[str | Path], recursive: bool = False, exclude: Path | None = None,
            follow_links: bool = False, ignored: list[tuple[str, str]] | None = None,
            ) -> list[tuple[Path, str]]:
    """(file, name relative to what was given) for each document: files as given (any extension, so
    that a wrong one is reported), folders' .txt/.md/.html/.pdf/.docx files (hidden ones left out).

    Inside a folder, links that lead out of it are not followed unless follow_links, and links to
    nothing, FIFOs, sockets and devices are not opened: each such entry goes into `ignored` as
    (name, why), for the caller to show."""
    found: list[tuple[Path, str]] = []
    skip = exclude.resolve() if exclude is not None else None
    for given in map(Path, paths):
        if not given.is_dir():
            found.append((given, given.name))
            continue
        for f, rel, why in _walk(given, recursive, follow_links):
            if skip is not None and (f.resolve() == skip or skip in f.resolve().parents):
                continue  # the summaries of an earlier run are not documents of this one
            if why is not None:
                if ignored is not None:
                    ignored.append((rel, why))
            elif f.suffix.lower() in SUFFIXES:
                found.append((f, rel))
    names = [rel for _, rel in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidOptionError(
            f"two inputs would write the same summary ({', '.join(twice[:3])}); "
            "give their folder instead, or summarize them in separate runs"
        )
    return found


def fingerprint(manifest: dict[str, Any], n_ctx: int | None, words: int, strategy: str, chunk_tokens: int,
                overlap: int, fmt: str) -> str:
    """What makes two summaries of the same bytes the same: the model's files, settings and prompts."""
    files = sorted((f.get("name"), f.get("sha256")) for f in manifest.get("files", []))
    facts = {"files": files, "words": words, "strategy": strategy, "chunk_tokens": chunk_tokens,
             "overlap": overlap, "format": fmt, "n_ctx": n_ctx, "prompts": PROMPT_VERSION}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def is_done(before: dict[str, Any] | None, digest: str, stamp: str, target: Path | None) -> bool:
    """Whether a file's index record says it is summarized already, the same way, and still there."""
    return bool(before and before.get("status") == "ok" and before.get("sha256") == digest
                and before.get("fingerprint") == stamp and target is not None and target.is_file())


def read_index(out: Path) -> dict[str, dict[str, Any]]:
    """The last record of each file in a run's index (a torn last line, from a crash, is ignored)."""
    records: dict[str, dict[str, Any]] = {}
    try:
        lines = (out / INDEX_NAME).read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return records
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("name"), str):
            records[record["name"]] = record
    return records


def _append_index(out: Path, record: FileRecord) -> None:
    with open(out / INDEX_NAME, "a", encoding="utf-8") as f:
        f.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, text: str) -> None:
    """path holds the old content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def summarize_many(
    paths: Sequence[str | Path],
    model: Any = None,
    out: str | Path | None = None,
    words: int = 150,
    *,
    recursive: bool = False,
    resume: bool = True,
    fmt: str = "md",
    strategy: str = "map-reduce",
    chunk_tokens: int = 1024,
    overlap: int = 128,
    device: str = "auto",
    n_ctx: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    on_file: Callable[[FileRecord, int, int], None] | None = None,
    executor: Any = None,
    follow_links: bool = False,
    parallel: int = 1,
) -> SummaryRun:
    """Summarize files and folders (recursive: their subfolders too) with one engine.

    out: a folder getting one summary per file (NAME.EXT.md, .txt or .json by `fmt`), written
    atomically and recorded in its index; with resume, a file whose bytes, model and settings match
    its record is skipped. A file that fails is recorded with its error and the others go on; the run's
    `failed` lists them. on_file(record, i, n) is called as each file ends.
    executor: None runs here, in this process; an edgekit.RayExecutor spreads the files over Ray
    workers (model must then be an artifact path every worker can read, and out is required).
    Two runs into one `out` at once: the second fails at its start (the folder is locked). Links
    out of a folder are followed only with follow_links; what was not read is in the run's
    `ignored`, with the reason. parallel: as summarize's (in this process; not with an executor).
    """
    _check_options(words, strategy, chunk_tokens, overlap)
    if parallel != 1 and executor is not None:
        raise InvalidOptionError("parallel applies to a run in this process, not over Ray workers")
    if fmt not in FORMATS:
        raise InvalidOptionError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    ignored: list[tuple[str, str]] = []
    files = collect(paths, recursive, Path(out) if out is not None else None, follow_links, ignored)
    if not files:
        raise InvalidOptionError(
            f"no documents ({', '.join(SUFFIXES)}) in {', '.join(map(str, paths))}"
            + ("" if recursive else "; add recursive=True (--recursive) for subfolders")
        )
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise InvalidOptionError(f"{out_dir} exists and is not a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        if out_dir is not None:  # one run per folder at a time: two would both work and both record
            from edgekit.artifact import output_lock

            held.enter_context(output_lock(out_dir / INDEX_NAME, "summarize run"))
        if executor is not None:
            settings = {"words": words, "strategy": strategy, "chunk_tokens": chunk_tokens,
                        "overlap": overlap, "fmt": fmt, "device": device, "n_ctx": n_ctx}
            run = _distributed(executor, files, model, out_dir, resume, settings, progress, on_file)
        else:
            run = _local(files, model, out_dir, resume, words, fmt, strategy, chunk_tokens, overlap,
                         device, n_ctx, threads, progress, on_file, parallel)
    run.ignored = ignored
    return run


def _local(files: list[tuple[Path, str]], model: Any, out_dir: Path | None, resume: bool, words: int,
           fmt: str, strategy: str, chunk_tokens: int, overlap: int, device: str, n_ctx: int | None,
           threads: int | None, progress: Progress | None,
           on_file: Callable[[FileRecord, int, int], None] | None, parallel: int = 1) -> SummaryRun:
    """summarize_many's files, one after the other, in this process."""
    engine, owned = _open(model, device, n_ctx, threads, parallel)
    try:
        from edgekit.engine import Engine

        context = engine.context_length if isinstance(model, Engine) else n_ctx
        stamp = fingerprint(engine.manifest, context, words, strategy, chunk_tokens, overlap, fmt)
        done = read_index(out_dir) if out_dir is not None and resume else {}
        records: list[FileRecord] = []
        for i, (path, rel) in enumerate(files):
            record = _one_file(
                engine,
                path,
                rel,
                out_dir,
                done.get(rel),
                stamp,
                words,
                fmt,
                strategy,
                chunk_tokens,
                overlap,
                progress,
            )
            record.name = rel
            records.append(record)
            if out_dir is not None and record.status != "skipped":
                _append_index(out_dir, record)
            if on_file is not None:
                on_file(record, i, len(files))
        return SummaryRun(records, str(out_dir) if out_dir else None, _model_facts(engine))
    finally:
        if owned:
            engine.close()


def _one_file(
    engine,
    path: Path,
    rel: str,
    out_dir: Path | None,
    before: dict[str, Any] | None,
    stamp: str,
    words: int,
    fmt: str,
    strategy: str,
    chunk_tokens: int,
    overlap: int,
    progress: Progress | None,
) -> FileRecord:
    start = time.perf_counter()
    target = out_dir / f"{rel}.{fmt}" if out_dir is not None else None
    shown = str(target) if target is not None else None
    try:
        digest = file_hash(path)
    except OSError as exc:
        return FileRecord(str(path), shown, "failed", None, stamp, f"{path}: cannot be read ({exc.strerror})")
    if is_done(before, digest, stamp, target):
        return FileRecord(str(path), shown, "skipped", digest, stamp, seconds=0.0)
    try:
        summary = summarize(
            path,
            engine,
            words,
            strategy=strategy,
            chunk_tokens=chunk_tokens,
            overlap=overlap,
            progress=(lambda stage, d, t: progress(f"{rel}: {stage}", d, t)) if progress else None,
        )
    except (DocumentError, SummarizationError) as exc:
        return FileRecord(
            str(path), shown, "failed", digest, stamp, str(exc), seconds=round(time.perf_counter() - start, 3)
        )
    except EdgekitError as exc:
        return FileRecord(
            str(path),
            shown,
            "failed",
            digest,
            stamp,
            f"{path}: {exc}",
            seconds=round(time.perf_counter() - start, 3),
        )
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:  # a reader's or runtime's bug on this file: the others still go on
        return FileRecord(str(path), shown, "failed", digest, stamp, f"{path}: {type(exc).__name__}: {exc}",
                          seconds=round(time.perf_counter() - start, 3))
    if target is not None:
        write_atomic(target, summary.render(fmt))
    return FileRecord(
        str(path), shown, "ok", digest, stamp, seconds=round(time.perf_counter() - start, 3), summary=summary
    )


def _walk(root: Path, recursive: bool, follow_links: bool) -> Iterator[tuple[Path, str, str | None]]:
    """(path, name under root, why it is not read or None) for each regular file or odd entry under
    root (hidden names left out), in sorted order, without leaving root through a link unless asked."""
    top = root.resolve()
    seen: set[Path] = {top}
    todo: list[tuple[Path, str]] = [(root, "")]
    while todo:
        folder, prefix = todo.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError as exc:
            yield folder, prefix.rstrip("/") or ".", f"cannot be listed ({exc.strerror or exc})"
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path, rel = Path(entry.path), prefix + entry.name
            why = None
            if entry.is_symlink():
                target = path.resolve()
                if not target.exists():
                    why = "a link to nothing"
                elif not follow_links and top not in target.parents:
                    why = f"a link to {target}, outside the folder (--follow-links follows it)"
            if why is None and path.is_dir():
                if recursive and path.resolve() not in seen:
                    seen.add(path.resolve())
                    todo.append((path, rel + "/"))
                continue
            if why is None and not path.is_file():
                why = "not a regular file (a FIFO, socket or device)"
            yield path, rel, why


def _distributed(executor, files: list[tuple[Path, str]], model: Any, out_dir: Path | None, resume: bool,
                 settings: dict[str, Any], progress: Progress | None, on_file) -> SummaryRun:
    """summarize_many through an executor: the driver hashes, skips, schedules and writes; workers only
    summarize and hand the results back."""
    from edgekit.artifact import read_manifest
    from edgekit.engine import Engine

    if out_dir is None:
        raise InvalidOptionError("a distributed run needs out= (--out): the driver writes each summary there")
    if isinstance(model, Engine):
        raise InvalidOptionError("a distributed run needs the artifact's path, not an open Engine: each "
                                 "worker opens the model itself")
    model_path = Path(default_model() if model is None else model).resolve()
    manifest = read_manifest(model_path)
    stamp = fingerprint(manifest, settings["n_ctx"], settings["words"], settings["strategy"],
                        settings["chunk_tokens"], settings["overlap"], settings["fmt"])
    done = read_index(out_dir) if resume else {}
    fmt = settings["fmt"]
    records: list[FileRecord] = []
    jobs = []
    for path, rel in files:
        target = out_dir / f"{rel}.{fmt}"
        try:
            digest = file_hash(path)
            size = path.stat().st_size
        except OSError as exc:
            record = FileRecord(str(path), str(target), "failed", None, stamp,
                                f"{path}: cannot be read ({exc.strerror})", name=rel)
            records.append(record)
            _append_index(out_dir, record)
            continue
        if is_done(done.get(rel), digest, stamp, target):
            records.append(FileRecord(str(path), str(target), "skipped", digest, stamp, name=rel))
            continue
        jobs.append({"path": str(path.resolve()), "name": rel, "sha256": digest, "size": size})
    total = len(files)
    for i, record in enumerate(records):
        if on_file is not None:
            on_file(record, i, total)

    def finished(job: dict[str, Any], summary: Summary | None, error: str | None, attempts: int,
                 seconds: float) -> None:
        target = out_dir / f"{job['name']}.{fmt}"
        if summary is not None:
            write_atomic(target, summary.render(fmt))  # written, then recorded: a crash between the two
            status = "ok"  # only redoes this file
        else:
            status = "failed"
        record = FileRecord(job["path"], str(target), status, job["sha256"], stamp, error, attempts,
                            round(seconds, 3), summary, job["name"])
        _append_index(out_dir, record)
        records.append(record)
        if on_file is not None:
            on_file(record, len(records) - 1, total)

    executor.run(model_path, jobs, settings, finished, progress)
    order = {rel: i for i, (_, rel) in enumerate(files)}
    records.sort(key=lambda r: order.get(r.name, 0))
    return SummaryRun(records, str(out_dir), {"path": str(model_path), "format": manifest.get("format")})
