/* Float32 dot-product tiles for pass 1 of the kNN kernel (csrc/cpu/knn_twopass.pxi).
 *
 * fz_f32_tile(hw, A, na, d, B, n_panels, C, ldc) writes C[i][32 p + l] = the float32 dot
 * product of query row i (A + i d, row-major, read in place) and reference row 32 p + l,
 * with the references packed by fz_f32_pack_panels in panels of FZ_F32_NR rows: component
 * t of panel p's row l at B[(p d + t) FZ_F32_NR + l] (rows past the tile's end are zero).
 * The sums are float32 FMAs in component order, which the pass-1 error bound allows (it
 * holds for any summation order, FMA or not: knn_cpu.pyx).
 *
 * With masks != NULL it also writes, for each query row i and panel p, the bit mask of
 * the panel's rows l with rn[32 p + l] - (C + C) <= thr[i] (the test of fz_row_mask_f, on
 * the same float32 values: one rounding after an exact doubling) at masks[i n_panels + p]:
 * pass 1 then walks the set bits instead of rereading the tile (rn: the tile's norms, a
 * whole number of panels; thr: each query's list threshold when the tile started).
 *
 * Why not BLAS: pass 1 runs one sgemm per (query block, reference tile), and at small d
 * BLAS spends a fifth of its time outside its kernel there: packing the reference tile and
 * the query block anew per call and zeroing C (beta = 0). Here the queries are read in
 * place, each reference tile is packed once per query block (1/1024 of the tile's
 * multiply-adds) and C is written once. hw != 0 runs the AVX-512 micro-kernel (12 x 32
 * outputs in 24 zmm accumulators; only where fz_f32_tiles_hw_available() says the CPU has
 * AVX-512F), hw == 0 a portable one with the same products (what the tests run on any CPU).
 */
#ifndef FASTZSL_KNN_F32_TILES_H
#define FASTZSL_KNN_F32_TILES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FZ_F32_NR 32 /* reference rows per panel: two 16-lane vectors */
#define FZ_F32_MR 12 /* query rows per micro-tile: 24 accumulators + 2 panel vectors */

/* Panels of the n reference rows R (row-major, d components) into B, the last panel padded
 * with zero rows. */
static inline void fz_f32_pack_panels(const float *R, ptrdiff_t n, ptrdiff_t d, float *B)
{
    const ptrdiff_t n_panels = (n + FZ_F32_NR - 1) / FZ_F32_NR;
    for (ptrdiff_t p = 0; p < n_panels; p++) {
        float *dst = B + p * d * FZ_F32_NR;
        for (ptrdiff_t l = 0; l < FZ_F32_NR; l++) {
            const ptrdiff_t r = p * FZ_F32_NR + l;
            if (r < n) {
                const float *src = R + r * d;
                for (ptrdiff_t t = 0; t < d; t++)
                    dst[t * FZ_F32_NR + l] = src[t];
            } else {
                for (ptrdiff_t t = 0; t < d; t++)
                    dst[t * FZ_F32_NR + l] = 0.0f;
            }
        }
    }
}

/* The pass-1 mask of one panel's 32 products acc against one query's threshold (rn: the
 * panel's norms); the tiles' portable kernels (here and knn_bf16.h) form it. */
static inline uint32_t fz_panel_mask(const float *acc, const float *rn, float thr)
{
    uint32_t m = 0;
    for (int l = 0; l < 32; l++)
        m |= (uint32_t)(rn[l] - (acc[l] + acc[l]) <= thr) << l;
    return m;
}

static void fz_f32_tile_portable(const float *A, ptrdiff_t na, ptrdiff_t d, const float *B,
                                 ptrdiff_t n_panels, float *C, ptrdiff_t ldc, const float *rn,
                                 const float *thr, uint32_t *masks)
{
    float acc[FZ_F32_NR];
    for (ptrdiff_t i = 0; i < na; i++)
        for (ptrdiff_t p = 0; p < n_panels; p++) {
            const float *b = B + p * d * FZ_F32_NR;
            for (ptrdiff_t l = 0; l < FZ_F32_NR; l++)
                acc[l] = 0.0f;
            for (ptrdiff_t t = 0; t < d; t++) {
                const float a = A[i * d + t];
                for (ptrdiff_t l = 0; l < FZ_F32_NR; l++)
                    acc[l] += a * b[t * FZ_F32_NR + l];
            }
            memcpy(C + i * ldc + p * FZ_F32_NR, acc, sizeof acc);
            if (masks != NULL)
                masks[i * n_panels + p] = fz_panel_mask(acc, rn + p * FZ_F32_NR, thr[i]);
        }
}

#if defined(__x86_64__) && defined(__GNUC__) && (__GNUC__ >= 10 || defined(__clang__))
#include <immintrin.h>
#define FZ_F32_HW_BUILT 1

/* The epilogue of an AVX-512 micro-tile of `rows` query rows against panel p (accumulators
 * c0[r], c1[r]: its 32 products), as fz_panel_mask: masks[r n_panels + p] for query r's
 * threshold thr[r] (here and knn_bf16.h; a macro, so the accumulators stay in registers). */
