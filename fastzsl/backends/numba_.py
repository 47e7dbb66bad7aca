"""Numba backend: parallel loops over query blocks, float64 accumulation.

The kNN kernel tiles queries x reference rows so one reference tile stays in cache while
a block of queries streams over it; each query keeps a sorted list of its k best
(distance, index) pairs, so a candidate usually costs one compare against the worst.
``knn`` runs that direct kernel (``_knn``) behind a BLAS prefilter (``_knn_gemm``): most
candidates are rejected on a GEMM-expanded distance with a rounding margin, and the rest are
re-ranked by the same direct difference sum, so the results are those of ``_knn`` exactly.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .._threads import blas_single_threaded
from ._base import KernelSet

QUERY_BLOCK = 32
REFERENCE_TILE = 512


@numba.njit(cache=True, inline="always")
def _sqdist(queries, qi, reference, j):
    """Exact squared distance: double sum of squared differences, t in order (the value
    every kNN path of this backend reports, bit for bit)."""
    s = 0.0
    for t in range(queries.shape[1]):
        diff = np.float64(queries[qi, t]) - np.float64(reference[j, t])
        s += diff * diff
    return s


@numba.njit(cache=True, inline="always")
def _insert_sorted(best_d, best_i, row, dist, idx, k):
    # Shift worse entries right; equal distances keep the earlier (lower) index first.
    pos = k - 1
    while pos > 0 and best_d[row, pos - 1] > dist:
        best_d[row, pos] = best_d[row, pos - 1]
        best_i[row, pos] = best_i[row, pos - 1]
        pos -= 1
    best_d[row, pos] = dist
    best_i[row, pos] = idx


@numba.njit(parallel=True, cache=True)
def _knn(queries, reference, k, self_offset, D, I):
    n_q, d = queries.shape
    n_r = reference.shape[0]
    n_blocks = (n_q + QUERY_BLOCK - 1) // QUERY_BLOCK
    for b in numba.prange(n_blocks):
        q0 = b * QUERY_BLOCK
        q1 = min(q0 + QUERY_BLOCK, n_q)
        best_d = np.full((q1 - q0, k), np.inf)
        best_i = np.full((q1 - q0, k), -1, dtype=np.int64)
        for r0 in range(0, n_r, REFERENCE_TILE):
            r1 = min(r0 + REFERENCE_TILE, n_r)
            for qi in range(q0, q1):
                row = qi - q0
                self_index = qi + self_offset if self_offset >= 0 else -1
                worst = best_d[row, k - 1]
                for j in range(r0, r1):
                    if j == self_index:
                        continue
                    s = _sqdist(queries, qi, reference, j)
                    if s < worst:
                        _insert_sorted(best_d, best_i, row, s, j, k)
                        worst = best_d[row, k - 1]
        for row in range(q1 - q0):
            for c in range(k):
                D[q0 + row, c] = best_d[row, c]
                I[q0 + row, c] = best_i[row, c]


# GEMM prefilter + exact re-rank (same scheme and margin as csrc/cpu/knn_cpu.pyx, whose
# docstring derives it): np.dot gives q . r_j for a block of queries x a tile of references in
# the input precision, v_j = ||r_j||^2 - 2 q . r_j, and only candidates with
# v_j <= worst - ||q||^2 + m are re-ranked by the direct difference sum above, in ascending j,
# so the results equal those of ``_knn`` bit for bit.
GEMM_QUERY_BLOCK = 128
GEMM_TILE_ELEMS = 131072  # dot products per block x tile (512 KiB in float32)
GEMM_BEST_BYTES = 16 * 2**20  # cap on the per-block k-best lists (large k: fewer queries)
MARGIN_C = 8.0
SCAN_CHUNK = 32
_NORM_LIMIT = {np.dtype(np.float32): 1e37, np.dtype(np.float64): 1e300}


@numba.njit(parallel=True, cache=True)
def _sqnorms(X, out):
    n, d = X.shape
    for i in numba.prange(n):
        s = 0.0
        for t in range(d):
            x = np.float64(X[i, t])
            s += x * x
        out[i] = s


@numba.njit(cache=True, inline="always")
def _threshold(worst, qn, rmax, scale, eps, tiny):
    # worst = +inf gives +inf: every candidate passes until k are known.
    return worst - qn + scale * (eps * (qn + rmax + worst) + tiny)


@numba.njit(cache=True, inline="always")
def _next_candidate(P, row, rn, r0, thr, start, n):
    # First j in [start, n) with rn[r0 + j] - 2 P[row, j] <= thr (computed in double), or n.
    j = start
    while j < n and j % SCAN_CHUNK != 0:
        if np.float64(rn[r0 + j]) - 2.0 * np.float64(P[row, j]) <= thr:
            return j
        j += 1
    while j + SCAN_CHUNK <= n:
        hit = False
        for t in range(SCAN_CHUNK):
            hit |= np.float64(rn[r0 + j + t]) - 2.0 * np.float64(P[row, j + t]) <= thr
        if hit:
            break
        j += SCAN_CHUNK
    while j < n:
        if np.float64(rn[r0 + j]) - 2.0 * np.float64(P[row, j]) <= thr:
            return j
        j += 1
    return n


@numba.njit(parallel=True, cache=True)
def _knn_gemm(queries, reference, k, self_offset, qn, rn, tile_rmax, qb, tile, eps, tiny, D, I):
    n_q, d = queries.shape
    n_r = reference.shape[0]
    n_blocks = (n_q + qb - 1) // qb
    scale = MARGIN_C * (d + 2)
    for b in numba.prange(n_blocks):
        q0 = b * qb
        q1 = min(q0 + qb, n_q)
        best_d = np.full((q1 - q0, k), np.inf)
        best_i = np.full((q1 - q0, k), -1, dtype=np.int64)
        Qb = queries[q0:q1]
        for r0 in range(0, n_r, tile):
            r1 = min(r0 + tile, n_r)
            nr = r1 - r0
            P = np.dot(Qb, reference[r0:r1].T)
            rmax = tile_rmax[r0 // tile]
            for row in range(q1 - q0):
                qi = q0 + row
                self_index = qi + self_offset if self_offset >= 0 else -1
                worst = best_d[row, k - 1]
                thr = _threshold(worst, qn[qi], rmax, scale, eps, tiny)
                j = _next_candidate(P, row, rn, r0, thr, 0, nr)
                while j < nr:
                    jj = r0 + j
                    if jj != self_index:
                        s = _sqdist(queries, qi, reference, jj)
                        if s < worst:
                            _insert_sorted(best_d, best_i, row, s, jj, k)
                            worst = best_d[row, k - 1]
                            thr = _threshold(worst, qn[qi], rmax, scale, eps, tiny)
                    j = _next_candidate(P, row, rn, r0, thr, j + 1, nr)
        for row in range(q1 - q0):
            for c in range(k):
                D[q0 + row, c] = best_d[row, c]
                I[q0 + row, c] = best_i[row, c]


def knn(queries, reference, k, self_offset):
    D = np.empty((queries.shape[0], k), dtype=queries.dtype)
    I = np.empty((queries.shape[0], k), dtype=np.int64)
    n_q, d = queries.shape
    n_r = reference.shape[0]
    if n_q == 0 or k <= 0:
        return D, I
    if n_r > 0 and d > 0:
        dtype = queries.dtype
        qn = np.empty(n_q)
        rn64 = np.empty(n_r)
        _sqnorms(queries, qn)
        _sqnorms(reference, rn64)
        tile = GEMM_TILE_ELEMS // GEMM_QUERY_BLOCK // (dtype.itemsize // 4)
        n_tiles = (n_r + tile - 1) // tile
        padded = np.zeros(n_tiles * tile)
        padded[:n_r] = rn64
        tile_rmax = padded.reshape(n_tiles, tile).max(axis=1)
        limit = _NORM_LIMIT[dtype]
        if np.isfinite(qn.max()) and np.isfinite(tile_rmax.max()) \
                and qn.max() + tile_rmax.max() <= limit:
            info = np.finfo(dtype)
            # Small query sets: still give every thread a few blocks (min 8 queries each).
            per_block = max(8, -(-n_q // (4 * numba.get_num_threads())))
            qb = int(max(1, min(GEMM_QUERY_BLOCK, GEMM_BEST_BYTES // (16 * k), per_block)))
            with blas_single_threaded():
                _knn_gemm(queries, reference, k, self_offset, qn, rn64.astype(dtype),
                          tile_rmax, qb, tile, float(info.eps), float(info.tiny), D, I)
            return D, I
    _knn(queries, reference, k, self_offset, D, I)
    return D, I


@numba.njit(parallel=True, cache=True)
def _pdist(D, extent, out):
    n, k = D.shape
    for i in numba.prange(n):
        s = 0.0
        for c in range(k):
            s += np.float64(D[i, c])
        out[i] = extent * math.sqrt(s / k)


@numba.njit(cache=True)
def _plof(pdist, ev):
    # 0/0 -> 0 (as dense as the neighbours); x/0 -> +inf (infinitely sparser).
    if ev > 0.0:
        return pdist / ev - 1.0
    return math.inf if pdist > 0.0 else 0.0


@numba.njit(cache=True)
def _probability(plof, nplof):
    if nplof > 0.0:
        ratio = plof / (nplof * math.sqrt(2.0))
    else:
        ratio = math.inf if plof > 0.0 else 0.0
    return max(0.0, math.erf(ratio))


@numba.njit(parallel=True, cache=True)
def _plof_rows(pdist, I, ref_pdist, ev_override, out):
    n, k = I.shape
    use_neighbours = math.isnan(ev_override)
    for i in numba.prange(n):
        if use_neighbours:
            s = 0.0
            for c in range(k):
                s += ref_pdist[I[i, c]]
            ev = s / k
        else:
            ev = ev_override
        out[i] = _plof(pdist[i], ev)


@numba.njit(parallel=True, cache=True)
def _probability_rows(plof, nplof, out):
    for i in numba.prange(plof.shape[0]):
        out[i] = _probability(plof[i], nplof)


@numba.njit(cache=True)
def _nplof(plof, extent):
    s = 0.0
    count = 0
    for value in plof:
        if math.isfinite(value):
            s += value * value
            count += 1
    return extent * math.sqrt(s / count) if count > 0 else 0.0


def loop_fit(D, I, extent):
    n = D.shape[0]
    pdist = np.empty(n)
    _pdist(D, extent, pdist)
    plof = np.empty(n)
    _plof_rows(pdist, I, pdist, math.nan, plof)
    nplof = float(_nplof(plof, extent))
    prob = np.empty(n)
    _probability_rows(plof, nplof, prob)
    return pdist, plof, nplof, prob


def loop_score(D, I, ref_pdist, nplof, extent, ev_override):
    n = D.shape[0]
    pdist = np.empty(n)
    _pdist(D, extent, pdist)
    plof = np.empty(n)
    _plof_rows(pdist, I, ref_pdist, ev_override, plof)
    prob = np.empty(n)
    _probability_rows(plof, nplof, prob)
    return prob


@numba.njit(parallel=True, cache=True)
def _gaussian(F, means, variances, log_weights, thresholds, full,
              L, row_max, row_argmax, row_lse, all_below):
    n, d = F.shape
    n_classes = means.shape[0]
    half_d = 0.5 * d
    for i in numba.prange(n):
        best = -math.inf
        best_c = 0
        lse_max = -math.inf
        lse_sum = 0.0
        below = True
        for c in range(n_classes):
            s = 0.0
            for t in range(d):
                diff = np.float64(F[i, t]) - np.float64(means[c, t])
                s += diff * diff
            var = np.float64(variances[c])
            value = -s / (2.0 * var) - half_d * math.log(2.0 * math.pi * var)
            if full:
                L[i, c] = value
            if value > best:
                best = value
                best_c = c
            if not value < thresholds[c]:
                below = False
            # Online logsumexp: rescale the running sum whenever the maximum grows.
            weighted = value + log_weights[c]
            if weighted == -math.inf:  # a zero-weight class adds nothing (and -inf - -inf is NaN)
                continue
            if weighted > lse_max:
                lse_sum = lse_sum * math.exp(lse_max - weighted) + 1.0
                lse_max = weighted
            else:
                lse_sum += math.exp(weighted - lse_max)
        row_max[i] = best
        row_argmax[i] = best_c
        row_lse[i] = lse_max + math.log(lse_sum)
        all_below[i] = below


def gaussian_loglik(F, means, variances, log_weights, thresholds, full):
    n, n_classes = F.shape[0], means.shape[0]
    L = np.empty((n, n_classes) if full else (0, 0), dtype=F.dtype)
    row_max = np.empty(n, dtype=F.dtype)
    row_argmax = np.empty(n, dtype=np.int64)
    row_lse = np.empty(n, dtype=F.dtype)
    all_below = np.empty(n, dtype=bool)
    _gaussian(F, means, variances, log_weights, thresholds, full,
              L, row_max, row_argmax, row_lse, all_below)
    return (L if full else None), row_max, row_argmax, row_lse, all_below


KERNELS = KernelSet(
    name="numba",
    device="cpu",
    knn=knn,
    loop_fit=loop_fit,
    loop_score=loop_score,
    gaussian_loglik=gaussian_loglik,
)


def is_available():
    return True, ""
