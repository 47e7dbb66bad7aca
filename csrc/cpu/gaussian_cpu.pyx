# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Isotropic Gaussian log-likelihoods with fused row reductions, Cython + OpenMP.

L[i, c] = -||F_i - mu_c||^2 / (2 var_c) - d/2 log(2 pi var_c); per row: max, first argmax,
logsumexp(L + log_weights) and all_c L < threshold_c; optionally the (n, C) matrix.

``gaussian_loglik`` (the backend kernel) works in GEMM form: OpenMP over tiles of rows,
per tile one single-threaded product of the centred rows with the centred means (in the
input precision: BLAS, or on AVX-512 / AVX2 CPUs the FMA tiles of knn_f32_tiles.h with the means
packed once per call; the route is knn_cpu's, f32_tiles_code), then the row
reductions of csrc/cpu/gaussian_kernels.h in double, recomputing by direct differences
every entry whose certified error bound exceeds the dtype's accuracy target and every
near-tie a decision depends on. The bound and targets
are derived in fastzsl/backends/_gaussian_gemm.py. Where the classes fit one vector (at
most 16) and d is small, it takes its direct route instead: every value by direct
differences in double, eight rows at a time (set_direct_route_max_d).
``gaussian_loglik_direct`` is the direct-difference kernel (double sums of squared
differences, online logsumexp): the fallback for norms that could overflow the product
(or values that are not finite), and a test oracle.
"""
import numpy as np

cimport cython
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport calloc, free, malloc
from libc.math cimport exp, log, M_PI, INFINITY, isfinite
from openmp cimport omp_get_max_threads

from gemm_tiles cimport FZ_F32_NR, FZ_F64_NR, gemm_abt, pack_panels, tile_abt
from omp_team cimport team_size

from fastzsl._ext import knn_cpu  # owns the products' route (set_f32_tiles)
from fastzsl._threads import blas_single_threaded
from fastzsl._validation import check_finite
from fastzsl.backends._gaussian_gemm import class_terms

cdef extern from "gaussian_kernels.h" nogil:
    enum: FZ_PAD  # the class arrays are padded to a multiple of it
    enum: FZ_LSE_BLOCK  # classes per block of a row's block maxima
    enum: FZ_DIRECT_MAX_D  # the direct route's largest d
    ctypedef struct fz_gauss_params:
        Py_ssize_t n_classes
        Py_ssize_t d
        Py_ssize_t n_padded
        const double* h
        const double* k
        const double* kh
        const double* km
        const float* kh_f
        const float* km_f
        const double* var
        const double* means_d
        const double* ln
        const double* lw
        const double* thr
        const double* thr_min
        double kh_max
        double km_max
        int finite_thresholds
        double acc
        double log_c
        int exact_thresholds
    double fz_exp_poly(double x, int degree)
    double fz_log_poly(double x)
    double FZ_LOG_POLY_EPS
    float fz_expf_poly(float x)
    float fz_float_up(double x)
    bint FZ_CERTIFIED(double err, double total, double budget, double bk)
    int fz_centre_tile_f(const float* F, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t tile,
                         Py_ssize_t d, const double* z, double norm_limit, float* fc,
                         double* fn)
    int fz_centre_tile_d(const double* F, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t tile,
                         Py_ssize_t d, const double* z, double norm_limit, double* fc,
                         double* fn)
    Py_ssize_t fz_gauss_tile_f(const float* P, Py_ssize_t ldp, const double* fn,
                               const float* F, const float* means, Py_ssize_t r0, Py_ssize_t r1,
                               const fz_gauss_params* q, double* L, double* b, double* blk,
                               int* lst, double* scratch, float* Lout,
                               float* row_max, int64_t* row_argmax, float* row_lse,
                               uint8_t* all_below)
    Py_ssize_t fz_gauss_tile_d(const double* P, Py_ssize_t ldp, const double* fn,
                               const double* F, const double* means, Py_ssize_t r0, Py_ssize_t r1,
                               const fz_gauss_params* q, double* L, double* b, double* blk,
                               int* lst, double* scratch, double* Lout,
                               double* row_max, int64_t* row_argmax, double* row_lse,
                               uint8_t* all_below)


include "floating_dispatch.pxi"  # _floating_key


# Packed means per call of the tiles (a quarter of a typical 1 MiB L2, beside the
# tile's rows)
cdef enum:
    PANEL_CHUNK_BYTES = 256 * 1024

# Up to this d (float32 inputs, float64 inputs), classes that fit one FZ_PAD take the direct
# route (every value by direct differences in double, a row per vector lane: no centring,
# no product, no bounds); beyond it, the GEMM form. Chosen per vector kind on C = 6, 13, 16
# and d = 24-256, broad and far classes (not the benchmark's regime table), 2 cores: on an
# AMD EPYC Zen 4 (AVX-512) float32 rows gained up to d = 128 (0.42x-1.05x the GEMM form's
# time), float64 rows up to d = 40-64 (0.75x-1.03x at d <= 40, 0.92x-1.31x at 64); on a Zen 3
# (AVX2 only; benchmarks/direct_route_crossover.py, rerun after the lanes' logarithm, cut
# and stores were vectorised, which the GEMM form's lanes share), geometric means over the
# shapes 0.75x-0.88x up to d = 64 and 1.06x at 96 (float32; 1.08x in a 15-round rerun of
# d = 64-128), 0.72x-0.97x up to 40 and 1.02x at 48 (float64). CPUs without either take
# AVX2's. set_direct_route_max_d changes them (tests run both routes).
DIRECT_ROUTE_DEFAULTS = {"avx512": (128, 48), "avx2": (64, 40)}


def direct_route_default():
    """The direct route's largest d (float32, float64) for this CPU: DIRECT_ROUTE_DEFAULTS
    of the widest vector tiles it runs (knn_cpu.tile_kernels()), else AVX2's."""
    kinds = knn_cpu.tile_kernels()
    return DIRECT_ROUTE_DEFAULTS[kinds[0] if kinds else "avx2"]


cdef Py_ssize_t _direct_route_max_d_f
cdef Py_ssize_t _direct_route_max_d_d
_direct_route_max_d_f, _direct_route_max_d_d = direct_route_default()
# the largest d set_direct_route_max_d takes, and the classes the route takes at most
DIRECT_ROUTE_MAX_D = FZ_DIRECT_MAX_D
DIRECT_ROUTE_MAX_CLASSES = FZ_PAD


def direct_route_max_d():
    """The direct route's largest d now (float32, float64)."""
    return (_direct_route_max_d_f, _direct_route_max_d_d)


def set_direct_route_max_d(max_d):
    """Sets the largest d of the direct route: one value for both dtypes, or a pair
    (float32, float64); 0 means never, at most DIRECT_ROUTE_MAX_D. Returns the previous
    pair."""
    global _direct_route_max_d_f, _direct_route_max_d_d
    pair = tuple(max_d) if isinstance(max_d, tuple) else (max_d, max_d)
    for value in pair:
        if not 0 <= value <= FZ_DIRECT_MAX_D:
            raise ValueError(f"max_d must be in [0, {FZ_DIRECT_MAX_D}], not {value}")
    previous = direct_route_max_d()
    _direct_route_max_d_f, _direct_route_max_d_d = pair
    return previous


cdef str _SUPPORTED = "gaussian_cpu supports float32 and float64"


cdef tuple _outputs(Py_ssize_t n, Py_ssize_t n_classes, dtype, bint full):
    """Empty (L, row_max, row_argmax, row_lse, all_below) of both kernels; L is (n,
    n_classes) when ``full``, else (0, 0)."""
    L = np.empty(((<object>n, <object>n_classes) if full else (0, 0)), dtype=dtype)
    return (L, np.empty(n, dtype=dtype), np.empty(n, dtype=np.int64),
            np.empty(n, dtype=dtype), np.empty(n, dtype=bool))


def _gaussian(const cython.floating[:, ::1] F,
              const cython.floating[:, ::1] means,
              const double[::1] variances,
              const double[::1] log_norm,
              const double[::1] log_weights,
              const double[::1] thresholds,
              bint full,
              cython.floating[:, ::1] L,
              cython.floating[::1] row_max,
              int64_t[::1] row_argmax,
              cython.floating[::1] row_lse,
              uint8_t[::1] all_below):
    """The direct-difference kernel for one dtype: fills L (when ``full``), row_max,
    row_argmax, row_lse and all_below."""
    cdef Py_ssize_t n = F.shape[0]
    cdef Py_ssize_t d = F.shape[1]
    cdef Py_ssize_t n_classes = means.shape[0]
    cdef Py_ssize_t i, c, t
    cdef Py_ssize_t best_c
    cdef double s, diff, value, best, lse_max, lse_sum, weighted
    cdef bint below
    cdef const cython.floating* frow
    cdef const cython.floating* mrow
    with nogil:
        for i in prange(n, schedule="static"):
            best = -INFINITY
            best_c = 0
            lse_max = -INFINITY
            lse_sum = 0.0
            below = True
            frow = &F[i, 0]
            for c in range(n_classes):
                mrow = &means[c, 0]
                s = 0.0
                for t in range(d):
                    diff = <double>frow[t] - <double>mrow[t]
                    s = s + diff * diff
                value = -s / (2.0 * variances[c]) - log_norm[c]
                if full:
                    L[i, c] = <cython.floating>value
                if value > best:
                    best = value
                    best_c = c
                if not value < thresholds[c]:
                    below = False
                # Online logsumexp: rescale the running sum whenever the maximum grows. A
                # weight of -inf contributes exp(-inf) = 0 (skipped, so -inf - -inf never
                # makes a NaN).
                weighted = value + log_weights[c]
                if weighted > lse_max:
                    lse_sum = lse_sum * exp(lse_max - weighted) + 1.0
                    lse_max = weighted
                elif weighted != -INFINITY:
                    lse_sum = lse_sum + exp(weighted - lse_max)
            row_max[i] = <cython.floating>best
            row_argmax[i] = best_c
            row_lse[i] = <cython.floating>(lse_max + log(lse_sum))
            all_below[i] = below


def gaussian_loglik_direct(F, means, variances, log_weights, thresholds, full):
    """The direct-difference kernel: (L or None, row_max, row_argmax, row_logsumexp,
    all_below)."""
    F = np.ascontiguousarray(F)
    means = np.ascontiguousarray(means, dtype=F.dtype)
    variances = np.ascontiguousarray(variances, dtype=np.float64)
    log_weights = np.ascontiguousarray(log_weights, dtype=np.float64)
    thresholds = np.ascontiguousarray(thresholds, dtype=np.float64)
    cdef bint want_full = bool(full)
    cdef Py_ssize_t n = F.shape[0]
    cdef Py_ssize_t d = F.shape[1]
    cdef Py_ssize_t n_classes = means.shape[0]
    # d/2 log(2 pi var_c), evaluated exactly as the numba kernel does, once per class.
    log_norm = np.empty(n_classes, dtype=np.float64)
    cdef double[::1] ln_w = log_norm
    cdef double half_d = 0.5 * d
    cdef Py_ssize_t c
    cdef const double[::1] var_v = variances
    for c in range(n_classes):
        ln_w[c] = half_d * log(2.0 * M_PI * var_v[c])
    L, row_max, row_argmax, row_lse, all_below = _outputs(n, n_classes, F.dtype, want_full)
    _gaussian[_floating_key(F.dtype, _SUPPORTED)](
        F, means, variances, log_norm, log_weights, thresholds, want_full, L, row_max,
        row_argmax, row_lse, all_below.view(np.uint8))
    return (L if want_full else None), row_max, row_argmax, row_lse, all_below


# ------------------------------------------------------------------------------- GEMM form

cdef Py_ssize_t _gemm_kernel(const cython.floating[:, ::1] F,
                             const cython.floating[:, ::1] means,
                             const cython.floating* centred,
                             const double[::1] center, double norm_limit,
                             const fz_gauss_params* q, Py_ssize_t tile,
                             const cython.floating* packed, int tiles, bint direct,
                             cython.floating* Lout, cython.floating* row_max,
                             int64_t* row_argmax, cython.floating* row_lse,
                             uint8_t* all_below) noexcept nogil:
    """Fills the outputs; returns the number of entries computed directly, -1 when a
    buffer could not be allocated, -2 when a row's norm could overflow the product (or,
    on the direct route, a value is not finite). ``packed``: with ``tiles`` (the micro-kernel,
    FZ_TILES_*) the centred means in the tiles' panels, the products then formed by those
    tiles; else NULL (BLAS, on ``centred``: the centred means, (C, d); NULL on the other
    routes). ``direct``: no products, every value by direct differences (fz_gauss_tile's
    direct route)."""
    cdef Py_ssize_t n = F.shape[0]
    cdef Py_ssize_t d = F.shape[1]
    cdef Py_ssize_t C = means.shape[0]
    cdef Py_ssize_t n_tiles = (n + tile - 1) // tile
    cdef Py_ssize_t b, r0, r1, n_tile, n_direct = 0
    cdef Py_ssize_t nr = FZ_F32_NR if cython.floating is float else FZ_F64_NR
    cdef Py_ssize_t n_panels = (C + nr - 1) // nr
    cdef int n_threads = team_size(omp_get_max_threads(), n_tiles)
    # the products' row stride: whole panels for the tiles (= q.n_padded, a multiple of 16),
    # plus 64 bytes so that rows are not a multiple of 4 KiB apart (the L1 sets' period)
    cdef Py_ssize_t ldp = (n_panels * nr + 64 // sizeof(cython.floating) if packed != NULL
                           else C)
    cdef Py_ssize_t chunk_panels = max(1, PANEL_CHUNK_BYTES
                                       // max(1, d * nr * sizeof(cython.floating)))
    cdef Py_ssize_t p0
    cdef int rc
    cdef cython.floating* fc
    cdef cython.floating* prod
    cdef double* fn
    cdef double* Lbuf
    cdef double* bbuf
    cdef double* blkbuf
    cdef int* lst
    cdef double* scratch
    cdef int failed = 0
    cdef int* failed_p = &failed  # written through a pointer: a plain name is thread-private
    cdef const cython.floating* Fbase = &F[0, 0]
    cdef const cython.floating* Mbase = &means[0, 0]
    cdef const cython.floating* Cbase = centred
    fc = NULL
    prod = NULL
    fn = NULL
    Lbuf = NULL
    bbuf = NULL
    blkbuf = NULL
    lst = NULL
    scratch = NULL
    with parallel(num_threads=n_threads):
        fc = <cython.floating*>malloc(tile * d * sizeof(cython.floating))
        # zeroed slack after the last row: a row's vectorised pass reads q.n_padded products
        prod = <cython.floating*>calloc(tile * ldp + q.n_padded - C, sizeof(cython.floating))
        fn = <double*>malloc(tile * sizeof(double))
        Lbuf = <double*>malloc(q.n_padded * sizeof(double))
        bbuf = <double*>malloc(q.n_padded * sizeof(double))
        blkbuf = <double*>malloc((2 * (q.n_padded // FZ_LSE_BLOCK) + 2) * sizeof(double))
        lst = <int*>malloc(C * sizeof(int))
        scratch = <double*>malloc(C * sizeof(double))
        for b in prange(n_tiles, schedule="dynamic"):
            if (fc == NULL or prod == NULL or fn == NULL or Lbuf == NULL or bbuf == NULL
                    or blkbuf == NULL or lst == NULL or scratch == NULL):
                failed_p[0] = -1
                continue
            r0 = b * tile
            r1 = r0 + tile
            if r1 > n:
                r1 = n
            if not direct:  # the GEMM form: centred rows, their products with the means
                if cython.floating is float:
                    rc = fz_centre_tile_f(Fbase, r0, r1, tile, d, &center[0], norm_limit, fc,
                                          fn)
                else:
                    rc = fz_centre_tile_d(Fbase, r0, r1, tile, d, &center[0], norm_limit, fc,
                                          fn)
                if rc != 0:
                    failed_p[0] = rc
                if failed_p[0] == -2:
                    continue
                if packed != NULL:
                    # panels in chunks that stay in L2 while the tile's rows pass over them
                    # (one pass over all the means per 12 rows would stream them from memory
                    # where they outgrow the caches); each product is the same sum
                    p0 = 0
                    while p0 < n_panels:
                        tile_abt(tiles, fc, tile, d, packed + p0 * d * nr,
                                 min(chunk_panels * nr, C - p0 * nr), prod + p0 * nr, ldp)
                        p0 = p0 + chunk_panels
                else:
                    gemm_abt(fc, Cbase, <int>tile, <int>C, <int>d, prod)
            # no products on the direct route (NULL): fz_gauss_tile's direct differences
            if cython.floating is float:
                n_tile = fz_gauss_tile_f(NULL if direct else prod, ldp, NULL if direct else fn,
                                         Fbase, Mbase, r0, r1, q, Lbuf, bbuf, blkbuf, lst,
                                         scratch, Lout, row_max, row_argmax, row_lse,
                                         all_below)
            else:
                n_tile = fz_gauss_tile_d(NULL if direct else prod, ldp, NULL if direct else fn,
                                         Fbase, Mbase, r0, r1, q, Lbuf, bbuf, blkbuf, lst,
                                         scratch, Lout, row_max, row_argmax, row_lse,
                                         all_below)
            if n_tile < 0:  # the direct route met a value that is not finite
                failed_p[0] = -2
            else:
                n_direct += n_tile
        free(fc)
        free(prod)
        free(fn)
        free(Lbuf)
        free(bbuf)
        free(blkbuf)
        free(lst)
        free(scratch)
    if failed:
        return failed
    return n_direct


def _route(Py_ssize_t n_classes, Py_ssize_t d, dtype):
    """(direct, tiles) of _gemm_kernel for these shapes: the direct route for classes that
    fit one FZ_PAD and few coordinates (_direct_route_max_d_*), else the products by the
    tiles (their FZ_TILES_* code; knn_cpu's f32_tiles_code) or BLAS (0)."""
    cdef Py_ssize_t max_d = (_direct_route_max_d_f if np.dtype(dtype) == np.float32
                             else _direct_route_max_d_d)
    cdef bint direct = (n_classes + FZ_PAD - 1) // FZ_PAD == 1 and 0 < d <= max_d
    return direct, (0 if direct else knn_cpu.f32_tiles_code())


def _gemm_typed(const cython.floating[:, ::1] F, const cython.floating[:, ::1] means,
                terms, const double[::1] var, log_weights, thresholds, bint full,
                cython.floating[:, ::1] L, cython.floating[::1] row_max,
                int64_t[::1] row_argmax, cython.floating[::1] row_lse,
                uint8_t[::1] all_below, bint direct, int tiles):
    """_gemm_kernel for one dtype, with the class terms of ``class_terms`` (their centred
    means where BLAS forms the products) and the route of ``_route``: fills the outputs
    (L when ``full``) and returns its result."""
    cdef Py_ssize_t n_classes = means.shape[0]
    cdef Py_ssize_t n_padded = (n_classes + FZ_PAD - 1) // FZ_PAD * FZ_PAD

    def padded(a, fill):  # padding classes: L~ = -inf, beta = 0 (see fz_gauss_params)
        out = np.full(n_padded, fill, dtype=np.float64)
        out[:n_classes] = a
        return out

    cdef const double[::1] h = padded(terms.h, 0.0), k = padded(terms.k, np.inf)
    cdef const double[::1] kh = padded(terms.kh, 0.0), km = padded(terms.km, 0.0)
    # rounded up to float32 by fz_float_up, as the kernel rounds fn, for the float32
    # logsumexp's bounds (fz_lse_terms_f32)
    cdef float[::1] kh_f = np.empty(n_padded, dtype=np.float32)
    cdef float[::1] km_f = np.empty(n_padded, dtype=np.float32)
    cdef Py_ssize_t c
    for c in range(n_padded):
        kh_f[c] = fz_float_up(kh[c])
        km_f[c] = fz_float_up(km[c])
    cdef const double[::1] ln = padded(terms.log_norm, 0.0)
    cdef const double[::1] lw = padded(log_weights, 0.0), thr = padded(thresholds, np.inf)
    # the smallest threshold per block of FZ_LSE_BLOCK classes (the screen's block bound)
    cdef const double[::1] thr_min = np.minimum.reduceat(
        np.asarray(thr), np.arange(0, n_padded, FZ_LSE_BLOCK))
    cdef const double[::1] center = terms.center
    cdef fz_gauss_params q
    q.n_classes = n_classes
    q.n_padded = n_padded
    q.d = F.shape[1]
    q.h = &h[0]
    q.k = &k[0]
    q.kh = &kh[0]
    q.km = &km[0]
    q.kh_f = &kh_f[0]
    q.km_f = &km_f[0]
    q.var = &var[0]
    q.ln = &ln[0]
    q.lw = &lw[0]
    q.thr = &thr[0]
    q.thr_min = &thr_min[0]
    q.kh_max = terms.kh.max()
    q.km_max = terms.km.max()
    q.finite_thresholds = bool((thresholds < np.inf).any())
    q.acc = terms.acc
    q.log_c = np.log(means.shape[0])
    # float32: its accuracy target is coarse, so entries near a threshold are decided on
    # their direct value; float64 decides on the (reproducible) values themselves.
    q.exact_thresholds = cython.floating is float
    cdef Py_ssize_t tile = terms.tile
    cdef double norm_limit = terms.norm_limit
    cdef Py_ssize_t rc
    cdef const double[::1] means_d = (np.ascontiguousarray(means, dtype=np.float64).ravel()
                                      if direct else np.empty(1))
    q.means_d = &means_d[0] if direct else NULL
    cdef const cython.floating* packed_p = NULL
    cdef cython.floating[::1] packed_v
    cdef Py_ssize_t nr = FZ_F32_NR if cython.floating is float else FZ_F64_NR
    cdef Py_ssize_t p, n_panels = (n_classes + nr - 1) // nr
    cdef const cython.floating[:, ::1] centred
    cdef const cython.floating* centred_p = NULL
    if terms.centred is not None:  # the BLAS route's
        centred = terms.centred
        centred_p = &centred[0, 0]
    if tiles:
        # the means centred (fl(mu - z) in double, rounded: class_terms' values) while they
        # are packed, once per call: no (C, d) copy of them (whose page faults cost as much
        # as its pass at C = 10,000, d = 512)
        packed = np.empty(n_panels * nr * q.d + 1,
                          dtype=np.float32 if cython.floating is float else np.float64)
        packed_v = packed
        for p in prange(n_panels, nogil=True, schedule="static",
                        num_threads=team_size(omp_get_max_threads(), n_panels)):
            pack_panels(tiles, &means[0, 0] + p * nr * q.d, min(nr, n_classes - p * nr),
                        q.d, &center[0], &packed_v[0] + p * nr * q.d)
        packed_p = &packed_v[0]
    with blas_single_threaded():
        with nogil:
            rc = _gemm_kernel(F, means, centred_p, center, norm_limit, &q, tile, packed_p,
                              tiles, direct, &L[0, 0] if full else NULL, &row_max[0],
                              &row_argmax[0], &row_lse[0], &all_below[0])
    return rc


def gaussian_loglik_gemm(F, means, variances, log_weights, thresholds, full):
    """The GEMM-form kernel: ((L or None, row_max, row_argmax, row_logsumexp, all_below),
    n_direct), n_direct the number of entries it computed by direct differences; None
    instead when the GEMM form does not apply (no classes, d = 0, norms that could
    overflow the product)."""
    F = np.ascontiguousarray(F)
    means = np.ascontiguousarray(means, dtype=F.dtype)
    direct, tiles = _route(means.shape[0], means.shape[1], F.dtype)
    # the centred means only where BLAS forms the products (the tiles pack their own)
    terms = class_terms(means, variances, keep_centred=not direct and not tiles)
    if terms is None or F.shape[0] == 0:
        return None
    log_weights = np.ascontiguousarray(log_weights, dtype=np.float64)
    thresholds = np.ascontiguousarray(thresholds, dtype=np.float64)
    variances = np.ascontiguousarray(variances, dtype=np.float64)
    cdef bint want_full = bool(full)
    L, row_max, row_argmax, row_lse, all_below = _outputs(F.shape[0], means.shape[0],
                                                          F.dtype, want_full)
    rc = _gemm_typed[_floating_key(F.dtype, _SUPPORTED)](
        F, means, terms, variances, log_weights, thresholds, want_full, L, row_max,
        row_argmax, row_lse, all_below.view(np.uint8), direct, tiles)
    if rc == -1:
        raise MemoryError("gaussian_cpu: could not allocate the per-thread tile buffers")
    if rc == -2:
        return None
    return ((L if want_full else None), row_max, row_argmax, row_lse, all_below), rc


def gaussian_loglik(F, means, variances, log_weights, thresholds, full):
    """Returns (L or None, row_max, row_argmax, row_logsumexp, all_below): the GEMM-form
    kernel, or the direct one where the GEMM form does not apply. F is checked for NaN and
    infinity here (the backend's ``gaussian_checks_finite``): the GEMM form's row norms
    are finite exactly when the rows are, unless a finite norm overflows, and either way
    it hands over to the direct kernel, after the check."""
    out = gaussian_loglik_gemm(F, means, variances, log_weights, thresholds, full)
    if out is None:
        check_finite(F, "F")  # the public parameter's name: its error message
        return gaussian_loglik_direct(F, means, variances, log_weights, thresholds, full)
    return out[0]


def lse_certified(double err, double total, double budget, double bk):
    """The kernels' logsumexp certificate (FZ_CERTIFIED), for checking it against the worst
    case of the values' errors: err = sum_c e_c b_c, total = sum_c e_c, bk = max_c b_c over
    the kept terms; whether the values' part of the error is within ``budget``."""
    return bool(FZ_CERTIFIED(err, total, budget, bk))


# the kinds of exp_poly and fz_exp_poly's degree for each (0: fz_expf_poly)
_EXP_DEGREES = {"double": 12, "double-10": 10, "double-9": 9, "double-low": 7, "float": 0}
EXP_KINDS = tuple(_EXP_DEGREES)


def exp_poly(x, kind):
    """The kernels' vectorised exp at every x (float64, each in [-65, 0]), for checking its
    error bound: ``kind`` "double" (fz_exp_poly, degree 12), "double-10", "double-9" (the
    lower degrees float64 inputs take where |lse| leaves room), "double-low" (degree 7,
    float32 inputs) or "float" (fz_expf_poly, float32 arithmetic, x rounded to float32
    first)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    if kind not in EXP_KINDS:
        raise ValueError(f"kind must be one of {EXP_KINDS}, not {kind!r}")
    if x.size and not (x.min() >= -65.0 and x.max() <= 0.0):
        raise ValueError("exp_poly is defined on [-65, 0]")
    out = np.empty_like(x)
    cdef const double[::1] xv = x.ravel()
    cdef double[::1] ov = out.ravel()
    cdef Py_ssize_t i
    cdef int degree = _EXP_DEGREES[kind]
    for i in range(xv.shape[0]):
        if degree == 0:
            ov[i] = fz_expf_poly(<float>xv[i])
        else:
            ov[i] = fz_exp_poly(xv[i], degree)
    return out


# fz_log_poly's absolute error bound (fastzsl.backends._gaussian_gemm.LOG_POLY_EPS)
LOG_POLY_EPS = FZ_LOG_POLY_EPS


def log_poly(x):
    """The kernels' vectorised log at every x (float64, each in [1, 2^10)), for checking
    its error bound."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.size and not (x.min() >= 1.0 and x.max() < 1024.0):
        raise ValueError("log_poly is defined on [1, 2^10)")
    out = np.empty_like(x)
    cdef const double[::1] xv = x.ravel()
    cdef double[::1] ov = out.ravel()
    cdef Py_ssize_t i
    for i in range(xv.shape[0]):
        ov[i] = fz_log_poly(xv[i])
    return out
