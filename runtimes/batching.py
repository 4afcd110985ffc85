"""Several generations decoded together on one model: iteration-level batching, for any backend.

On a CPU, one stream's decode step reads every weight for one row of activations; several rows in the
same step cost little more (decode is bound by memory, not arithmetic). Streams join and leave between
steps. Each has a place for its cache (a row of ONNX's KV buffers, a sequence of llama.cpp's cache:
onnx_batch.py, llama_batch.py). The decoding streams come first and the one being prefilled, if any,
after them; its prompt goes in chunks between decode steps, so the others keep flowing.

No thread of its own: whichever reader needs a token and finds none runs the next step for everyone
(the others wait on a condition), so one thread reading several streams in turn works too.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import PREFILL_CHUNK, GenerationOptions, TokenEvent, token_logprobs
from .sampling import Sampler

MIN_WINDOW = 64  # the fewest tokens a stream's cache may hold


def stream_window(current: int, slots: int, n_ctx: int) -> int:
    """The tokens each of `slots` streams keeps when a backend decoding `current` streams now splits
    its `n_ctx`-token context between them; an InvalidOptionError where that cannot be."""
    from edgekit.errors import InvalidOptionError

    if current > 1:
        raise InvalidOptionError(f"this engine already decodes {current} streams together; "
                                 "load the artifact again for another count")
    if n_ctx // slots < MIN_WINDOW:
        raise InvalidOptionError(f"parallel={slots} splits the {n_ctx}-token context into {n_ctx // slots} "
                                 f"tokens per stream (at least {MIN_WINDOW} are needed); raise n_ctx or "
                                 "lower parallel")
    return n_ctx // slots


@dataclass(eq=False)
class _Stream:
    prompt: list[int]
    options: GenerationOptions
    sampler: Sampler
    generated: list[int] = field(default_factory=list)
    events: deque = field(default_factory=deque)
    length: int = 0  # tokens in its row of the cache
    row: int = -1  # -1: waiting for a row
    ended: bool = False  # no more tokens will come (its last event is queued)
    left: bool = False  # its reader went away: free the row at the next step
    error: BaseException | None = None
    constraint: Any = None  # a constrain.Constraint when options.grammar is set


class StreamBatcher(ABC):
    """Streams on `backend`, `slots` at a time (more wait for a slot), each with `window` tokens of
    cache. A backend's batcher says where a stream's cache lives (_place, _release) and runs the model
    (_prefill, _decode_rows); the scheduling is here."""

    def __init__(self, backend, slots: int, window: int) -> None:
        self.backend, self.slots, self.window = backend, slots, window
        self._cond = threading.Condition()
        self._stepping = False
        self._rows: list[_Stream] = []  # the decoding streams, then the one prefilling (if any)
        self._waiting: deque[_Stream] = deque()

    # ---- what a backend's batcher provides ----------------------------------------------------
    @abstractmethod
    def _place(self, s: _Stream) -> None:
        """Give s (not yet in self._rows) a place for its cache: s.row."""

    @abstractmethod
    def _release(self, s: _Stream) -> None:
        """Take s out of self._rows and free its cache (called holding the lock)."""

    @abstractmethod
    def _prefill(self, s: _Stream, chunk: list[int]) -> np.ndarray:
        """Run the next chunk of s's prompt (its cache then holds s.length tokens); the last logits row."""

    @abstractmethod
    def _decode_rows(self, rows: list[_Stream]) -> np.ndarray:
        """One token for each stream of rows (s.generated[-1], its cache then holding s.length tokens),
        all in one pass; their logits rows [len(rows), vocab]."""

    # ---- the reader's side --------------------------------------------------------------------
    def generate(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[TokenEvent]:
        stream = _Stream(list(prompt_ids), options, Sampler(options),
                         constraint=self.backend._start_constraint(options))
        with self._cond:
            self._waiting.append(stream)
        try:
            while True:
                event = self._next(stream)
                if event is None:
                    return
                yield event
        finally:
            with self._cond:
                stream.left = True
                if stream in self._waiting:
                    self._waiting.remove(stream)
                self._cond.notify_all()

    def _next(self, stream: _Stream) -> TokenEvent | None:
        while True:
            with self._cond:
                while not stream.events and not stream.ended and self._stepping:
                    self._cond.wait()
                if stream.events:
                    return stream.events.popleft()
                if stream.error is not None:
                    raise stream.error
                if stream.ended:
                    return None
                self._stepping = True  # this reader runs the next step for everyone
            try:
                self._step()
            except BaseException as exc:  # the streams of the step end with it; those waiting go on
                from edgekit.errors import BackendError

                with self._cond:
                    for s in list(self._rows):
                        if s is not stream:  # this reader raises exc itself; the others get their own
                            s.error = BackendError(f"a batched step failed: {type(exc).__name__}: {exc}")
                            s.error.__cause__ = exc
                        s.ended, s.row = True, -1
                    self._rows.clear()  # caches left as they are: a stream placed later starts afresh
                raise
            finally:
                with self._cond:
                    self._stepping = False
                    self._cond.notify_all()

    # ---- one step ------------------------------------------------------------------------------
    def _step(self) -> None:
        with self._cond:
            for s in [s for s in self._rows if s.left or s.ended]:
                self._release(s)
                s.row = -1
            prefilling = self._prefilling()
            if prefilling is None and self._waiting and len(self._rows) < self.slots:
                prefilling = self._waiting.popleft()
                self._place(prefilling)
                self._rows.append(prefilling)
            decoding = self._rows[: len(self._rows) - (prefilling is not None)]
        if prefilling is not None:
            self._prefill_chunk(prefilling)
        if decoding:
            self._decode(decoding)

    def _prefilling(self) -> _Stream | None:
        last = self._rows[-1] if self._rows else None
        return last if last is not None and last.length < len(last.prompt) else None

    def _prefill_chunk(self, s: _Stream) -> None:
        # chunks at fixed positions (multiples of PREFILL_CHUNK), as a stream alone is prefilled
        chunk = s.prompt[s.length : s.length + PREFILL_CHUNK - s.length % PREFILL_CHUNK]
        s.length += len(chunk)
        logits = self._prefill(s, chunk)
        if s.length == len(s.prompt):  # the whole prompt is in: its first token
            self._emit(s, logits)

    def _decode(self, rows: list[_Stream]) -> None:
        for s in rows:
            s.length += 1
        for s, row in zip(rows, self._decode_rows(rows), strict=True):
            self._emit(s, row)

    def _emit(self, s: _Stream, logits: np.ndarray) -> None:
        from edgekit.errors import BackendError

        o, constraint = s.options, s.constraint
        try:
            token = s.sampler(logits if constraint is None else constraint.mask(logits), s.generated)
            end = (not o.ignore_eos and self.backend.is_end(token))
            if constraint is not None and not end:
                constraint.accept(token)
        except BackendError as exc:  # this stream's grammar failed: it ends, the others go on
            with self._cond:
                s.error, s.ended = exc, True
            return
        with self._cond:
            if not end:
                piece = self.backend.token_bytes(token)
                s.events.append(TokenEvent(token, piece) if o.logprobs is None else
                                TokenEvent(token, piece, *token_logprobs(logits, token, o.logprobs)))
                s.generated.append(token)
            if (end or len(s.generated) >= o.max_tokens or s.length + 1 >= self.window
                    or (constraint is not None and constraint.finished)):
                s.ended = True
