"""Batched decoding on edgekit's ONNX decoder graphs: one row of shared KV buffers per stream.

The buffers are [slots, kv heads, window, head dim] per layer, and GroupQueryAttention reads each row's
own length from the attention mask, so rows of different lengths go in one step. The decoding streams
sit in rows 0..d-1 (a contiguous view of the buffers is the batch) and the one being prefilled in row d;
a stream that ends hands its row to the last decoding one (its cache copied over).
"""

from __future__ import annotations

import numpy as np

from .batching import StreamBatcher, _Stream


class OnnxBatcher(StreamBatcher):
    """Streams on an OnnxRuntimeBackend (edgekit's own graph: shared KV layout and logits_to_keep)."""

    def __init__(self, backend, slots: int, window: int) -> None:
        super().__init__(backend, slots, window)
        shape = (slots, backend._kv_heads, self.window, backend._head_dim)
        self._kv = [np.zeros(shape, backend._kv_type) for _ in range(2 * backend._layers)]

    def _place(self, s: _Stream) -> None:
        s.row = len(self._rows)

    def _prefill(self, s: _Stream, chunk: list[int]) -> np.ndarray:
        return self._run(s.row, s.row + 1, [chunk], [s.length])[0]

    def _decode_rows(self, rows: list[_Stream]) -> np.ndarray:
        return self._run(0, len(rows), [[s.generated[-1]] for s in rows], [s.length for s in rows])

    def _release(self, s: _Stream) -> None:
        """The decoding streams stay in rows 0..d-1 and the one prefilling after them: the last decoding
        stream moves into s's row, and the prefilling one into the row that leaves."""
        prefilling = self._prefilling()
        hole = s.row
        for moving in self._movers(s, prefilling):
            self._move(moving, hole)
            hole, moving.row = moving.row, hole
            self._rows[moving.row] = moving
        self._rows.pop()

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
