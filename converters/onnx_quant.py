"""Block-wise weight quantization into ONNX Runtime's MatMulNBits layout (4 or 8 bits).

Layout (com.microsoft.MatMulNBits): B is uint8 [N, k_blocks, block_size * bits / 8] with codes
packed low nibble first along K; scales are [N * k_blocks] in the activation type; zero points are
uint8, packed the same way for 4 bits. Dequantized value = (code - zero_point) * scale.

Asymmetric blocks (the range always includes 0, which MatMulNBits' integer zero point needs) take
min/max, or, given each input feature's importance (its mean square on calibration text), search
their scale: for each of SEARCH_FRACTIONS of the min/max range, the zero point it implies, one
importance-weighted least-squares refit of the scale to the codes it gives, and the candidate with
the least weighted squared error wins.

GPTQ (quantize_gptq) rounds a matrix block by block instead, each block's output error on the
calibration text re-fit by the blocks not yet rounded; each block's scale is still searched, on the
weights as the earlier blocks left them. The calibration text is far shorter than the matrices are
wide, so the Hessian is heavily damped and the compensation solved in token space.

Symmetric blocks store no zero points: MatMulNBits and GatherBlockQuantized then use 2^(bits-1)
(128 for 8 bits): 8 bits less per block for a coarser grid.

docs/measurements.md has the figures behind each of these choices.
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
        return (self.packed.nbytes + self.scales.nbytes
                + (0 if self.zero_points is None else self.zero_points.nbytes))


# Fractions of a block's min/max range tried by the scale search (each then refit once).
SEARCH_FRACTIONS = (1.0, 0.95, 0.9, 0.85)  # on a tie the first (min/max) stays
_SEARCH_ROWS = 128  # rows per chunk: a chunk's temporaries stay in cache
# quantize_gptq's ridge, times the mean diagonal of X^T X: the calibration text is 155 tokens, so the
# Hessian is far from full rank and GPTQ's usual 0.01 over-fits it (docs/measurements.md)
GPTQ_DAMPING = 3.0
GPTQ_FRACTIONS = (1.0, 0.95, 0.9)  # what quantize_gptq's per-block search tries (docs/measurements.md)


def quantize_blockwise(w: np.ndarray, bits: int, block_size: int = 32, symmetric: bool = False,
                       importance: np.ndarray | None = None,
                       scale_dtype: type = np.float32) -> BlockQuantized:
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
    return _packed(codes, scale, zp, bits, block_size, k)


def _packed(codes: np.ndarray, scale: np.ndarray, zp: np.ndarray, bits: int, block_size: int,
            k: int) -> BlockQuantized:
    """Asymmetric codes [N, k_blocks, block] with their scales and zero points in MatMulNBits' layout."""
    n, k_blocks = codes.shape[:2]
    zp = zp.reshape(n, k_blocks).astype(np.uint8)
    if bits == 4:
        packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
        if k_blocks % 2:
            zp = np.concatenate([zp, np.zeros((n, 1), np.uint8)], axis=1)
        zp = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
    else:
        packed = codes
    return BlockQuantized(packed, scale.reshape(-1).astype(np.float32), zp.reshape(-1),
                          bits, block_size, n, k)


