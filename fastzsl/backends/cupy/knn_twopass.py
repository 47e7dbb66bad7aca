"""Two-pass exact kNN on the GPU (``csrc/cuda/knn_twopass.cu``), the CPU scheme of
``csrc/cpu/knn_gemm.pxi`` on cuBLAS: a float32 GEMM screen with a proven error bound, then
an exact double re-rank of every candidate the bound leaves open. The answer is the direct
kernel's (``knn_cuda.cu``) bit for bit: same neighbours, same double distances, ties to the
lower index, self excluded; queries whose candidate lists overflow (many near-ties) are
recomputed by the direct kernel, which stays the oracle.

Pass 1: for query tiles x reference tiles (``TILE_Q`` x ``TILE_R`` float32 dot products,
32 MiB by default, small enough to stay in an H100/H200's 50 MB L2 between the GEMM that
writes it and the filter that reads it), ``cupy.matmul`` computes G = R32 . Q32^T and
``twopass_filter`` keeps each query's L = ``LIST_FACTOR`` k + ``LIST_EXTRA`` smallest
lower bounds s - SAFETY B per segment of the tile's rows, s = |q|^2 + |r|^2 - 2 g the
screened distance (norms in double). Pass 2: ``twopass_rerank_*`` takes T = the largest
upper bound s + SAFETY B of the k candidates with the smallest lower bounds, re-ranks
exactly every candidate whose lower bound is <= T, and flags a query whose list may have
dropped one.

The error bound B (proven for TF32 tensor-core GEMMs, so it holds as well when cuBLAS runs
plain FP32 SGEMM; CuPy uses TF32 only when asked to, e.g. CUPY_TF32=1). Let e(q, r) be the direct
kernel's double distance, Qn, Rn the double squared norms, Rmax = max Rn, d the
dimension, u = 2^-24, u64 = 2^-53, t = 2^-10 (TF32 keeps 10 mantissa bits; 2^-10 covers
truncation as well as rounding), eta = (1 + u)(1 + t) - 1 (float64 input rounded to
float32, then to TF32), gamma = (d + 1) u / (1 - (d + 1) u) (FP32 products and their sum
in any order, split-K included), and alpha = 2 FLT_MIN (subnormals flushed to zero). Then
|s - e| <= B(q, r) for every pair, with

    B(q, r) = c (Qn + Rn) + a(q),   c = c1 + 8 (d + 6) u64,   c1 = (1 + eta)^2 (1 + gamma) - 1,
    a(q)    = 5 alpha sqrt(2 d (Qn + Rmax)) + 8 d alpha,

because |g - q.r| <= c1 |q||r| + (abs. terms) and 2 |q||r| <= Qn + Rn; the 8 (d + 6) u64
term covers the double norms, the two additions of s, e's own rounding against the exact
distance (both <= (d + 2) u64 2 (Qn + Rn)) and the centring (below: the double
differences q - mu are rounded once, which moves e by at most 4 u64 (Qn + Rn)). Here q,
r, Qn, Rn are of the centred vectors q - mu, r - mu (mu: the reference mean, in double).
For d = 64, c ~ 2.0e-3: the window s +- SAFETY B is about +-0.4% of Qn + Rn wide (a bound
for FP32 SGEMM alone would be ~500x narrower; the TF32 one is kept so that either runs).
Why it is exact: k rows have e <= s + B <= T, so the true k-th distance is <= T, and
every row of the answer has s - SAFETY B <= s - B <= e <= T. A segment list that is not full holds every
row of its segment; a full one whose largest lower bound exceeds T dropped only rows
above it; a full one whose largest is <= T may have dropped an answer row: the query
overflows to the direct kernel. The bound is per pair, so one far reference row (large
Rn) widens only its own window.

Inputs whose squared norms exceed ``NORM_LIMIT`` (float32 products could overflow), or
are not finite, go to the direct kernel whole.
"""
from __future__ import annotations

