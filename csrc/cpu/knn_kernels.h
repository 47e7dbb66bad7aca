/* Scan helpers for csrc/cpu/knn_cpu.pyx (GEMM prefilter + exact re-rank).
 *
 * fz_next_{f,d}(p, rn, thr, start, n) returns the first j in [start, n) whose approximate
 * partial distance rn[j] - 2 p[j] is <= thr, or n when there is none. Whole chunks of
 * FZ_SCAN_CHUNK entries are tested with one vectorised any-reduction, so the common case
 * (no candidate in the chunk) costs a few SIMD instructions per chunk.
 *
 * The vector and scalar tests may round rn[j] - 2 p[j] differently (contraction into an
 * FMA); either rounding is within the margin the caller adds to thr, so both are valid
 * filters. A chunk flagged by the vector test is re-scanned with the scalar test, which
 * simply continues into the next chunks if it disagrees.
 */
#ifndef FASTZSL_KNN_KERNELS_H
#define FASTZSL_KNN_KERNELS_H

#include <stddef.h>

#define FZ_SCAN_CHUNK 32

#define FZ_DEFINE_NEXT(NAME, T)                                                          \
    static inline ptrdiff_t NAME(const T *p, const T *rn, T thr, ptrdiff_t start,         \
                                 ptrdiff_t n)                                             \
    {                                                                                     \
        ptrdiff_t j = start;                                                              \
        while (j < n && (j % FZ_SCAN_CHUNK) != 0) {                                       \
            if (rn[j] - (T)2 * p[j] <= thr)                                               \
                return j;                                                                 \
            j++;                                                                          \
        }                                                                                 \
        while (j + FZ_SCAN_CHUNK <= n) {                                                  \
            int any = 0;                                                                  \
            const T *pc = p + j;                                                          \
            const T *rc = rn + j;                                                         \
            _Pragma("omp simd reduction(|:any)")                                          \
            for (int t = 0; t < FZ_SCAN_CHUNK; t++)                                       \
                any |= (rc[t] - (T)2 * pc[t] <= thr);                                     \
            if (any)                                                                      \
                break;                                                                    \
            j += FZ_SCAN_CHUNK;                                                           \
        }                                                                                 \
        for (; j < n; j++) {                                                              \
            if (rn[j] - (T)2 * p[j] <= thr)                                               \
                return j;                                                                 \
        }                                                                                 \
        return n;                                                                         \
    }

FZ_DEFINE_NEXT(fz_next_f, float)
FZ_DEFINE_NEXT(fz_next_d, double)

#undef FZ_DEFINE_NEXT

#endif /* FASTZSL_KNN_KERNELS_H */
