# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Isotropic Gaussian log-likelihoods with fused row reductions, Cython + OpenMP.

L[i, c] = -||F_i - mu_c||^2 / (2 var_c) - d/2 log(2 pi var_c), accumulated in double; per row:
max, first argmax, logsumexp(L + log_weights) (online, in double) and all_c L < threshold_c.
Same semantics as ``fastzsl.backends.numpy_.gaussian_loglik`` / ``numba_.gaussian_loglik``.
"""
import numpy as np

cimport cython
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t
from libc.math cimport exp, log, M_PI, INFINITY


cdef void _gaussian(const cython.floating[:, ::1] F,
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
                    uint8_t[::1] all_below) noexcept nogil:
    cdef Py_ssize_t n = F.shape[0]
    cdef Py_ssize_t d = F.shape[1]
    cdef Py_ssize_t n_classes = means.shape[0]
    cdef Py_ssize_t i, c, t
    cdef Py_ssize_t best_c
    cdef double s, diff, value, best, lse_max, lse_sum, weighted
    cdef bint below
    cdef const cython.floating* frow
    cdef const cython.floating* mrow
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
            # Online logsumexp: rescale the running sum whenever the maximum grows. A weight
            # of -inf contributes exp(-inf) = 0 (skipped, so -inf - -inf never makes a NaN).
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


def gaussian_loglik(F, means, variances, log_weights, thresholds, full):
    """Returns (L or None, row_max, row_argmax, row_logsumexp, all_below)."""
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
    L = np.empty(((<object>n, <object>n_classes) if want_full else (0, 0)), dtype=F.dtype)
    row_max = np.empty(n, dtype=F.dtype)
    row_argmax = np.empty(n, dtype=np.int64)
    row_lse = np.empty(n, dtype=F.dtype)
    all_below = np.empty(n, dtype=bool)
    cdef const double[::1] norm_v = log_norm
    cdef const double[::1] lw_v = log_weights
    cdef const double[::1] th_v = thresholds
    cdef int64_t[::1] am_v = row_argmax
    cdef uint8_t[::1] below_v = all_below.view(np.uint8)
    cdef const float[:, ::1] F32, M32
    cdef float[:, ::1] L32
    cdef float[::1] mx32, lse32
    cdef const double[:, ::1] F64, M64
    cdef double[:, ::1] L64
    cdef double[::1] mx64, lse64
    if F.dtype == np.float32:
        F32 = F
        M32 = means
        L32 = L
        mx32 = row_max
        lse32 = row_lse
        with nogil:
            _gaussian(F32, M32, var_v, norm_v, lw_v, th_v, want_full,
                      L32, mx32, am_v, lse32, below_v)
    elif F.dtype == np.float64:
        F64 = F
        M64 = means
        L64 = L
        mx64 = row_max
        lse64 = row_lse
        with nogil:
            _gaussian(F64, M64, var_v, norm_v, lw_v, th_v, want_full,
                      L64, mx64, am_v, lse64, below_v)
    else:
        raise TypeError(f"gaussian_cpu supports float32 and float64, not {F.dtype}")
    return (L if want_full else None), row_max, row_argmax, row_lse, all_below