import math

import numpy as np

from . import _loader
from ._launch import SUFFIX, _blocks, _cupy, _launch, _to_cupy
from ._loader import TWOPASS_MAX_SEGMENTS, TWOPASS_THREADS

# --- switch and tunables (module constants, so tests can force each path) -----------------
# "auto": twopass when n_q * n_ref * d >= TWOPASS_MIN_WORK and k <= TWOPASS_MAX_K, else the
# direct kernel; "direct" / "twopass" force one.
KNN_METHOD = "auto"
TWOPASS_MIN_WORK = 2**33  # ~8.6e9 (pair, dimension) terms: below, launches and GEMM tiles cost more
TWOPASS_MAX_K = 256  # the re-rank's insertion is O(k) per candidate, O(k^2) per query
TILE_Q = 4096
TILE_R = 2048
SEGMENTS = 8  # lists per query per tile (parallelism of the filter: TILE_Q * SEGMENTS threads)
LIST_FACTOR = 2
LIST_EXTRA = 32
SAFETY = 2.0
NORM_LIMIT = 1e30  # |q||r| stays far below FLT_MAX, and every float64 element fits float32
TF32_INPUT_EPS = 2.0**-10

# Queries of the last two-pass call that fell back to the direct kernel (benchmarks report it).
LAST_OVERFLOW_ROWS = 0

_U32 = 2.0**-24
_U64 = 2.0**-53
_FLT_MIN = float(np.finfo(np.float32).tiny)


def chosen(Q, reference, k: int) -> bool:
    """Whether the backend's kNN entry runs the two-pass scheme for this problem."""
    if KNN_METHOD == "direct":
        return False
    n_q, d = Q.shape
    n_r = reference.shape[0]
    if n_q == 0 or d < 1 or k < 1 or k > n_r or n_r >= 2**31:  # int32 list indices
        return False
    if KNN_METHOD == "twopass":
        return True
    if KNN_METHOD != "auto":
        raise ValueError(f"KNN_METHOD={KNN_METHOD!r}: expected 'auto', 'direct' or 'twopass'")
    return k <= TWOPASS_MAX_K and n_q * n_r * d >= TWOPASS_MIN_WORK


def error_bound(qn, rmax: float, d: int):
    """(c, a): |screened - exact distance| <= c (Qn + Rn) + a[q] for every pair (module
    docstring); ``qn`` the queries' double squared norms, ``rmax`` the largest Rn."""
    cp = _cupy()
    eta = (1 + _U32) * (1 + TF32_INPUT_EPS) - 1
    gamma = (d + 1) * _U32 / (1 - (d + 1) * _U32)
    c1 = (1 + eta) ** 2 * (1 + gamma) - 1
    alpha = 2 * _FLT_MIN
    return c1 + 8 * (d + 6) * _U64, 5 * alpha * cp.sqrt(2.0 * d * (qn + rmax)) + 8 * d * alpha


