"""Batched decoding on llama.cpp: one sequence of one context's cache per stream.

A context of its own is made with one sequence per slot (llama.cpp splits its cache between them, as
its server splits -c among slots); a decode step is one llama_batch holding each decoding stream's
token under its own sequence id and position, and asks for each one's logits. The llama-cpp-python
Llama object keeps the model and tokenizer; its own one-sequence context is freed. Tokens are chosen
by edgekit's sampler (runtimes/sampling.py) from the logits: greedy is llama.cpp's argmax; sampled
streams follow edgekit's order of temperature, top-k, min-p and top-p, not llama.cpp's.
"""

from __future__ import annotations

import numpy as np

from .base import PREFILL_CHUNK
from .batching import StreamBatcher, _Stream


class LlamaBatcher(StreamBatcher):
    def __init__(self, backend, slots: int, n_ctx: int) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaBatch, LlamaContext
        from llama_cpp._utils import suppress_stdout_stderr

        super().__init__(backend, slots, n_ctx // slots)
        llm = backend._llm
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_ctx, params.n_seq_max, params.kv_unified = n_ctx, slots, False
        self._llama = llama_cpp
        with suppress_stdout_stderr(disable=False):  # llama.cpp's notices, as Llama() keeps them off too
            self._ctx = LlamaContext(model=llm._model, params=params, verbose=False)
            self._batch = LlamaBatch(n_tokens=max(PREFILL_CHUNK, slots), embd=0, n_seq_max=1, verbose=False)
        self._vocab = llm.n_vocab()
        llm._ctx.close()  # the one-sequence context's cache: not used from now on

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()

    def _place(self, s: _Stream) -> None:
        taken = {r.row for r in self._rows}
        s.row = next(i for i in range(self.slots) if i not in taken)
        self._ctx.kv_cache_seq_rm(s.row, 0, -1)  # whatever a stream before it (or a failed step) left

    def _release(self, s: _Stream) -> None:
        self._rows.remove(s)
        self._ctx.kv_cache_seq_rm(s.row, 0, -1)

    def _prefill(self, s: _Stream, chunk: list[int]) -> np.ndarray:
        start = s.length - len(chunk)
        return self._run([(t, start + i, s.row, i == len(chunk) - 1) for i, t in enumerate(chunk)])[0]

    def _decode_rows(self, rows: list[_Stream]) -> np.ndarray:
        return self._run([(s.generated[-1], s.length - 1, s.row, True) for s in rows])

    def _run(self, tokens: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """(token, position, sequence, wants logits) in one llama_decode; the logits rows asked for."""
        from edgekit.errors import BackendError

        b = self._batch.batch
        b.n_tokens = len(tokens)
        for i, (token, pos, seq, wants) in enumerate(tokens):
            b.token[i], b.pos[i], b.seq_id[i][0], b.n_seq_id[i], b.logits[i] = token, pos, seq, 1, wants
        code = self._llama.llama_decode(self._ctx.ctx, b)
        if code != 0:
            raise BackendError(f"llama.cpp could not decode a batch of {len(tokens)} tokens (code {code})")
        rows = [i for i, t in enumerate(tokens) if t[3]]
        out = np.empty((len(rows), self._vocab), np.float32)
        for k, i in enumerate(rows):
            out[k] = np.ctypeslib.as_array(self._llama.llama_get_logits_ith(self._ctx.ctx, i),
                                           shape=(self._vocab,))
        return out
