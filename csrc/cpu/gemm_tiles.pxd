# cython: language_level=3
"""Row-major GEMM on cache-sized tiles (shared by the kNN and the Gaussian kernels of
csrc/cpu): through SciPy's BLAS (gemm_abt; callers keep BLAS single-threaded inside their
OpenMP regions, fastzsl._threads.blas_single_threaded), or through the FMA tiles of
knn_f32_tiles.h (pack_panels once, then tile_abt)."""
cimport cython
from libc.stdint cimport uint32_t
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


# The FMA tiles of knn_f32_tiles.h (float32 with kNN pass 1's masks, float64 without): the
# rows R packed once into panels of FZ_F32_NR / FZ_F64_NR, then C = A @ R.T tile by tile.
cdef extern from "knn_f32_tiles.h" nogil:
    enum: FZ_F32_NR
    enum: FZ_F64_NR
    enum: FZ_TILES_AVX512
    enum: FZ_TILES_AVX2
    enum: FZ_TILES_PORTABLE
    void fz_f32_pack_panels(int kernel, const float* R, Py_ssize_t n, Py_ssize_t d,
                            const double* z, float* B)
    void fz_f32_pack_panels_rounded(int kernel, const double* R, Py_ssize_t n, Py_ssize_t d,
                                    float* B)
    void fz_f32_tile(int kernel, const float* A, Py_ssize_t na, Py_ssize_t d, const float* B,
                     Py_ssize_t nb, float* C, Py_ssize_t ldc, const float* rn,
                     const float* thr, uint32_t* masks)
    void fz_f64_pack_panels(int kernel, const double* R, Py_ssize_t n, Py_ssize_t d,
                            const double* z, double* B)
    void fz_f64_tile(int kernel, const double* A, Py_ssize_t na, Py_ssize_t d, const double* B,
                     Py_ssize_t nb, double* C, Py_ssize_t ldc, const double* rn,
                     const double* thr, uint32_t* masks)
    int fz_tiles_cpu_kernels()
    void fz_f32_dots(int avx2, const float* Q, Py_ssize_t nq, const float* R, Py_ssize_t nr,
                     Py_ssize_t d, float* out, Py_ssize_t ldo)


cdef inline void pack_panels(int kernel, const cython.floating* R, Py_ssize_t n,
                             Py_ssize_t d, const double* z, cython.floating* B) noexcept nogil:
    """fz_f32_pack_panels / fz_f64_pack_panels for the dtype, laid out for ``kernel``; z:
    NULL, or a centre taken off the rows (in double, rounded to the dtype)."""
    if cython.floating is float:
        fz_f32_pack_panels(kernel, R, n, d, z, B)
    else:
        fz_f64_pack_panels(kernel, R, n, d, z, B)


cdef inline void tile_abt(int kernel, const cython.floating* A, Py_ssize_t na, Py_ssize_t d,
                          const cython.floating* B, Py_ssize_t nb, cython.floating* C,
                          Py_ssize_t ldc) noexcept nogil:
    """fz_f32_tile / fz_f64_tile for the dtype (B: nb rows in whole panels), without masks;
    the padding rows' columns of C may be left unwritten."""
    if cython.floating is float:
        fz_f32_tile(kernel, A, na, d, B, nb, C, ldc, NULL, NULL, NULL)
    else:
        fz_f64_tile(kernel, A, na, d, B, nb, C, ldc, NULL, NULL, NULL)
