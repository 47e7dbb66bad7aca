# cython: language_level=3
"""Row-major GEMM on cache-sized tiles through SciPy's BLAS (shared by the kNN and the
Gaussian kernels of csrc/cpu). Callers keep BLAS single-threaded inside their OpenMP
regions (fastzsl._threads.blas_single_threaded)."""
cimport cython
from scipy.linalg.cython_blas cimport dgemm, sgemm


cdef inline void gemm_abt(const cython.floating* a, const cython.floating* b,
                          int na, int nb, int d, cython.floating* out) noexcept nogil:
    """Row-major out[na, nb] = a[na, d] @ b[nb, d]^T.

    BLAS is column-major: the row-major out is the column-major out^T (nb x na, ld nb) =
    b_cm^T @ a_cm, where b_cm (d x nb, ld d) and a_cm (d x na, ld d) are the row-major
    inputs read as column-major.
    """
    cdef char ta = b'T'
    cdef char tb = b'N'
    cdef float one_f = 1.0
    cdef float zero_f = 0.0
    cdef double one_d = 1.0
    cdef double zero_d = 0.0
    if cython.floating is float:
        sgemm(&ta, &tb, &nb, &na, &d, &one_f, <float*>b, &d, <float*>a, &d,
              &zero_f, out, &nb)
    else:
        dgemm(&ta, &tb, &nb, &na, &d, &one_d, <double*>b, &d, <double*>a, &d,
              &zero_d, out, &nb)
