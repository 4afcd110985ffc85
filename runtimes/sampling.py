"""Next-token choice from logits, for backends that do not sample natively (ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import GenerationOptions

# the penalties look at the last this many generated tokens (not the prompt's), as llama.cpp's
# sampler does through llama-cpp-python: the same artifact samples alike on both backends
PENALTY_LAST_N = 64


class Sampler:
    """The penalties (repetition, frequency, presence) over the last PENALTY_LAST_N tokens; then greedy
    when temperature is 0, otherwise temperature, top-k, top-p, min-p."""

    def __init__(self, options: GenerationOptions) -> None:
        self.options = options
        self.rng = np.random.default_rng(options.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int]) -> int:
        """The next token; history: the tokens generated so far (what the penalties look at)."""
        o = self.options
        penalized = o.repeat_penalty != 1.0 or o.frequency_penalty != 0 or o.presence_penalty != 0
        if penalized and len(history):
            logits = logits.copy()
            seen, counts = np.unique(np.asarray(history[-PENALTY_LAST_N:], dtype=np.int64),
                                     return_counts=True)
            vals = logits[seen]
            if o.repeat_penalty != 1.0:
                vals = np.where(vals > 0, vals / o.repeat_penalty, vals * o.repeat_penalty)
            logits[seen] = vals - counts * o.frequency_penalty - o.presence_penalty
        if o.temperature <= 0:
            return int(np.argmax(logits))
        ids, p = self.distribution(logits)
        return int(ids[min(np.searchsorted(np.cumsum(p), self.rng.random() * p.sum(), side="right"),
                           ids.size - 1)])

    def distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, their probabilities) that a sampled token is drawn from, penalties applied:
        temperature, top-k, softmax, min-p, top-p. Only the candidates are sorted (top-k's, or the
        few likeliest that already reach top-p), never the whole vocabulary, and the exponentials are
        float32 (sums float64): this runs on every token."""
        o = self.options
        z = np.asarray(logits, dtype=np.float32)
        ids: np.ndarray | None = None  # None: every token id, in order
        if 0 < o.top_k < z.size:
            kth = z[np.argpartition(z, -o.top_k)[-o.top_k:]].min()
            ids = np.flatnonzero(z >= kth)  # ties with the k-th stay, as a threshold keeps them
            z = z[ids]
        z = z * np.float32(1.0 / o.temperature)
        e = np.exp(z - z.max())
        p = e / e.sum(dtype=np.float64)
        if o.min_p > 0:
            keep = np.flatnonzero(p >= o.min_p * p.max())
            ids, p = (keep if ids is None else ids[keep]), p[keep]
        if o.top_p < 1.0:
            order = _likeliest(p, o.top_p)
            ranked = p[order]
            keep = np.cumsum(ranked) - ranked < o.top_p  # the smallest prefix reaching top_p
            order = order[keep]
            ids, p = (order if ids is None else ids[order]), ranked[keep]
        if ids is None:
            ids = np.arange(p.size)
        return ids, p / p.sum()


def _likeliest(p: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of p from the likeliest down, as many as the top-p prefix can need: the 64 likeliest
    when they already hold top_p of the mass (almost always), else all of them."""
    if p.size > 256:
        few = np.argpartition(p.astype(np.float32), p.size - 64)[-64:]  # float32: twice as fast
        if p[few].sum() >= top_p:
            return few[np.argsort(-p[few], kind="stable")]
    return np.argsort(-p, kind="stable")
