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
        z = logits.astype(np.float64) / o.temperature
        if 0 < o.top_k < z.size:
            kth = np.partition(z, -o.top_k)[-o.top_k]
            z = np.where(z < kth, -np.inf, z)
        p = np.exp(z - z.max())
        p /= p.sum()
        if o.min_p > 0:
            p = np.where(p < o.min_p * p.max(), 0.0, p)
        if o.top_p < 1.0:
            order = np.argsort(-p)
            keep = np.cumsum(p[order]) - p[order] < o.top_p  # smallest prefix reaching top_p
            mask = np.zeros_like(p, dtype=bool)
            mask[order[keep]] = True
            p = np.where(mask, p, 0.0)
        p /= p.sum()
        return int(self.rng.choice(p.size, p=p))