def quantize_gptq(w: np.ndarray, bits: int, block_size: int, inputs: np.ndarray,
                  damping: float = GPTQ_DAMPING, scale_dtype: type = np.float32) -> BlockQuantized:
    """Quantize a [N, K] weight block by block, each block's error re-fit by the blocks still to come
    (GPTQ, one block at a time), on calibration inputs [T, K] (the rows of x in y = x @ w.T).

    The K x K Hessian of GPTQ is X^T X + damping * mean(diag) * I: with T well under K it is a low-rank
    update of the identity, so the compensation is solved in the T-dimensional space instead. After a
    block B is rounded with error E (rounded minus current), the remaining columns R move by
    -E X_B^T (lambda I + X_R X_R^T)^-1 X_R: a ridge regression of the output error B left on the
    calibration tokens onto R's inputs. That is kept as one [N, T] matrix A (R's current weights are
    w_R - A X_R), so each block costs O(N T block) and nothing is K x K. Each block's scale and zero
    point are searched (as quantize_blockwise's) with the block's diagonal of that Hessian as importance.
    Rows are independent: large matrices run in chunks of rows on threads.
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    n, k = w.shape
    if inputs.ndim != 2 or inputs.shape[1] != k:
        raise ValueError(f"calibration inputs must be [tokens, {k}], got {list(inputs.shape)}")
    k_blocks = -(-k // block_size)
    width = k_blocks * block_size
    x = np.zeros((inputs.shape[0], width), np.float64)
    x[:, :k] = inputs
    padded = np.zeros((n, width), np.float32)
    padded[:, :k] = w
    squares = (x * x).sum(axis=0)
    ridge = damping * float(squares[:k].mean()) or 1.0  # inputs all zero: nothing to re-fit
    importance = (squares + ridge).astype(np.float32).reshape(k_blocks, 1, block_size)
    # Per block b: its inputs X_b and F_b = S_b^-1 X_b, S_b = ridge I + X_R X_R^T over the blocks R
    # after b. Built from the last block back, S^-1 updated by Woodbury (rank block_size each): two
    # small products per block instead of a T x T solve (half the time).
    steps: list[tuple[np.ndarray, np.ndarray | None]] = []
    s_inv = np.eye(x.shape[0]) / ridge
    for b in range(k_blocks - 1, -1, -1):
        xb = x[:, b * block_size:(b + 1) * block_size]
        fit = s_inv @ xb
        steps.append((xb.astype(np.float32), fit.T.astype(np.float32) if b + 1 < k_blocks else None))
        if b:
            s_inv -= fit @ np.linalg.solve(np.eye(block_size) + xb.T @ fit, fit.T)
    steps.reverse()
    qmax = (1 << bits) - 1

    def rows(r: int, r_end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = r_end - r
        a = np.zeros((m, x.shape[0]), np.float32)
        codes = np.empty((m, k_blocks, block_size), np.uint8)
        scales, zps = np.empty((m, k_blocks, 1), np.float32), np.empty((m, k_blocks, 1), np.float32)
        for b, (xb, fit) in enumerate(steps):
            cur = padded[r:r_end, b * block_size:(b + 1) * block_size] - a @ xb
            blk = cur[:, None, :]
            scale, zp = _search_chunk(blk, importance[b], qmax, scale_dtype, GPTQ_FRACTIONS)
            c = np.clip(np.round(blk / scale) + zp, 0, qmax)
            codes[:, b], scales[:, b], zps[:, b] = c[:, 0], scale[:, 0], zp[:, 0]
            if fit is not None:
                a += ((c[:, 0] - zp[:, 0]) * scale[:, 0] - cur) @ fit
        return codes, scales, zps

    # Chunks of 1024 rows or more: below that, two threads' numpy calls on small arrays contend for
    # the GIL and take longer than one (576 rows: 0.19 s on two threads, 0.11 s on one).
    workers = max(1, min(4, os.cpu_count() or 1, n // 1024))
    step = -(-n // workers)
    # One BLAS thread: our row chunks already fill the cores, and OpenBLAS's idle threads spin on
    # them after every small product (SmolLM2 int4 build: 12-15 s with them, 9.6-10 s without).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        if workers == 1:
            parts = [rows(0, n)]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                parts = list(pool.map(lambda r: rows(r, min(n, r + step)), range(0, n, step)))
    codes, scales, zps = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return _packed(codes, scales, zps, bits, block_size, k)


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


def _searched(blocks: np.ndarray, weights: np.ndarray, qmax: int,
              scale_dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) per block with the least importance-weighted squared error."""
    chunks = range(0, blocks.shape[0], _SEARCH_ROWS)

    def one(r: int) -> tuple[np.ndarray, np.ndarray]:
        return _search_chunk(blocks[r:r + _SEARCH_ROWS], weights, qmax, scale_dtype)

    # numpy releases the GIL in its loops: chunks on two threads take ~0.6x the time of one
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, chunks))
    return np.concatenate([s for s, _ in results]), np.concatenate([z for _, z in results])


def _search_chunk(x: np.ndarray, a: np.ndarray, qmax: int, scale_dtype: type,
                  fractions: tuple[float, ...] = SEARCH_FRACTIONS) -> tuple[np.ndarray, np.ndarray]:
    lo, span = _range(x)
    ax = a * x
    axx = (ax * x).sum(axis=-1, keepdims=True)
    best_err = np.full(lo.shape, np.inf, np.float32)
    best_scale, best_zp = _min_max(x, qmax, scale_dtype)  # kept where no error compares (non-finite)
    c = np.empty_like(x)
    a = np.broadcast_to(a, x.shape)

    def sums(scale: np.ndarray, zp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """sum(a c x) and sum(a c^2) for the codes c = clip(round(x / scale), -zp, qmax - zp)."""
        np.divide(x, scale, out=c)
        np.rint(c, out=c)
        np.clip(c, -zp, qmax - zp, out=c)
        # einsum: one pass per sum and no temporaries (1.5-1.7x the speed of multiply-then-sum)
        return (np.einsum("...k,...k->...", ax, c)[..., None],
                np.einsum("...k,...k,...k->...", c, c, a)[..., None])

    for fraction in fractions:
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
