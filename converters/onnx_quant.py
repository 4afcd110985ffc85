"""Block-wise weight quantization into ONNX Runtime's MatMulNBits layout (4 or 8 bits).

Layout (com.microsoft.MatMulNBits): B is uint8 [N, k_blocks, block_size * bits / 8] with codes
packed low nibble first along K; scales are [N * k_blocks] in the activation type; zero points are
uint8, packed the same way for 4 bits. Dequantized value = (code - zero_point) * scale.

Asymmetric blocks (the range always includes 0, which MatMulNBits' integer zero point needs) take
min/max, or, given each input feature's importance (its mean square on calibration text), search
their scale: for each of SEARCH_FRACTIONS of the min/max range, the zero point it implies, one
importance-weighted least-squares refit of the scale to the codes it gives, and the candidate with
the least weighted squared error wins. Off-grid SmolLM2 int4, mean KL over bench/fidelity.py's three
texts: min/max 0.115, searched 0.104 (the real graph). In fake-quantized trials (0.112 for min/max):
these four fractions 0.099; eleven fractions, zero point +-1 and two refits 0.095 for eight times
the work; no refit 0.110; the same search unweighted 0.101. In the real graph six fractions
(0.8-1.05) gave 0.101, eight (0.75-1.1) 0.101, six with zero point +-1 0.102: within noise, for
1.5-3x the search time. An earlier unweighted search that only shrank the range made the model
worse (it clips the weights whose inputs are largest). HQQ-style optimized float zero points (which
MatMulNBits accepts) gained only 0.350 -> 0.344 for 7 MB more.

Symmetric blocks store no zero points: MatMulNBits and GatherBlockQuantized then use 2^(bits-1)
(128 for 8 bits). That saves 8 bits per 8-bit block for a coarser grid: small next to int4's 4-bit
error, but measurable in an all-8-bit model (off-grid SmolLM2 int8: mean KL 0.0069 -> 0.0088).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass
class BlockQuantized:
    packed: np.ndarray  # uint8 [N, k_blocks, blob]
    scales: np.ndarray  # float32 [N * k_blocks]
    zero_points: np.ndarray | None  # uint8 [N * ceil(k_blocks * bits / 8)]; None: symmetric
    bits: int
    block_size: int
    n: int
    k: int

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + (0 if self.zero_points is None else self.zero_points.nbytes)


# Fractions of a block's min/max range tried by the scale search (each then refit once).
SEARCH_FRACTIONS = (1.0, 0.95, 0.9, 0.85)  # on a tie the first (min/max) stays
_SEARCH_ROWS = 128  # rows per chunk: a chunk's temporaries stay in cache


def quantize_blockwise(w: np.ndarray, bits: int, block_size: int = 32, symmetric: bool = False,
                       importance: np.ndarray | None = None, scale_dtype: type = np.float32) -> BlockQuantized:
    """Quantize a [N, K] weight (rows = output features) block-wise along K.

    importance: [K] weight of each input feature's error (mean square of that input); given, the
    asymmetric blocks' scales and zero points are searched (module docstring), else min/max.
    scale_dtype: the type the scales are stored in (float16 halves their bytes); codes are
    computed against the rounded scales.
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    n, k = w.shape
    k_blocks = -(-k // block_size)
    padded = np.zeros((n, k_blocks * block_size), dtype=np.float32)
    padded[:, :k] = w
    blocks = padded.reshape(n, k_blocks, block_size)
    qmax = (1 << bits) - 1
    if symmetric:
        mid = 1 << (bits - 1)
        scale = _stored(np.abs(blocks).max(axis=-1, keepdims=True) / (mid - 1), scale_dtype)
        codes = np.clip(np.round(blocks / scale) + mid, 0, qmax).astype(np.uint8)
        packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8) if bits == 4 else codes
        return BlockQuantized(packed, scale.reshape(-1), None, bits, block_size, n, k)
    if importance is None:
        scale, zp = _min_max(blocks, qmax, scale_dtype)
    else:
        weights = np.zeros(k_blocks * block_size, np.float32)
        # no input weighs nothing: one silent on a short calibration text may not be silent later
        weights[:k] = importance + 0.01 * float(np.mean(importance))
        scale, zp = _searched(blocks, weights.reshape(k_blocks, block_size), qmax, scale_dtype)
    codes = np.clip(np.round(blocks / scale) + zp, 0, qmax).astype(np.uint8)
    zp = zp.reshape(n, k_blocks).astype(np.uint8)
    if bits == 4:
        packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
        if k_blocks % 2:
            zp = np.concatenate([zp, np.zeros((n, 1), np.uint8)], axis=1)
        zp = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
    else:
        packed = codes
    return BlockQuantized(packed, scale.reshape(-1), zp.reshape(-1), bits, block_size, n, k)