#define FZ_TILE_MASKS_AVX512(c0, c1, rows, rn, thr, masks, n_panels, p)                  \
    do {                                                                                  \
        const __m512 rn0_ = _mm512_loadu_ps((rn) + (p) * 32);                             \
        const __m512 rn1_ = _mm512_loadu_ps((rn) + (p) * 32 + 16);                        \
        _Pragma("GCC unroll 12")                                                          \
        for (int r_ = 0; r_ < (rows); r_++) {                                             \
            const __m512 th_ = _mm512_set1_ps((thr)[r_]);                                 \
            const __m512 v0_ = _mm512_sub_ps(rn0_, _mm512_add_ps(c0[r_], c0[r_]));        \
            const __m512 v1_ = _mm512_sub_ps(rn1_, _mm512_add_ps(c1[r_], c1[r_]));        \
            (masks)[r_ * (n_panels) + (p)] =                                              \
                (uint32_t)_mm512_cmp_ps_mask(v0_, th_, _CMP_LE_OQ)                        \
                | ((uint32_t)_mm512_cmp_ps_mask(v1_, th_, _CMP_LE_OQ) << 16);             \
        }                                                                                 \
    } while (0)

/* rows (<= FZ_F32_MR, a constant where inlined) query rows against every panel */
__attribute__((target("avx512f,fma"), always_inline))
static inline void fz_f32_rows_avx512(const float *a, ptrdiff_t d, const float *B,
                                      ptrdiff_t n_panels, float *C, ptrdiff_t ldc,
                                      const float *rn, const float *thr, uint32_t *masks,
                                      const int rows)
{
    for (ptrdiff_t p = 0; p < n_panels; p++) {
        const float *b = B + p * d * FZ_F32_NR;
        __m512 c0[FZ_F32_MR], c1[FZ_F32_MR];
#pragma GCC unroll 12
        for (int r = 0; r < rows; r++) {
            c0[r] = _mm512_setzero_ps();
            c1[r] = _mm512_setzero_ps();
        }
        for (ptrdiff_t t = 0; t < d; t++) {
            const __m512 b0 = _mm512_loadu_ps(b + t * FZ_F32_NR);
            const __m512 b1 = _mm512_loadu_ps(b + t * FZ_F32_NR + 16);
#pragma GCC unroll 12
            for (int r = 0; r < rows; r++) {
                const __m512 av = _mm512_set1_ps(a[r * d + t]);
                c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
                c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
            }
        }
#pragma GCC unroll 12
        for (int r = 0; r < rows; r++) {
            _mm512_storeu_ps(C + r * ldc + p * FZ_F32_NR, c0[r]);
            _mm512_storeu_ps(C + r * ldc + p * FZ_F32_NR + 16, c1[r]);
        }
        if (masks != NULL)
            FZ_TILE_MASKS_AVX512(c0, c1, rows, rn, thr, masks, n_panels, p);
    }
}

__attribute__((target("avx512f,fma")))
static void fz_f32_tile_avx512(const float *A, ptrdiff_t na, ptrdiff_t d, const float *B,
                               ptrdiff_t n_panels, float *C, ptrdiff_t ldc, const float *rn,
                               const float *thr, uint32_t *masks)
{
    ptrdiff_t i0 = 0;
#define FZ_F32_ROWS(n) \
    fz_f32_rows_avx512(A + i0 * d, d, B, n_panels, C + i0 * ldc, ldc, rn, \
                       masks != NULL ? thr + i0 : NULL, \
                       masks != NULL ? masks + i0 * n_panels : NULL, n)
    for (; i0 + FZ_F32_MR <= na; i0 += FZ_F32_MR)
        FZ_F32_ROWS(FZ_F32_MR);
    /* the last rows: one specialised kernel per count (accumulators stay in registers) */
    switch (na - i0) {
#define FZ_F32_REST(n) \
    case n: FZ_F32_ROWS(n); break;
    FZ_F32_REST(1) FZ_F32_REST(2) FZ_F32_REST(3) FZ_F32_REST(4) FZ_F32_REST(5)
    FZ_F32_REST(6) FZ_F32_REST(7) FZ_F32_REST(8) FZ_F32_REST(9) FZ_F32_REST(10)
    FZ_F32_REST(11)
#undef FZ_F32_REST
#undef FZ_F32_ROWS
    default: break;
    }
}

static inline int fz_f32_tiles_hw_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}
#else
#define FZ_F32_HW_BUILT 0
static inline int fz_f32_tiles_hw_available(void) { return 0; }
#endif

static inline void fz_f32_tile(int hw, const float *A, ptrdiff_t na, ptrdiff_t d,
                               const float *B, ptrdiff_t n_panels, float *C, ptrdiff_t ldc,
                               const float *rn, const float *thr, uint32_t *masks)
{
#if FZ_F32_HW_BUILT
    if (hw) {
        fz_f32_tile_avx512(A, na, d, B, n_panels, C, ldc, rn, thr, masks);
        return;
    }
#endif
    fz_f32_tile_portable(A, na, d, B, n_panels, C, ldc, rn, thr, masks);
}

#endif
