# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Local Outlier Probabilities (LoOP) from a kNN graph, Cython + OpenMP.

Same conventions as ``fastzsl.backends.numpy_``:
pdist = extent * sqrt(mean_c D[i, c]); PLOF = pdist / ev - 1 with 0/0 -> 0 and x/0 -> +inf;
nPLOF = extent * sqrt(mean PLOF^2) over the finite PLOFs (0 when none);
LoOP = max(0, erf(PLOF / (nPLOF sqrt 2))), and with nPLOF = 0 every PLOF > 0 gives 1.
"""
import numpy as np

cimport cython
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.math cimport erf, sqrt, isnan, isfinite, INFINITY, NAN

cdef double SQRT2 = sqrt(2.0)

include "floating_dispatch.pxi"  # _floating_key


cdef inline double _plof(double pdist, double ev) noexcept nogil:
    # 0/0 -> 0 (as dense as the neighbours); x/0 -> +inf (infinitely sparser).
    if ev == 0.0:
        return INFINITY if pdist > 0.0 else 0.0
    return pdist / ev - 1.0


cdef inline double _probability(double plof, double nplof) noexcept nogil:
    cdef double ratio, p
    if nplof > 0.0:
        ratio = plof / (nplof * SQRT2)
    else:
        ratio = INFINITY if plof > 0.0 else 0.0
    p = erf(ratio)
    return 0.0 if p < 0.0 else p  # NaN passes through, as np.maximum(0, nan)


def _pdist(const cython.floating[:, ::1] D, double extent, double[::1] out):
    """pdist of every row of D (its k distances) into out."""
    cdef Py_ssize_t n = D.shape[0]
    cdef Py_ssize_t k = D.shape[1]
    cdef Py_ssize_t i, c
    cdef double s
    with nogil:
        for i in prange(n, schedule="static"):
            s = 0.0
            for c in range(k):
                s = s + <double>D[i, c]
            out[i] = extent * sqrt(s / k)


cdef void _plof_rows(const double[::1] pdist, const int64_t[:, ::1] I,
                     const double[::1] ref_pdist, double ev_override,
                     double[::1] out) noexcept nogil:
    cdef Py_ssize_t n = I.shape[0]
    cdef Py_ssize_t k = I.shape[1]
    cdef bint use_neighbours = isnan(ev_override)
    cdef Py_ssize_t i, c
    cdef double s, ev
    for i in prange(n, schedule="static"):
        if use_neighbours:
            s = 0.0
            for c in range(k):
                s = s + ref_pdist[I[i, c]]
            ev = s / k
        else:
            ev = ev_override
        out[i] = _plof(pdist[i], ev)


cdef void _probability_rows(const double[::1] plof, double nplof,
                            double[::1] out) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(plof.shape[0], schedule="static"):
        out[i] = _probability(plof[i], nplof)


cdef double _nplof(const double[::1] plof, double extent) noexcept nogil:
    cdef double s = 0.0
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t i
    for i in range(plof.shape[0]):
        if isfinite(plof[i]):
            s += plof[i] * plof[i]
            count += 1
    return extent * sqrt(s / count) if count > 0 else 0.0


cdef _pdist_any(D, double extent):
    """pdist as a float64 array, for D of dtype float32 or float64."""
    D = np.ascontiguousarray(D)
    out = np.empty(D.shape[0], dtype=np.float64)
    key = _floating_key(D.dtype, "loop_cpu supports float32 and float64 distances")
    _pdist[key](D, extent, out)
    return out


def loop_fit(D, I, extent):
    """LoOP of a reference set from its own kNN graph: (pdist, plof, nplof, probabilities)."""
    cdef double ext = extent
    pdist = _pdist_any(D, ext)
    I = np.ascontiguousarray(I, dtype=np.int64)
    n = pdist.shape[0]
    plof = np.empty(n, dtype=np.float64)
    prob = np.empty(n, dtype=np.float64)
    cdef const double[::1] pd = pdist
    cdef const int64_t[:, ::1] Iv = I
    cdef double[::1] pl = plof
    cdef double[::1] pr = prob
    cdef double nplof
    with nogil:
        _plof_rows(pd, Iv, pd, NAN, pl)
        nplof = _nplof(pl, ext)
        _probability_rows(pl, nplof, pr)
    return pdist, plof, float(nplof), prob


def loop_score(D, I, ref_pdist, nplof, extent, ev_override):
    """LoOP of new points from their neighbours in the reference set (float64)."""
    cdef double ext = extent
    cdef double npl = nplof
    cdef double evo = ev_override
    pdist = _pdist_any(D, ext)
    I = np.ascontiguousarray(I, dtype=np.int64)
    ref_pdist = np.ascontiguousarray(ref_pdist, dtype=np.float64)
    n = pdist.shape[0]
    plof = np.empty(n, dtype=np.float64)
    prob = np.empty(n, dtype=np.float64)
    cdef const double[::1] pd = pdist
    cdef const double[::1] rp = ref_pdist
    cdef const int64_t[:, ::1] Iv = I
    cdef double[::1] pl = plof
    cdef double[::1] pr = prob
    with nogil:
        _plof_rows(pd, Iv, rp, evo, pl)
        _probability_rows(pl, npl, pr)
    return prob