def _stored(scale: np.ndarray, dtype: type) -> np.ndarray:
    """Scales as they will be stored (float32 values of `dtype`); never 0 nor below its range."""
    tiny = np.finfo(dtype).smallest_subnormal
    return np.maximum(np.where(scale == 0, 1.0, scale), tiny).astype(dtype).astype(np.float32)


def _range(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.minimum(blocks.min(axis=-1, keepdims=True), 0.0)
    return lo, np.maximum(blocks.max(axis=-1, keepdims=True), 0.0) - lo


def _min_max(blocks: np.ndarray, qmax: int, scale_dtype: type) -> tuple[np.ndarray, np.ndarray]:
    lo, span = _range(blocks)
    scale = _stored(span / qmax, scale_dtype)
    return scale, np.clip(np.round(-lo / scale), 0, qmax)


def _searched(blocks: np.ndarray, weights: np.ndarray, qmax: int, scale_dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) per block with the least importance-weighted squared error."""
    chunks = range(0, blocks.shape[0], _SEARCH_ROWS)

    def one(r: int) -> tuple[np.ndarray, np.ndarray]:
        return _search_chunk(blocks[r:r + _SEARCH_ROWS], weights, qmax, scale_dtype)

    # numpy releases the GIL in its loops: chunks on two threads take ~0.6x the time of one
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, chunks))
    return np.concatenate([s for s, _ in results]), np.concatenate([z for _, z in results])


def _search_chunk(x: np.ndarray, a: np.ndarray, qmax: int, scale_dtype: type) -> tuple[np.ndarray, np.ndarray]:
    lo, span = _range(x)
    ax = a * x
    axx = (ax * x).sum(axis=-1, keepdims=True)
    best_err = np.full(lo.shape, np.inf, np.float32)
    best_scale, best_zp = _min_max(x, qmax, scale_dtype)  # kept where no error compares (non-finite)
    c, t = np.empty_like(x), np.empty_like(x)

    def sums(scale: np.ndarray, zp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """sum(a c x) and sum(a c^2) for the codes c = clip(round(x / scale), -zp, qmax - zp)."""
        np.divide(x, scale, out=c)
        np.rint(c, out=c)
        np.maximum(c, -zp, out=c)
        np.minimum(c, qmax - zp, out=c)
        np.multiply(ax, c, out=t)
        num = t.sum(axis=-1, keepdims=True)
        np.multiply(c, c, out=t)
        np.multiply(t, a, out=t)
        return num, t.sum(axis=-1, keepdims=True)

    for fraction in SEARCH_FRACTIONS:
        scale = _stored(span * (fraction / qmax), scale_dtype)
        zp = np.clip(np.round(-lo / scale), 0, qmax)
        num, den = sums(scale, zp)
        fit = (num > 0) & (den > 0)  # least squares for the scale given these codes
        scale = np.where(fit, _stored(num / np.where(fit, den, 1.0), scale_dtype), scale)
        num, den = sums(scale, zp)
        err = scale * scale * den - 2 * scale * num + axx  # sum(a (scale c - x)^2), expanded
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_zp = np.where(better, zp, best_zp)
    return best_scale, best_zp


def dequantize(q: BlockQuantized) -> np.ndarray:
    """Inverse of quantize_blockwise (for tests and fidelity checks)."""
    n, k_blocks = q.n, q.packed.shape[1]
    if q.zero_points is None:
        codes = (np.stack([q.packed & 0x0F, q.packed >> 4], axis=-1).reshape(n, k_blocks, q.block_size)
                 if q.bits == 4 else q.packed)
        zp = np.full((n, k_blocks), 1 << (q.bits - 1))
    elif q.bits == 4:
        codes = np.stack([q.packed & 0x0F, q.packed >> 4], axis=-1).reshape(n, k_blocks, q.block_size)
        zp = np.stack([q.zero_points & 0x0F, q.zero_points >> 4], axis=-1).reshape(n, -1)[:, :k_blocks]
    else:
        codes = q.packed
        zp = q.zero_points.reshape(n, k_blocks)
    values = (codes.astype(np.float32) - zp[..., None]) * q.scales.reshape(n, k_blocks, 1)
    return values.reshape(n, -1)[:, : q.k]
