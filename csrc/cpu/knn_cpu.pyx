# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Exact brute-force kNN (squared Euclidean), Cython + OpenMP: GEMM prefilter + exact re-rank.

Results are those of the direct kernel (``knn_direct`` below, the same algorithm as
``fastzsl.backends.numba_._knn``), bit for bit: every distance that is returned is
sum((double(q_t) - double(r_t))^2) accumulated over t = 0..d-1 in order, each query keeps a
sorted list of its k best (distance, index) pairs, a candidate enters only when strictly
better than the current worst, candidates are visited in ascending reference index, and
equal distances therefore keep the lower index first.

What is new is how most candidates are rejected. Blocks of queries run in parallel
(OpenMP); for each tile of reference rows, one BLAS gemm (single-threaded) gives the dot
products P = q . r_j in the input precision, and with norms Q = ||q||^2 and R_j = ||r_j||^2
precomputed once, v_j = R_j - 2 P_j is the expansion of the distance minus Q. A candidate
is re-ranked exactly only when

    v_j <= worst - Q + m,   m = C (d + 2) (eps (Q + Rmax + worst) + tiny),

where worst is the query's current k-th exact distance (+inf until k are known), Rmax the
largest R_j of the tile, eps the machine epsilon and tiny the smallest normal number of the
input dtype, and C = MARGIN_C = 8.

