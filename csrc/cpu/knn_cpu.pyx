# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Exact brute-force kNN (squared Euclidean), Cython + OpenMP: GEMM prefilter + exact re-rank.

Results are those of the direct kernel (``knn_direct`` in knn_direct.pxi, the same algorithm
as ``fastzsl.backends.numba.knn._knn``), bit for bit: every distance that is returned is
e = sum((double(q_t) - double(r_t))^2) accumulated over t = 0..d-1 in order, and each query
gets the k smallest (e, index) pairs in lexicographic order (the direct kernel visits
candidates in ascending index and admits one only when strictly better than its k-th, which
is the same set and order: equal distances keep the lower index first).

How the two-pass kernels get there. With norms Q = ||q||^2 and R_j = ||r_j||^2 (double, computed
once) and dot products P_j = q . r_j from a gemm on cache-sized tiles (input precision,
single-threaded inside OpenMP: float32 on AVX-512 CPUs by the tiles of knn_f32_tiles.h, else
BLAS), v_j = R_j - 2 P_j (input precision) approximates e_j - Q.
Pass 1 keeps, per query, the L >= k + LIST_EXTRA smallest v_j seen with their indices (one
SIMD compare per entry against the list's largest rejects almost every candidate). Pass 2
takes T = the k-th smallest kept v and the margin M = 2 SAFETY b + 4 u' (|T| + Q + Rmax)
(b below with R = Rmax, the largest R_j; SAFETY = 2): every kept candidate with v_j <= T + M
gets its exact e_j, and the k lexicographically smallest (e_j, j) are the answer. When a full
list's largest entry is itself <= T + M (near-ties beyond L candidates), the query is
rescanned instead: one more gemm against every reference tile collects all candidates with
v_j <= T + M (any gemm's v_j is within b, so the argument below holds for them too) and
those are re-ranked; beyond max(RESCAN_CAP, 2L) of them the direct kernel's scan answers.

Why that is exact. Let u = eps / 2 be the unit roundoff of the input dtype and u' that of
double. For one candidate, |v_j - (e_j - Q)| <= b = ((d + 3) u + (3 d + 4) u') (Q + R_j)
(1 + 2 (d + 2) u) + (2 d + 4) tiny: the gemm dot product has |P~ - P| <= gamma_d sum|q_t r_t|
<= d u (1 + 2du) (Q + R) / 2 for any summation order, FMA or not; R_j (double, then rounded to
the input dtype) adds d u' R + u R; v~ = fl(R~ - 2 P~) adds u |R - 2P| <= 2 u (Q + R); the
double re-rank adds |e - E| <= (d + 2) u' E <= 2 (d + 2) u' (Q + R) (E the exact real
distance); gradual underflow adds at most one unit of the smallest subnormal per operation
(2d + 4 of them), under the tiny term (the smallest normal number of the input dtype). Then:
the k kept candidates with v <= T have exact distances <= Q + T + b, so the k-th smallest
exact distance e_(k) <= Q + T + b, and every member j of the answer has
v_j <= e_j - Q + b <= T + 2b, below T + M with a factor SAFETY to spare (forming T + M in
double is covered by the 4 u' term). A list only drops a candidate whose v is >= its largest
entry at that time, which is >= its final largest entry; so if the final largest entry of a
full list is above T + M, no member of the answer was dropped, all of them pass the filter,
and the exact re-rank of this superset of the answer returns the answer (in a rescan, every
candidate within T + M is collected, a superset by the same argument). Inputs are finite
(validated by the public API); whenever the norms could make the gemm overflow the kernels
fall back to the direct kernel.

``knn`` runs query blocks in parallel, each against all reference tiles; with fewer query
blocks than threads it splits the reference tiles across the threads instead, each thread
keeping its own lists, which pass 2 merges (knn_split.pxi: the argument above holds for
each list). ``reference_norms`` gives the R_j of one reference to reuse across calls
(``knn(..., prepared=)``). ``rerank`` is pass 2's exact re-rank for candidates found by
another method (the k-d tree of ``fastzsl.neighbors.KDTreeSearch``). ``knn_self`` (the
self-join: every row of X among the other rows, what a LoOP fit needs) computes each pair of
row blocks once: the tile G = X_a X_b^T serves block a's points along its rows and block b's
along its columns, half the gemm work. Its pairs run in rounds of pairs that share no block
(a round-robin schedule), so the pairs of a round run in parallel and each point keeps one
list. Pass 1's visiting order differs from the direct kernel's, which the lexicographic
pass 2 makes irrelevant. ``SelfJoin`` runs the same join a pair of row ranges at a time
(ranges of unequal block counts pair up in rounds of cyclic shifts), so that only two
ranges' lists need be in memory.

``knn_screen32`` (knn_screen32.pxi) is float64 kNN with pass 1 in float32 on the rows
rounded as each tile is packed and pass 2 in float64, its margin widened by the rounding
(the float32 screen of fastzsl/backends/_knn_screen.py in one kernel, with no float32 copy
of the reference); rows whose list overflows are left to the caller.

``bf16_screen`` (knn_bf16.pxi) is pass 1 on rows rounded to bfloat16, with AVX512_BF16 dot
products at twice the float32 FMA rate (or their portable emulation): its lists are
certified and re-ranked by fastzsl/backends/_knn_bf16.py, which proves that step.
"""
import contextlib
import os

import numpy as np

cimport cython
from cython.parallel cimport parallel, prange
from libc.float cimport DBL_EPSILON, DBL_MIN, FLT_EPSILON, FLT_MAX, FLT_MIN
from libc.math cimport INFINITY, fabs, nextafterf
from libc.stdint cimport int64_t, uint32_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memmove
from cpython.pyport cimport PY_SSIZE_T_MAX
from openmp cimport omp_get_max_threads, omp_get_thread_num

from gemm_tiles cimport (FZ_F32_NR, FZ_F64_NR, FZ_TILES_AVX2, FZ_TILES_AVX512,
                         FZ_TILES_PORTABLE, fz_f32_pack_panels,
                         fz_f32_dots, fz_f32_pack_panels_rounded, fz_f32_tile,
                         fz_tiles_cpu_kernels, gemm_abt, pack_panels, tile_abt)
from omp_team cimport team_size
from scipy.linalg.cython_blas cimport dgemv, sgemv

from fastzsl._threads import blas_single_threaded

cdef extern from "knn_kernels.h" nogil:
    enum: FZ_KNN_CHUNK
    uint32_t fz_row_mask_f(const float* p, const float* rn, float thr, Py_ssize_t n)
    uint32_t fz_row_mask_d(const double* p, const double* rn, double thr, Py_ssize_t n)
    uint32_t fz_col_mask_f(const float* g, float ra, const float* lim, Py_ssize_t n)
    uint32_t fz_col_mask_d(const double* g, double ra, const double* lim, Py_ssize_t n)
    int fz_lowest_bit(uint32_t m)

cdef enum:
    # Pass-1 lists keep k + LIST_EXTRA candidates per query (knn and knn_self).
    LIST_EXTRA = 8
    # The two-pass kernels run when d >= MIN_GEMM_DIM (below that, direct differences are cheap).
    MIN_GEMM_DIM = 1

# The kernels by scheme, each file a textual part of this module (they share its cimports,
# the knn_kernels.h declarations above and each other's helpers, in this order).
include "knn_direct.pxi"
include "knn_twopass.pxi"
include "knn_split.pxi"
include "knn_screen32.pxi"
include "knn_self.pxi"
include "knn_bf16.pxi"


# ---------------------------------------------------------------------------------- wrappers

include "floating_dispatch.pxi"  # _floating_key


def _run_typed(const cython.floating[:, ::1] queries,
               const cython.floating[:, ::1] reference, Py_ssize_t k,
               Py_ssize_t self_offset, bint direct, cython.floating[:, ::1] D,
               int64_t[:, ::1] I, const cython.floating[::1] rn, double rmax):
    """Fills D and I: the two-pass kernel unless ``direct`` (or it does not apply), else the
    direct one. ``rn``: the reference norms from reference_norms, or empty."""
    cdef int rc = 1
    cdef const cython.floating* rn_cached = NULL
    if (not direct and queries.shape[0] > 0 and reference.shape[0] > 0
            and queries.shape[1] >= MIN_GEMM_DIM and k > 0):
        if rn.shape[0] == reference.shape[0]:
            rn_cached = &rn[0]
        with blas_single_threaded():
            rc = _knn_twopass_impl(queries, reference, k, self_offset, rn_cached, rmax, D, I)
    if rc == 1:
        rc = _knn_direct_impl(queries, reference, k, self_offset, D, I)
    if rc != 0:
        raise MemoryError("knn_cpu.knn: could not allocate the per-thread kNN buffers")


def _run(queries, reference, k, self_offset, bint direct, prepared=None):
    queries = np.ascontiguousarray(queries)
    reference = np.ascontiguousarray(reference, dtype=queries.dtype)
    key = _floating_key(queries.dtype, "knn_cpu.knn supports float32 and float64")
    rn, rmax = _EMPTY[key], 0.0
    if prepared is not None and prepared[0].dtype == queries.dtype:
        rn, rmax = prepared
    cdef Py_ssize_t kk = k
    cdef Py_ssize_t offset = self_offset
    D = np.empty((queries.shape[0], kk), dtype=queries.dtype)
    I = np.empty((queries.shape[0], kk), dtype=np.int64)
    _run_typed[key](queries, reference, kk, offset, direct, D, I, rn, rmax)
    return D, I


_EMPTY = {"float": np.empty(0, dtype=np.float32), "double": np.empty(0, dtype=np.float64)}


def knn(queries, reference, k, self_offset, prepared=None):
    """Exact kNN: returns (D, I) with D in the input dtype and I int64 (see _base.KernelSet).

    GEMM prefilter + exact re-rank; results equal those of :func:`knn_direct` bit for bit.
    ``prepared``: ``reference_norms(reference)`` of this very reference (unchanged since),
    which saves a pass over it per call.
    """
    return _run(queries, reference, k, self_offset, False, prepared)


def reference_norms(reference):
    """What ``knn(..., prepared=)`` reuses across calls on one reference: (its squared norms
    in its dtype, their largest in double), or None when a norm is not finite."""
    reference = np.ascontiguousarray(reference)
    rn = np.empty(reference.shape[0], dtype=reference.dtype)
    key = _floating_key(reference.dtype, "knn_cpu.reference_norms supports float32 and float64")
    rmax = _reference_norms_typed[key](reference, rn)
    return None if rmax is None else (rn, rmax)


def rounded_rows(X):
    """(fl32(X), reference_norms(fl32(X))) of a float64 X in one parallel pass (each row's
    norm taken while it is in cache; the copy's pages are touched by every thread, where
    NumPy's astype touches them from one), bit for bit what the two give; (fl32(X), None)
    when a norm of fl32(X) is not finite (X beyond float32's range, or not finite)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    out = np.empty(X.shape, dtype=np.float32)
    rn = np.empty(X.shape[0], dtype=np.float32)
    rmax = _rounded_rows_impl(X, out, rn)
    return out, (None if rmax is None else (rn, rmax))


def rounded_norms(X):
    """``reference_norms(fl32(X))`` of a float64 X, bit for bit, without the float32 copy
    (what ``knn_screen32`` takes as ``prepared32``): None when a norm of fl32(X) is not
    finite."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    rn = np.empty(X.shape[0], dtype=np.float32)
    rmax = _rounded_norms_impl(X, rn)
    return None if rmax is None else (rn, rmax)


def screen32_applies(n_queries, n_reference, k, d):
    """Whether ``knn_screen32`` runs a search of these shapes (else it returns None)."""
    return bool(_screen32_applies(n_queries, n_reference, k, d, omp_get_max_threads()))


def knn_screen32(queries, reference, k, self_offset, prepared32):
    """Exact kNN of float64 rows by a float32 pass 1 on the rows rounded as they are packed
    and the float64 kernel's pass 2 (knn_screen32.pxi proves it): (D, I, failed), D and I
    bit for bit ``knn``'s float64 answer in every row where ``failed`` (bool) is False; the
    failed rows (a pass-1 list overflowed by near-ties) are the caller's to answer. None
    where it does not apply (``screen32_applies`` false, or norms too large for float32
    products). ``prepared32``: ``rounded_norms(reference)`` (not None)."""
    queries = np.ascontiguousarray(queries, dtype=np.float64)
    reference = np.ascontiguousarray(reference, dtype=np.float64)
    rn, rmax = prepared32
    if rn.dtype != np.float32 or rn.shape != (reference.shape[0],):
        raise ValueError("knn_cpu.knn_screen32: prepared32 must be rounded_norms(reference)")
    cdef float[::1] rnv = rn
    cdef Py_ssize_t kk = k
    if not screen32_applies(queries.shape[0], reference.shape[0], kk, queries.shape[1]):
        return None  # before the outputs (the kernel checks again, for its own callers)
    D = np.empty((queries.shape[0], kk), dtype=np.float64)
    I = np.empty((queries.shape[0], kk), dtype=np.int64)
    failed = np.zeros(queries.shape[0], dtype=np.uint8)
    with blas_single_threaded():  # pass 1's gemm (without the f32 tiles) inside OpenMP
        rc = _knn_screen32_impl(queries, reference, kk, self_offset, &rnv[0], rmax, D, I,
                                failed)
    if rc == 1:
        return None
    if rc != 0:
        raise MemoryError("knn_cpu.knn_screen32: could not allocate the per-thread buffers")
    return D, I, failed.view(bool)


def _unit_rows_typed(const cython.floating[:, ::1] X, cython.floating[:, ::1] out,
                     unsigned char[::1] zero):
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], i, t
    cdef double norm
    if n == 0 or d == 0:
        zero[:] = 1
        return
    with nogil:
        for i in prange(n, schedule="static"):
            norm = sqrt(_norm(&X[i, 0], d))
            zero[i] = norm == 0
            if norm == 0:
                norm = 1.0
            for t in range(d):
                out[i, t] = <cython.floating>(<double>X[i, t] / norm)


def unit_rows(X):
    """(X's rows scaled to unit length, which rows are all zeros): the kernels' double sum
    of squares in dimension order (``_norm``), its square root, each entry divided by it in
    double and rounded to X's dtype; rows of zeros stay zeros. The NumPy reference
    (``fastzsl.neighbors._metrics``) sums in another order: the norms agree within
    (d + 1) units of double's roundoff, the results within one unit in the last place of
    float32 and a few of float64. One pass over X in parallel, where NumPy's takes a
    float64 copy and several passes on one core."""
    X = np.ascontiguousarray(X)
    key = _floating_key(X.dtype, "knn_cpu.unit_rows supports float32 and float64")
    out = np.empty_like(X)
    zero = np.empty(X.shape[0], dtype=np.uint8)
    _unit_rows_typed[key](X, out, zero)
    return out, zero.view(bool)


def knn_direct(queries, reference, k, self_offset):
    """The direct-difference kernel (no GEMM prefilter): the two-pass kernel's fallback and the
    test oracle."""
    return _run(queries, reference, k, self_offset, True)


def knn_self(X, k, on_progress=None):
    """Exact kNN of every row of X among the other rows: equal to ``knn(X, X, k, 0)`` bit for
    bit, with half the gemm work (each pair of row blocks once).

    ``on_progress(fraction_done)`` is called about 100 times. Returns None, doing nothing
    else, when the candidate lists would exceed SELF_JOIN_MAX_BYTES, when X is empty or
    k < 1, or when its norms are too large for the gemm: use ``knn`` then (or ``SelfJoin``
    a range of rows at a time).
    """
    X = np.ascontiguousarray(X)
    _floating_key(X.dtype, "knn_cpu.knn_self supports float32 and float64")
    if X.shape[0] * (k + LIST_EXTRA) * (X.dtype.itemsize + 8) > SELF_JOIN_MAX_BYTES:
        return None
    join = SelfJoin.open(X, k)
    if join is None:
        return None
    everything = (0, X.shape[0])
    lists = join.new_lists(X.shape[0])
    join.pair(everything, everything, lists, lists, on_progress)
    return join.finish(everything, lists)


class SelfJoin:
    """The self-join of X's rows (what ``knn_self`` computes) in pieces: pass 1 runs on a
    pair of row ranges at a time, so only those ranges' candidate lists need be in memory.

    For ranges R_0, R_1, ... that partition the rows, ``pair(R_a, R_b, lists_a, lists_b)``
    for every a <= b (each once, in any order) leaves every range's lists complete, and
    ``finish(R_a, lists_a)`` then returns its rows' answers: the rows of ``knn_self(X, k)``,
    bit for bit (pass 2's exact, lexicographic re-rank makes the order of the pairs and the
    partition irrelevant). Lists come from ``new_lists`` and are updated in place.
    """

    def __init__(self, X, k, norms, key):
        """Use ``open``."""
        self.X, self.k, self._norms, self._key = X, k, norms, key

    @classmethod
    def open(cls, X, k):
        """The join of X (C-contiguous float32 or float64; not copied) for k neighbours, or
        None where it does not apply (X empty, k < 1, or norms too large for the gemm)."""
        X = np.ascontiguousarray(X)
        key = _floating_key(X.dtype, "knn_cpu.SelfJoin supports float32 and float64")
        if X.shape[0] == 0 or X.shape[1] < MIN_GEMM_DIM or k < 1:
            return None
        norms = _self_norms_typed[key](X)
        return None if norms is None else cls(X, int(k), norms, key)

    def new_lists(self, n_rows):
        """Empty candidate lists for n_rows rows: (values, indices)."""
        L = self.k + LIST_EXTRA
        return (np.full((n_rows, L), np.inf, dtype=self.X.dtype),
                np.full((n_rows, L), -1, dtype=np.int64))

    def _check(self, rows, lists):
        start, stop = int(rows[0]), int(rows[1])
        if not 0 <= start < stop <= self.X.shape[0]:
            raise ValueError(f"knn_cpu.SelfJoin: rows must be (start, stop) with 0 <= start "
                             f"< stop <= {self.X.shape[0]}, not {rows}")
        values, indices = lists
        shape = (stop - start, self.k + LIST_EXTRA)
        if not (values.shape == shape and indices.shape == shape
                and values.dtype == self.X.dtype and indices.dtype == np.int64):
            raise ValueError(f"knn_cpu.SelfJoin: the lists of rows {start}..{stop - 1} must "
                             f"be {shape} {self.X.dtype} and int64 (from new_lists), not "
                             f"{values.shape} {values.dtype} and {indices.shape} "
                             f"{indices.dtype}")
        return start, stop

    def pair(self, rows_a, rows_b, lists_a, lists_b, on_progress=None):
        """Pass 1 of every pair of points, one in ``rows_a`` and one in ``rows_b``
        ((start, stop) ranges, equal or disjoint), into both sides' lists.
        ``on_progress(fraction of this pair)`` is called about 100 times."""
        a0, a1 = self._check(rows_a, lists_a)
        b0, b1 = self._check(rows_b, lists_b)
        if (a0, a1) == (b0, b1):
            lists_b = lists_a
        elif a0 < b1 and b0 < a1:
            raise ValueError(f"knn_cpu.SelfJoin: the ranges {rows_a} and {rows_b} overlap; "
                             "a pair is one range twice or two disjoint ones")
        _self_pair_typed[self._key](self.X, self._norms[1], a0, a1, b0, b1, lists_a[0],
                                    lists_a[1], lists_b[0], lists_b[1], on_progress)

    def finish(self, rows, lists):
        """(D, I) of ``rows`` from their complete lists (pass 2)."""
        start, stop = self._check(rows, lists)
        qn, rn, rmax = self._norms
        return _self_finish_typed[self._key](self.X, qn, rn, rmax, self.k, start, stop,
                                             lists[0], lists[1])


def _rerank_typed(const cython.floating[:, ::1] queries,
                  const cython.floating[:, ::1] reference, const int64_t[:, ::1] cand,
                  Py_ssize_t k, const int64_t[::1] skip, double[:, ::1] bd,
                  int64_t[:, ::1] bi):
    cdef Py_ssize_t n = queries.shape[0]
    cdef Py_ssize_t d = queries.shape[1]
    cdef Py_ssize_t m = cand.shape[1]
    cdef Py_ssize_t i, c, nc
    cdef double* dist = NULL
    cdef int64_t* kept = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed
    if n == 0 or k <= 0:
        return
    if m == 0:
        for i in range(n):
            _clear_best(&bd[i, 0], &bi[i, 0], k)
        return
    with nogil, parallel():
        dist = <double*>malloc(m * sizeof(double))
        kept = <int64_t*>malloc(m * sizeof(int64_t))
        for i in prange(n, schedule="static"):
            if dist == NULL or kept == NULL:
                failed_p[0] = 1
                continue
            _clear_best(&bd[i, 0], &bi[i, 0], k)
            nc = 0
            for c in range(m):
                if cand[i, c] >= 0 and cand[i, c] != skip[i]:
                    kept[nc] = cand[i, c]
                    nc = nc + 1
            _sqdists(&queries[i, 0], &reference[0, 0], d, kept, nc, dist)
            for c in range(nc):
                _insert_lex(&bd[i, 0], &bi[i, 0], k, dist[c], kept[c])
        free(dist)
        free(kept)
    if failed:
        raise MemoryError("knn_cpu.rerank: could not allocate the per-thread buffers")


def rerank(queries, reference, cand, k, skip=None):
    """The k lexicographically smallest (exact distance, index) among each query's candidate
    reference rows ``cand[i, :]`` (entries < 0 are no candidate; leaving out row
    ``skip[i]``, query i's own, when ``skip`` is given): (distances as float64, int64
    indices), each of shape (n, k).

    The distances are the kernels' own (``_sqdist``: double sum of squared differences in
    dimension order), so a candidate set that contains the brute-force answer gives it bit
    for bit. Unfilled slots (fewer than k candidates) are (+inf, -1).
    """
    queries = np.ascontiguousarray(queries)
    reference = np.ascontiguousarray(reference, dtype=queries.dtype)
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    bd = np.empty((queries.shape[0], k), dtype=np.float64)
    bi = np.empty((queries.shape[0], k), dtype=np.int64)
    if skip is None:
        skip = np.full(queries.shape[0], -1, dtype=np.int64)
    skip = np.ascontiguousarray(skip, dtype=np.int64)
    key = _floating_key(queries.dtype, "knn_cpu.rerank supports float32 and float64")
    _rerank_typed[key](queries, reference, cand, k, skip, bd, bi)
    return bd, bi
