/* Scan helpers for csrc/cpu/knn_cpu.pyx (pass 1 of the GEMM kNN kernels).
 *
 * Each returns a bit mask of the n <= FZ_KNN_CHUNK entries of one chunk that pass the
 * filter (bit t for entry t):
 *   fz_row_mask_{f,d}(p, rn, thr, n):      rn[t] - 2 p[t] <= thr
 *       one query's dot products p with candidates of norms rn, against its threshold;
 *   fz_col_mask_{f,d}(g, ra, lim, n):      ra - 2 g[t] <= lim[t]
 *       one candidate (norm ra) against a row of queries, each with its own threshold
 *       (the column side of the symmetric self-join).
 * The caller walks the set bits in order and re-tests each entry against its threshold,
 * which may have dropped since the mask was taken. 2 p is exact and rn - 2 p is one
 * rounding, so the SIMD and scalar values are the same bits (also when a compiler fuses them
 * into an FMA).
 */
#ifndef FASTZSL_KNN_KERNELS_H
#define FASTZSL_KNN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define FZ_KNN_CHUNK 32

#if defined(__SSE2__)
#include <emmintrin.h>

static inline uint32_t fz_row_mask_f(const float *p, const float *rn, float thr, ptrdiff_t n)
{
    uint32_t m = 0;
    ptrdiff_t t = 0;
    __m128 th = _mm_set1_ps(thr);
    for (; t + 4 <= n; t += 4) {
        __m128 pv = _mm_loadu_ps(p + t);
        __m128 v = _mm_sub_ps(_mm_loadu_ps(rn + t), _mm_add_ps(pv, pv));
        m |= (uint32_t)_mm_movemask_ps(_mm_cmple_ps(v, th)) << t;
    }
    for (; t < n; t++)
        m |= (uint32_t)(rn[t] - (p[t] + p[t]) <= thr) << t;
    return m;
}

static inline uint32_t fz_row_mask_d(const double *p, const double *rn, double thr,
                                     ptrdiff_t n)
{
    uint32_t m = 0;
    ptrdiff_t t = 0;
    __m128d th = _mm_set1_pd(thr);
    for (; t + 2 <= n; t += 2) {
        __m128d pv = _mm_loadu_pd(p + t);
        __m128d v = _mm_sub_pd(_mm_loadu_pd(rn + t), _mm_add_pd(pv, pv));
        m |= (uint32_t)_mm_movemask_pd(_mm_cmple_pd(v, th)) << t;
    }
    for (; t < n; t++)
        m |= (uint32_t)(rn[t] - (p[t] + p[t]) <= thr) << t;
    return m;
}

static inline uint32_t fz_col_mask_f(const float *g, float ra, const float *lim, ptrdiff_t n)
{
    uint32_t m = 0;
    ptrdiff_t t = 0;
    __m128 a = _mm_set1_ps(ra);
    for (; t + 4 <= n; t += 4) {
        __m128 gv = _mm_loadu_ps(g + t);
        __m128 v = _mm_sub_ps(a, _mm_add_ps(gv, gv));
        m |= (uint32_t)_mm_movemask_ps(_mm_cmple_ps(v, _mm_loadu_ps(lim + t))) << t;
    }
    for (; t < n; t++)
        m |= (uint32_t)(ra - (g[t] + g[t]) <= lim[t]) << t;
    return m;
}

static inline uint32_t fz_col_mask_d(const double *g, double ra, const double *lim,
                                     ptrdiff_t n)
{
    uint32_t m = 0;
    ptrdiff_t t = 0;
    __m128d a = _mm_set1_pd(ra);
    for (; t + 2 <= n; t += 2) {
        __m128d gv = _mm_loadu_pd(g + t);
        __m128d v = _mm_sub_pd(a, _mm_add_pd(gv, gv));
        m |= (uint32_t)_mm_movemask_pd(_mm_cmple_pd(v, _mm_loadu_pd(lim + t))) << t;
    }
    for (; t < n; t++)
        m |= (uint32_t)(ra - (g[t] + g[t]) <= lim[t]) << t;
    return m;
}

#else /* portable scalar versions */

#define FZ_SCALAR_MASKS(SUFFIX, T)                                                        \
    static inline uint32_t fz_row_mask_##SUFFIX(const T *p, const T *rn, T thr,           \
                                                ptrdiff_t n)                              \
    {                                                                                     \
        uint32_t m = 0;                                                                   \
        for (ptrdiff_t t = 0; t < n; t++)                                                 \
            m |= (uint32_t)(rn[t] - (p[t] + p[t]) <= thr) << t;                           \
        return m;                                                                         \
    }                                                                                     \
    static inline uint32_t fz_col_mask_##SUFFIX(const T *g, T ra, const T *lim,           \
                                                ptrdiff_t n)                              \
    {                                                                                     \
        uint32_t m = 0;                                                                   \
        for (ptrdiff_t t = 0; t < n; t++)                                                 \
            m |= (uint32_t)(ra - (g[t] + g[t]) <= lim[t]) << t;                           \
        return m;                                                                         \
    }
FZ_SCALAR_MASKS(f, float)
FZ_SCALAR_MASKS(d, double)
#undef FZ_SCALAR_MASKS

#endif

/* Index of the lowest set bit of a non-zero mask. */
static inline int fz_lowest_bit(uint32_t m)
{
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctz(m);
#else
    int t = 0;
    while (!(m & 1u)) {
        m >>= 1;
        t++;
    }
    return t;
#endif
}

#endif /* FASTZSL_KNN_KERNELS_H */
