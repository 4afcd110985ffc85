"""Several generations decoded together on one ONNX decoder: iteration-level batching.

On a CPU, one stream's decode step reads every weight for one row of activations; several rows in the
same step cost little more (decode is bound by memory, not arithmetic). Streams join and leave between
steps. Each has a row of the shared KV buffers ([slots, kv heads, window, head dim] per layer), and
GroupQueryAttention reads each row's own length from the attention mask, so rows of different lengths
go in one step. The decoding streams sit in rows 0..d-1 (a contiguous view is the batch); the one stream
being prefilled, if any, sits in row d and is prefilled in chunks between decode steps, so the others
keep flowing. A stream that ends hands its row to the last one (its cache copied over).

No thread of its own: whichever consumer needs a token and finds none runs the next step for everyone
(the others wait on a condition), so one thread reading several streams in turn works too.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .base import PREFILL_CHUNK, GenerationOptions, TokenEvent, token_logprobs
from .sampling import Sampler

MIN_WINDOW = 64  # the fewest tokens a stream's row may hold


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


class Batcher:
    """Streams on `backend` (an OnnxRuntimeBackend), `slots` at a time; more wait for a row."""

    def __init__(self, backend, slots: int) -> None:
        self.backend, self.slots = backend, slots
        self.window = backend.context_length  # each row's tokens
        self._cond = threading.Condition()
        self._stepping = False
        self._rows: list[_Stream] = []  # index = row: decoding streams, then the one prefilling
        self._waiting: deque[_Stream] = deque()
        shape = (slots, backend._kv_heads, self.window, backend._head_dim)
        self._kv = [np.zeros(shape, backend._kv_type) for _ in range(2 * backend._layers)]

    # ---- the reader's side --------------------------------------------------------------------
    def generate(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[TokenEvent]:
        stream = _Stream(list(prompt_ids), options, Sampler(options))
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
            except BaseException as exc:  # every stream in the step sees it, not only this reader
                with self._cond:
                    for s in [*self._rows, *self._waiting]:
                        s.error, s.ended = exc, True
                    self._rows.clear()
                    self._waiting.clear()
                raise
            finally:
                with self._cond:
                    self._stepping = False
                    self._cond.notify_all()

    # ---- one step ------------------------------------------------------------------------------
    def _step(self) -> None:
        with self._cond:
            for s in [s for s in self._rows if s.left or s.ended]:
                self._free(s)
            prefilling = self._rows[-1] if self._rows and self._rows[-1].length < len(
                self._rows[-1].prompt) else None
            if prefilling is None and self._waiting and len(self._rows) < self.slots:
                prefilling = self._waiting.popleft()
                prefilling.row = len(self._rows)
                self._rows.append(prefilling)
            decoding = self._rows[: len(self._rows) - (prefilling is not None)]
        if prefilling is not None:
            self._prefill_chunk(prefilling)
        if decoding:
            self._decode(decoding)

    def _prefill_chunk(self, s: _Stream) -> None:
        chunk = s.prompt[s.length : s.length + PREFILL_CHUNK]
        s.length += len(chunk)
        logits = self._run(s.row, s.row + 1, [chunk], [s.length])
        if s.length == len(s.prompt):  # the whole prompt is in: its first token
            self._emit(s, logits[0])

    def _decode(self, rows: list[_Stream]) -> None:
        feed = [[s.generated[-1]] for s in rows]
        for s in rows:
            s.length += 1
        logits = self._run(0, len(rows), feed, [s.length for s in rows])
        for s, row in zip(rows, logits, strict=True):
            self._emit(s, row)

    def _emit(self, s: _Stream, logits: np.ndarray) -> None:
        o = s.options
        token = s.sampler(logits, s.generated)
        end = (not o.ignore_eos and self.backend.is_end(token))
        with self._cond:
            if not end:
                piece = self.backend.token_bytes(token)
                s.events.append(TokenEvent(token, piece) if o.logprobs is None else
                                TokenEvent(token, piece, *token_logprobs(logits, token, o.logprobs)))
                s.generated.append(token)
            if end or len(s.generated) >= o.max_tokens or s.length + 1 >= self.window:
                s.ended = True

    def _free(self, s: _Stream) -> None:
        """Take s out of its row (called holding the lock). The decoding streams stay in rows 0..d-1 and
        the one prefilling after them: the last decoding stream moves into the hole, and the prefilling
        one into the row that leaves."""
        prefilling = self._rows[-1] if self._rows[-1].length < len(self._rows[-1].prompt) else None
        hole = s.row
        for moving in self._movers(s, prefilling):
            self._move(moving, hole)
            hole, moving.row = moving.row, hole
            self._rows[moving.row] = moving
        self._rows.pop()
        s.row = -1

    def _movers(self, s: _Stream, prefilling: _Stream | None) -> list[_Stream]:
        """Who moves, in order, to fill s's row: the last decoding stream (unless it is s), then the
        prefilling one (unless it is s)."""
        decoding = self._rows[: len(self._rows) - (prefilling is not None)]
        out = [decoding[-1]] if decoding and decoding[-1] is not s and s is not prefilling else []
        if prefilling is not None and prefilling is not s:
            out.append(prefilling)
        return out

    def _move(self, stream: _Stream, row: int) -> None:
        """Copy stream's cache (its tokens so far) into `row`."""
        n = stream.length
        for kv in self._kv:
            kv[row, :, :n] = kv[stream.row, :, :n]

    def _run(self, start: int, stop: int, ids: list[list[int]], lengths: list[int]) -> np.ndarray:
        """Rows start..stop-1 take `ids` (as many per row), each then holding `lengths` tokens; their
        last logits rows [rows, vocab]."""
        b = self.backend
        ort = b._ort
        mask = np.zeros((stop - start, max(lengths)), np.int64)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
        binding = b._sess.io_binding()
        binding.bind_output("logits", "cpu")  # bound first: get_outputs()[0]
        binding.bind_cpu_input("input_ids", np.asarray(ids, np.int64))
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_cpu_input("logits_to_keep", np.ones(1, np.int64))
        for kv, past, present in zip(self._kv, b._kv_names, b._present_names, strict=True):
            rows = ort.OrtValue.ortvalue_from_numpy(kv[start:stop])  # a view: written in place
            binding.bind_ortvalue_input(past, rows)
            binding.bind_ortvalue_output(present, rows)
        b._sess.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()[:, -1]
