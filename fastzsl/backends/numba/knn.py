"""Exact kNN by direct differences, parallel over blocks of queries.

Queries x reference rows are tiled so that one reference tile stays in cache while a block
of queries streams over it. Each query keeps a sorted list of its k best (distance, index)
pairs, so a candidate usually costs one compare against the worst. A distance is the
float64 sum of squared differences in dimension order, the same value the cython kernels
report, so the two backends return identical results.

The k-best lists are preallocated by :func:`knn`, one row per query, and each block of the
parallel loop touches only its own rows: no ``prange`` body allocates.
"""
from __future__ import annotations

import numba
import numpy as np

QUERY_BLOCK = 32
REFERENCE_TILE = 512


@numba.njit(cache=True, inline="always")
def _sqdist(queries, qi, reference, j):
    """Squared distance: float64 sum of squared differences, dimensions in order."""
    s = 0.0
    for t in range(queries.shape[1]):
        diff = np.float64(queries[qi, t]) - np.float64(reference[j, t])
        s += diff * diff
    return s


@numba.njit(cache=True, inline="always")
def _insert_sorted(best_d, best_i, row, dist, idx):
    """Insert (dist, idx) into row ``row`` of the sorted k-best lists, dropping the worst;
    equal distances keep the earlier (lower) index first."""
    pos = best_d.shape[1] - 1
    while pos > 0 and best_d[row, pos - 1] > dist:
        best_d[row, pos] = best_d[row, pos - 1]
        best_i[row, pos] = best_i[row, pos - 1]
        pos -= 1
    best_d[row, pos] = dist
    best_i[row, pos] = idx


@numba.njit(parallel=True, cache=True)
def _knn(queries, reference, self_offset, best_d, best_i):
    """Fill the k-best lists ``best_d`` (float64, all +inf) and ``best_i`` (all -1), one row
    per query, k >= 1. Query i skips reference row ``i + self_offset`` when
    ``self_offset >= 0``."""
    n_q = queries.shape[0]
    n_r = reference.shape[0]
    last = best_d.shape[1] - 1
    n_blocks = (n_q + QUERY_BLOCK - 1) // QUERY_BLOCK
    for b in numba.prange(n_blocks):
        q0 = b * QUERY_BLOCK
        q1 = min(q0 + QUERY_BLOCK, n_q)
        for r0 in range(0, n_r, REFERENCE_TILE):
            r1 = min(r0 + REFERENCE_TILE, n_r)
            for qi in range(q0, q1):
                self_index = qi + self_offset if self_offset >= 0 else -1
                worst = best_d[qi, last]
                for j in range(r0, r1):
                    if j == self_index:
                        continue
                    s = _sqdist(queries, qi, reference, j)
                    if s < worst:
                        _insert_sorted(best_d, best_i, qi, s, j)
                        worst = best_d[qi, last]


def knn(queries, reference, k, self_offset):
    n_q = queries.shape[0]
    best_d = np.full((n_q, k), np.inf)
    I = np.full((n_q, k), -1, dtype=np.int64)
    if n_q > 0 and k > 0:
        _knn(queries, reference, self_offset, best_d, I)
    return best_d.astype(queries.dtype, copy=False), I