def knn(Q, reference, k: int, self_offset: int, direct):
    """(D, I) of CuPy queries Q against ``reference``; ``direct(Q, ref, k, self_offset)``
    is the direct kernel's entry, used for overflowed queries and out-of-range input."""
    cp = _cupy()
    dtype = np.dtype(Q.dtype)
    n_q, d = Q.shape
    R = _to_cupy(reference, dtype)
    n_r = R.shape[0]
    f64 = np.float64
    # The screen sees centred copies: distances do not change, norms (and so the margins,
    # which scale with them) shrink to the spread of the data, not its offset.
    mu = R.astype(f64).mean(axis=0)
    Qc, Rc = Q.astype(f64) - mu, R.astype(f64) - mu
    qn = (Qc * Qc).sum(axis=1)
    rn = (Rc * Rc).sum(axis=1)
    rmax = float(rn.max())
    if not (max(rmax, float(qn.max())) <= NORM_LIMIT):  # also NaN / inf
        return direct(Q, reference, k, self_offset)
    c, a = error_bound(qn, rmax, d)
    w = np.float64(SAFETY * c)
    a = cp.ascontiguousarray(SAFETY * a, dtype=f64)
    Q32 = Qc.astype(np.float32)
    R32 = Rc.astype(np.float32)
    del Qc, Rc

    n_seg = max(1, min(SEGMENTS, TWOPASS_MAX_SEGMENTS))
    L = min(max(LIST_FACTOR * k + LIST_EXTRA, k), n_r)
    list_s = cp.full((n_seg, L, n_q), math.inf, dtype=f64)
    list_i = cp.full((n_seg, L, n_q), -1, dtype=np.int32)
    module = _loader.load_module("knn_twopass")
    filt = module.get_function("twopass_filter")
    self_on = self_offset >= 0
    # One tile buffer for every GEMM: the filter reads it while it is still in L2, and the
    # next GEMM overwrites the same lines (a fresh buffer would be written back to HBM).
    G_buf = cp.empty(min(TILE_Q, n_q) * min(TILE_R, n_r), dtype=np.float32)
    for q0 in range(0, n_q, TILE_Q):
        q1 = min(q0 + TILE_Q, n_q)
        Qt = Q32[q0:q1].T
        for r0 in range(0, n_r, TILE_R):
            r1 = min(r0 + TILE_R, n_r)
            G = G_buf[:(r1 - r0) * (q1 - q0)].reshape(r1 - r0, q1 - q0)  # (rows, queries)
            cp.matmul(R32[r0:r1], Qt, out=G)
            segs = max(1, min(n_seg, r1 - r0))
            _launch(filt, (_blocks(q1 - q0, TWOPASS_THREADS), segs), (TWOPASS_THREADS,), (
                G, np.int64(q1 - q0), np.int64(r1 - r0), np.int64(q0), np.int64(r0), qn, rn,
                w, a, np.int64(self_offset if self_on else 0), np.int32(self_on), np.int32(L),
                np.int64(n_q), list_s, list_i))

    out_d = cp.empty((n_q, k), dtype=f64)
    out_i = cp.empty((n_q, k), dtype=np.int64)
    overflow = cp.empty(n_q, dtype=np.int32)
    _launch(module.get_function(f"twopass_rerank_{SUFFIX[dtype]}"),
            (_blocks(n_q, TWOPASS_THREADS),), (TWOPASS_THREADS,), (
                Q, R, np.int32(d), np.int64(n_q), np.int32(k), np.int32(L), np.int32(n_seg),
                list_s, list_i, qn, rn, w, a, out_d, out_i, overflow))
    D = out_d if dtype == f64 else out_d.astype(dtype)  # float32: rounded once, as direct
    rows = cp.flatnonzero(overflow)
    global LAST_OVERFLOW_ROWS
    LAST_OVERFLOW_ROWS = n_over = int(rows.shape[0])
    if n_over == 0:
        return D, out_i
    Qo = cp.ascontiguousarray(Q[rows])
    if not self_on:  # the overflowed queries in one direct launch, against the device copy
        D[rows], out_i[rows] = direct(Qo, R, k, -1)
    else:
        # Self excluded, queries scattered: their k + 1 nearest with self included, then
        # self dropped (k < n_r here: a list overflows only when full, L >= k entries out
        # of the n_r - 1 rows other than self). The direct kernel orders by (distance,
        # index), so the k left are exactly the k it gives with self excluded.
        Dd, Id = direct(Qo, R, k + 1, -1)
        is_self = Id == (rows + self_offset)[:, None]
        at = cp.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
        cols = cp.arange(k)[None, :]
        cols = cols + (cols >= at[:, None])
        D[rows] = cp.take_along_axis(Dd, cols, axis=1)
        out_i[rows] = cp.take_along_axis(Id, cols, axis=1)
    return D, out_i