Why m is safe (u = eps / 2 is the unit roundoff of the input dtype, u' that of double,
E = Q + R - 2 P the exact real distance, e the re-ranked double value): the gemm dot product
has |P~ - P| <= gamma_d sum|q_t r_t| <= d u (1 + du) (Q + R) / 2 for any summation order,
FMA or not; R_j rounded to the input dtype and v~ = fl(R~ - 2 P~) add u R and
u |R - 2P| <= 2 u (Q + R); the double norms and the re-rank add |Q~ - Q| <= d u' Q and
|e - E| <= (d + 2) u' E <= 2 (d + 2) u' (Q + R). So if e < worst then
v~ < worst - Q~ + ((d + 3) u + (3d + 4) u') (Q + R) (1 + small), and forming the threshold in
double adds at most 3 u' (worst + Q + m). With C = 8 the margin is 16 (d + 2) u (...) >= 4x
that bound for float64 and >= 10x for float32. Gradual underflow adds at most one unit of
the smallest subnormal per operation (2d + 4 operations), covered by the tiny term many
times over. Inputs are finite (validated by the public API); whenever the norms could make
the gemm overflow the kernel falls back to the direct kernel. A rejected candidate
therefore has e >= worst and would not have entered the list of the direct kernel either,
and since insertions happen in the same order with the same values, the lists are equal.
"""
import numpy as np

cimport cython
from cython.parallel cimport parallel, prange
from libc.float cimport DBL_EPSILON, DBL_MIN, FLT_EPSILON, FLT_MAX, FLT_MIN
from libc.math cimport INFINITY, isfinite, nextafterf
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from openmp cimport omp_get_max_threads

from gemm_tiles cimport gemm_abt

from fastzsl._threads import blas_single_threaded

cdef extern from "knn_kernels.h" nogil:
    Py_ssize_t fz_next_f(const float* p, const float* rn, float thr, Py_ssize_t start,
                         Py_ssize_t n)
    Py_ssize_t fz_next_d(const double* p, const double* rn, double thr, Py_ssize_t start,
                         Py_ssize_t n)

cdef enum:
    # Direct kernel.
    QUERY_BLOCK = 32
    REFERENCE_TILE = 512
    # GEMM kernel: QUERY_BLOCK_GEMM queries x (GEMM_TILE_ELEMS / QUERY_BLOCK_GEMM) float32
    # reference rows (half as many float64 rows): a 512 KiB tile of dot products per thread.
    QUERY_BLOCK_GEMM = 128
    GEMM_TILE_ELEMS = 131072
    # Per-thread k-best lists of the GEMM kernel stay under this many bytes (large k).
    BEST_BYTES = 16777216
    # The GEMM kernel runs when d >= MIN_GEMM_DIM (below that, direct differences are cheap).
    MIN_GEMM_DIM = 1

cdef double MARGIN_C = 8.0
# Norm sums above these could overflow the gemm / v_j in the input dtype: use the direct kernel.
cdef double NORM_LIMIT_F32 = 1e37
cdef double NORM_LIMIT_F64 = 1e300


cdef inline double _sqdist(const cython.floating* a, const cython.floating* b,
                           Py_ssize_t d) noexcept nogil:
    cdef double s = 0.0
    cdef double diff
    cdef Py_ssize_t t
    for t in range(d):
        diff = <double>a[t] - <double>b[t]
        s += diff * diff
    return s


cdef inline double _norm(const cython.floating* a, Py_ssize_t d) noexcept nogil:
    cdef double s = 0.0
    cdef double x
    cdef Py_ssize_t t
    for t in range(d):
        x = <double>a[t]
        s += x * x
    return s


cdef inline void _insert_sorted(double* best_d, int64_t* best_i, Py_ssize_t k,
                                double dist, int64_t idx) noexcept nogil:
    # Shift worse entries right; equal distances keep the earlier (lower) index first.
    cdef Py_ssize_t pos = k - 1
    while pos > 0 and best_d[pos - 1] > dist:
        best_d[pos] = best_d[pos - 1]
        best_i[pos] = best_i[pos - 1]
        pos -= 1
    best_d[pos] = dist
    best_i[pos] = idx


# ----------------------------------------------------------------------------- direct kernel

cdef int _knn_direct_impl(const cython.floating[:, ::1] queries,
                          const cython.floating[:, ::1] reference,
                          Py_ssize_t k, Py_ssize_t self_offset,
                          cython.floating[:, ::1] D, int64_t[:, ::1] I) noexcept:
    """Fills D and I; returns 0, or -1 when a per-thread buffer could not be allocated."""
    cdef Py_ssize_t n_q = queries.shape[0]
    cdef Py_ssize_t d = queries.shape[1]
    cdef Py_ssize_t n_r = reference.shape[0]
    cdef Py_ssize_t n_blocks = (n_q + QUERY_BLOCK - 1) // QUERY_BLOCK
    cdef Py_ssize_t b, q0, q1, qi, row, r0, r1, j, c, self_index
    cdef double s, worst
    cdef double* best_d
    cdef int64_t* best_i
    cdef double* bd
    cdef int64_t* bi
    cdef const cython.floating* qrow
    cdef const cython.floating* rbase
    cdef int failed = 0
    cdef int* failed_p = &failed  # written through a pointer: a plain name would be thread-private

    if n_q == 0 or k <= 0:
        return 0
    rbase = &reference[0, 0] if n_r > 0 else NULL
    best_d = NULL  # set per thread below; initialised so the firstprivate copies are defined
    best_i = NULL

    with nogil, parallel():
        # One pair of buffers per thread, reused by every block that thread runs. Every
        # thread still enters the prange (a worksharing loop must be met by the whole team).
        best_d = <double*>malloc(QUERY_BLOCK * k * sizeof(double))
        best_i = <int64_t*>malloc(QUERY_BLOCK * k * sizeof(int64_t))
        for b in prange(n_blocks, schedule="dynamic"):
            if best_d == NULL or best_i == NULL:
                failed_p[0] = 1  # same value from any thread: benign
                continue
            q0 = b * QUERY_BLOCK
            q1 = q0 + QUERY_BLOCK
            if q1 > n_q:
                q1 = n_q
            for c in range((q1 - q0) * k):
                best_d[c] = INFINITY
                best_i[c] = -1
            r0 = 0
            while r0 < n_r:
                r1 = r0 + REFERENCE_TILE
                if r1 > n_r:
                    r1 = n_r
                for qi in range(q0, q1):
                    row = qi - q0
                    bd = best_d + row * k
                    bi = best_i + row * k
                    qrow = &queries[qi, 0]
                    self_index = qi + self_offset if self_offset >= 0 else -1
                    worst = bd[k - 1]
                    for j in range(r0, r1):
                        if j == self_index:
                            continue
                        s = _sqdist(qrow, rbase + j * d, d)
                        if s < worst:
                            _insert_sorted(bd, bi, k, s, j)
                            worst = bd[k - 1]
                r0 = r1
            for row in range(q1 - q0):
                for c in range(k):
                    D[q0 + row, c] = <cython.floating>best_d[row * k + c]
                    I[q0 + row, c] = best_i[row * k + c]
        free(best_d)
        free(best_i)
    return -1 if failed else 0


# ------------------------------------------------------------------------------- GEMM kernel

cdef inline double _threshold(double worst, double qn, double rmax, double scale,
                              double eps, double tiny) noexcept nogil:
    # worst = +inf gives +inf: every candidate passes until k are known.
    return worst - qn + scale * (eps * (qn + rmax + worst) + tiny)


cdef inline float _up_to_float(double x) noexcept nogil:
    """The smallest float >= x (+inf above FLT_MAX)."""
    cdef float f
    if x > FLT_MAX:
        return INFINITY
    f = <float>x
    if <double>f < x:
        f = nextafterf(f, INFINITY)
    return f


cdef inline Py_ssize_t _next(const cython.floating* p, const cython.floating* rn,
                             double thr, Py_ssize_t start, Py_ssize_t n) noexcept nogil:
    if cython.floating is float:
        return fz_next_f(p, rn, _up_to_float(thr), start, n)
    else:
        return fz_next_d(p, rn, thr, start, n)


cdef void _gemm_block(const cython.floating* qbase, const cython.floating* rbase,
                      const double* qn, const cython.floating* rn_w, const double* tile_rmax,
                      Py_ssize_t q0, Py_ssize_t q1, Py_ssize_t n_r, Py_ssize_t d,
                      Py_ssize_t k, Py_ssize_t self_offset, Py_ssize_t tile,
                      double* best_d, int64_t* best_i, cython.floating* buf,
                      cython.floating* Dout, int64_t* Iout) noexcept nogil:
    """The k best of queries q0..q1-1, written to rows q0..q1-1 of Dout / Iout."""
    cdef Py_ssize_t nq = q1 - q0
    cdef Py_ssize_t r0, r1, nr, t, row, qi, j, jj, c, self_index
    cdef double worst, thr, s, rmax, qnorm
    cdef double* bd
    cdef int64_t* bi
    cdef const cython.floating* p
    cdef const cython.floating* rn_tile
    cdef const cython.floating* qrow
    cdef double eps, tiny
    cdef double scale = MARGIN_C * (d + 2)
    if cython.floating is float:
        eps = FLT_EPSILON
        tiny = FLT_MIN
    else:
        eps = DBL_EPSILON
        tiny = DBL_MIN

    for c in range(nq * k):
        best_d[c] = INFINITY
        best_i[c] = -1
    r0 = 0
    t = 0
    while r0 < n_r:
        r1 = r0 + tile
        if r1 > n_r:
            r1 = n_r
        nr = r1 - r0
        gemm_abt(qbase + q0 * d, rbase + r0 * d, <int>nq, <int>nr, <int>d, buf)
        rmax = tile_rmax[t]
        rn_tile = rn_w + r0
        for row in range(nq):
            qi = q0 + row
            bd = best_d + row * k
            bi = best_i + row * k
            qrow = qbase + qi * d
            qnorm = qn[qi]
            self_index = qi + self_offset if self_offset >= 0 else -1
            p = buf + row * nr
            worst = bd[k - 1]
            thr = _threshold(worst, qnorm, rmax, scale, eps, tiny)
            j = _next(p, rn_tile, thr, 0, nr)
            while j < nr:
                jj = r0 + j
                if jj != self_index:
                    s = _sqdist(qrow, rbase + jj * d, d)
                    if s < worst:
                        _insert_sorted(bd, bi, k, s, jj)
                        worst = bd[k - 1]
                        thr = _threshold(worst, qnorm, rmax, scale, eps, tiny)
                j = _next(p, rn_tile, thr, j + 1, nr)
        r0 = r1
        t += 1
    for row in range(nq):
        for c in range(k):
            Dout[(q0 + row) * k + c] = <cython.floating>best_d[row * k + c]
            Iout[(q0 + row) * k + c] = best_i[row * k + c]


cdef int _knn_gemm_impl(const cython.floating[:, ::1] queries,
                        const cython.floating[:, ::1] reference,
                        Py_ssize_t k, Py_ssize_t self_offset,
                        cython.floating[:, ::1] D, int64_t[:, ::1] I) noexcept:
    """Fills D and I; returns 0, -1 when a buffer could not be allocated, or 1 when the norms
    are too large for the gemm (nothing written: use the direct kernel)."""
    cdef Py_ssize_t n_q = queries.shape[0]
    cdef Py_ssize_t d = queries.shape[1]
    cdef Py_ssize_t n_r = reference.shape[0]
    cdef Py_ssize_t tile = GEMM_TILE_ELEMS // QUERY_BLOCK_GEMM
    cdef Py_ssize_t qb, per_block, n_blocks, n_tiles, b, q0, q1, i, t, r1
    cdef double s, x, qmax, rmax_all, limit
    cdef double* qn = NULL
    cdef double* rn64 = NULL
    cdef double* tile_rmax = NULL
    cdef cython.floating* rn_w = NULL
    cdef double* best_d
    cdef int64_t* best_i
    cdef cython.floating* buf
    cdef const cython.floating* qbase
    cdef const cython.floating* rbase
    cdef int failed = 0
    cdef int* failed_p = &failed
    cdef int rc = 0

    if n_q == 0 or k <= 0:
        return 0
    if cython.floating is double:
        tile = tile // 2
        limit = NORM_LIMIT_F64
    else:
        limit = NORM_LIMIT_F32
    qb = BEST_BYTES // (k * (sizeof(double) + sizeof(int64_t)))
    if qb > QUERY_BLOCK_GEMM:
        qb = QUERY_BLOCK_GEMM
    # Small query sets: still give every thread a few blocks (min 8 queries for the gemm).
    per_block = (n_q + 4 * omp_get_max_threads() - 1) // (4 * omp_get_max_threads())
    if per_block < 8:
        per_block = 8
    if qb > per_block:
        qb = per_block
    if qb < 1:
        qb = 1
    n_blocks = (n_q + qb - 1) // qb
    n_tiles = (n_r + tile - 1) // tile
    qbase = &queries[0, 0]
    rbase = &reference[0, 0]

    qn = <double*>malloc(n_q * sizeof(double))
    rn64 = <double*>malloc(n_r * sizeof(double))
    rn_w = <cython.floating*>malloc(n_r * sizeof(cython.floating))
    tile_rmax = <double*>malloc(n_tiles * sizeof(double))
    if qn == NULL or rn64 == NULL or rn_w == NULL or tile_rmax == NULL:
        rc = -1
    else:
        with nogil:
            for i in prange(n_q, schedule="static"):
                qn[i] = _norm(qbase + i * d, d)
            for i in prange(n_r, schedule="static"):
                rn64[i] = _norm(rbase + i * d, d)
                rn_w[i] = <cython.floating>rn64[i]
            qmax = 0.0
            for i in range(n_q):
                if not (qn[i] <= qmax):  # also catches NaN / inf
                    qmax = qn[i]
            rmax_all = 0.0
            for t in range(n_tiles):
                x = 0.0
                r1 = (t + 1) * tile
                if r1 > n_r:
                    r1 = n_r
                for i in range(t * tile, r1):
                    if not (rn64[i] <= x):
                        x = rn64[i]
                tile_rmax[t] = x
                if not (x <= rmax_all):
                    rmax_all = x
            if not (isfinite(qmax) and isfinite(rmax_all) and qmax + rmax_all <= limit):
                rc = 1
        if rc == 0:
            best_d = NULL
            best_i = NULL
            buf = NULL
            with nogil, parallel():
                best_d = <double*>malloc(qb * k * sizeof(double))
                best_i = <int64_t*>malloc(qb * k * sizeof(int64_t))
                buf = <cython.floating*>malloc(qb * tile * sizeof(cython.floating))
                for b in prange(n_blocks, schedule="dynamic"):
                    if best_d == NULL or best_i == NULL or buf == NULL:
                        failed_p[0] = 1
                        continue
                    q0 = b * qb
                    q1 = q0 + qb
                    if q1 > n_q:
                        q1 = n_q
                    _gemm_block(qbase, rbase, qn, rn_w, tile_rmax, q0, q1, n_r, d, k,
                                self_offset, tile, best_d, best_i, buf, &D[0, 0], &I[0, 0])
                free(best_d)
                free(best_i)
                free(buf)
            if failed:
                rc = -1
    free(qn)
    free(rn64)
    free(rn_w)
    free(tile_rmax)
    return rc


# ---------------------------------------------------------------------------------- wrappers

def _run(queries, reference, k, self_offset, bint direct):
    queries = np.ascontiguousarray(queries)
    reference = np.ascontiguousarray(reference, dtype=queries.dtype)
    cdef Py_ssize_t kk = k
    cdef Py_ssize_t offset = self_offset
    D = np.empty((queries.shape[0], kk), dtype=queries.dtype)
    I = np.empty((queries.shape[0], kk), dtype=np.int64)
    cdef const float[:, ::1] q32, r32
    cdef const double[:, ::1] q64, r64
    cdef float[:, ::1] D32
    cdef double[:, ::1] D64
    cdef int64_t[:, ::1] Iv = I
    cdef int rc = 1
    use_gemm = (not direct and queries.shape[0] > 0 and reference.shape[0] > 0
                and queries.shape[1] >= MIN_GEMM_DIM and kk > 0)
    if queries.dtype == np.float32:
        q32 = queries
        r32 = reference
        D32 = D
        if use_gemm:
            with blas_single_threaded():
                rc = _knn_gemm_impl(q32, r32, kk, offset, D32, Iv)
        if rc == 1:
            rc = _knn_direct_impl(q32, r32, kk, offset, D32, Iv)
    elif queries.dtype == np.float64:
        q64 = queries
        r64 = reference
        D64 = D
        if use_gemm:
            with blas_single_threaded():
                rc = _knn_gemm_impl(q64, r64, kk, offset, D64, Iv)
        if rc == 1:
            rc = _knn_direct_impl(q64, r64, kk, offset, D64, Iv)
    else:
        raise TypeError(f"knn_cpu.knn supports float32 and float64, not {queries.dtype}")
    if rc != 0:
        raise MemoryError("knn_cpu.knn: could not allocate the per-thread kNN buffers")
    return D, I


def knn(queries, reference, k, self_offset):
    """Exact kNN: returns (D, I) with D in the input dtype and I int64 (see _base.KernelSet).

    GEMM prefilter + exact re-rank; results equal those of :func:`knn_direct` bit for bit.
    """
    return _run(queries, reference, k, self_offset, False)


def knn_direct(queries, reference, k, self_offset):
    """The direct-difference kernel (no GEMM prefilter), kept as the fallback and test oracle."""
    return _run(queries, reference, k, self_offset, True)
