/* BF16 dot-product tiles for the BF16 screen of csrc/cpu/knn_bf16.pxi.
 *
 * Rows are rounded to bfloat16 by fz_bf16_round (round to nearest even; a result below
 * FLT_MIN in magnitude becomes 0, because the AVX512_BF16 dot product treats subnormal
 * inputs as 0: the value the caller measures its rounding error from is then the value
 * the hardware multiplies). Two consecutive components share one 32-bit word (the lower
 * index in the low half), so a row of d components is dp2 = ceil(d / 2) words, zero-padded.
 *
 * fz_bf16_tile(hw, A, na, B, n_panels, dp2, C, ldc) writes C[i][32 p + l] = the float32 dot
 * product of query row i (A + i dp2) and reference row 32 p + l, with the references packed
 * by fz_bf16_pack in panels of FZ_BF16_NR rows: word t of panel p's row l at
 * B[(p dp2 + t) FZ_BF16_NR + l]. na must be a multiple of FZ_BF16_MR (callers pad with
 * zero rows). Every product of two bfloat16 values is exact in float32; the sums are float32
 * additions in some order (subnormal results flushed to 0 by the hardware), which is all
 * the caller's error bound assumes. With masks != NULL it also writes the pass-1 masks of
 * each row i and panel p against thr[i], as fz_f32_tile does (knn_f32_tiles.h; rn: the
 * tile's norms, whole panels). hw != 0 runs the AVX512_BF16 kernel (VDPBF16PS; only
 * where fz_bf16_hw_available() says the CPU has it), hw == 0 a portable kernel that forms
 * the same exact products (the emulation the tests run on any CPU).
 */
#ifndef FASTZSL_KNN_BF16_H
#define FASTZSL_KNN_BF16_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "knn_f32_tiles.h" /* the pass-1 masks: fz_panel_mask, FZ_TILE_MASKS_AVX512 */

#define FZ_BF16_NR 32 /* reference rows per panel: two 16-lane vectors */
#define FZ_BF16_MR 12 /* query rows per micro-tile: 24 accumulators + 2 panel vectors */

static inline uint16_t fz_bf16_bits(float x)
{
    uint32_t b, r;
    memcpy(&b, &x, 4);
    r = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16; /* round to nearest, ties to even */
    /* finite input: |x| >= FLT_MIN exactly when its magnitude bits are >= FLT_MIN's */
    return (uint16_t)((b & 0x7FFFFFFFu) >= 0x00800000u ? r : 0u);
}

static inline float fz_bf16_value(uint16_t h)
{
    uint32_t b = (uint32_t)h << 16;
    float x;
    memcpy(&x, &b, 4);
    return x;
}

/* Rounds row x[0..d-1] to dp2 words of bfloat16 pairs; rounded[t] (optional) gets each
 * rounded component as float. */
static inline void fz_bf16_round(const float *x, ptrdiff_t d, uint32_t *words, float *rounded)
{
    ptrdiff_t t;
    for (t = 0; t < d; t += 2) {
        uint16_t lo = fz_bf16_bits(x[t]);
        uint16_t hi = t + 1 < d ? fz_bf16_bits(x[t + 1]) : 0;
        words[t / 2] = (uint32_t)lo | ((uint32_t)hi << 16);
        if (rounded != NULL) {
            rounded[t] = fz_bf16_value(lo);
            if (t + 1 < d)
                rounded[t + 1] = fz_bf16_value(hi);
        }
    }
}

/* Of a row x and its rounding xr, in double: ||xr||^2, ||x - xr||, ||x||^2. */
static inline void fz_bf16_row_stats(const float *x, const float *xr, ptrdiff_t d,
                                     double *rounded_sq, double *error, double *sq)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, a, e;
    ptrdiff_t t;
    for (t = 0; t < d; t++) {
        a = (double)xr[t];
        e = (double)x[t] - a;
        s0 += a * a;
        s1 += e * e;
        s2 += (double)x[t] * (double)x[t];
    }
    *rounded_sq = s0;
    *error = sqrt(s1);
    *sq = s2;
}

/* Panel p of the packed references from float rows x[r][0..d-1] (r < n; rows beyond n in
 * the last panel are zero), rounded as fz_bf16_round, and each row's stats (as
 * fz_bf16_row_stats) at stats[0 / n / 2n + r]; row, rounded: scratch of dp2 words, d floats. */
static inline void fz_bf16_pack_panel(const float *x, ptrdiff_t n, ptrdiff_t d, ptrdiff_t p,
                                      uint32_t *row, float *rounded, uint32_t *packed,
                                      double *stats)
{
    ptrdiff_t dp2 = (d + 1) / 2;
    ptrdiff_t t, l, r;
    uint32_t *dst = packed + p * dp2 * FZ_BF16_NR;
    for (l = 0; l < FZ_BF16_NR; l++) {
        r = p * FZ_BF16_NR + l;
        if (r < n) {
            fz_bf16_round(x + r * d, d, row, rounded);
            fz_bf16_row_stats(x + r * d, rounded, d, stats + r, stats + n + r,
                              stats + 2 * n + r);
        }
        for (t = 0; t < dp2; t++)
            dst[t * FZ_BF16_NR + l] = r < n ? row[t] : 0u;
    }
}

static void fz_bf16_tile_portable(const uint32_t *A, ptrdiff_t na, const uint32_t *B,
                                  ptrdiff_t n_panels, ptrdiff_t dp2, float *C, ptrdiff_t ldc,
                                  const float *rn, const float *thr, uint32_t *masks)
{
    ptrdiff_t i, p, t, l;
    float acc[FZ_BF16_NR];
    for (i = 0; i < na; i++)
        for (p = 0; p < n_panels; p++) {
            const uint32_t *b = B + p * dp2 * FZ_BF16_NR;
            for (l = 0; l < FZ_BF16_NR; l++)
                acc[l] = 0.0f;
            for (t = 0; t < dp2; t++) {
                float a0 = fz_bf16_value((uint16_t)(A[i * dp2 + t] & 0xFFFFu));
                float a1 = fz_bf16_value((uint16_t)(A[i * dp2 + t] >> 16));
                for (l = 0; l < FZ_BF16_NR; l++) {
                    uint32_t w = b[t * FZ_BF16_NR + l];
                    /* both products exact; two float32 additions, as VDPBF16PS */
                    acc[l] += a1 * fz_bf16_value((uint16_t)(w >> 16));
                    acc[l] += a0 * fz_bf16_value((uint16_t)(w & 0xFFFFu));
                }
            }
            memcpy(C + i * ldc + p * FZ_BF16_NR, acc, sizeof acc);
            if (masks != NULL)
                masks[i * n_panels + p] = fz_panel_mask(acc, rn + p * FZ_BF16_NR, thr[i]);
        }
}

#if defined(__x86_64__) && defined(__GNUC__) && (__GNUC__ >= 10 || defined(__clang__))
#include <immintrin.h>
#define FZ_BF16_HW_BUILT 1

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void fz_bf16_tile_avx512(const uint32_t *A, ptrdiff_t na, const uint32_t *B,
                                ptrdiff_t n_panels, ptrdiff_t dp2, float *C, ptrdiff_t ldc,
                                const float *rn, const float *thr, uint32_t *masks)
{
    ptrdiff_t i0, p, t;
    int r;
    for (i0 = 0; i0 < na; i0 += FZ_BF16_MR) {
        const uint32_t *a = A + i0 * dp2;
        for (p = 0; p < n_panels; p++) {
            const uint32_t *b = B + p * dp2 * FZ_BF16_NR;
            __m512 c0[FZ_BF16_MR], c1[FZ_BF16_MR];
#pragma GCC unroll 12
            for (r = 0; r < FZ_BF16_MR; r++) {
                c0[r] = _mm512_setzero_ps();
                c1[r] = _mm512_setzero_ps();
            }
            for (t = 0; t < dp2; t++) {
                __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + t * FZ_BF16_NR);
                __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + t * FZ_BF16_NR + 16);
#pragma GCC unroll 12
                for (r = 0; r < FZ_BF16_MR; r++) {
                    __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r * dp2 + t]);
                    c0[r] = _mm512_dpbf16_ps(c0[r], av, b0);
                    c1[r] = _mm512_dpbf16_ps(c1[r], av, b1);
                }
            }
#pragma GCC unroll 12
            for (r = 0; r < FZ_BF16_MR; r++) {
                _mm512_storeu_ps(C + (i0 + r) * ldc + p * FZ_BF16_NR, c0[r]);
                _mm512_storeu_ps(C + (i0 + r) * ldc + p * FZ_BF16_NR + 16, c1[r]);
            }
            if (masks != NULL)
                FZ_TILE_MASKS_AVX512(c0, c1, FZ_BF16_MR, rn, thr + i0, masks + i0 * n_panels,
                                     n_panels, p);
        }
    }
}

static inline int fz_bf16_hw_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw")
           && __builtin_cpu_supports("avx512vl");
}
#else
#define FZ_BF16_HW_BUILT 0
static inline int fz_bf16_hw_available(void) { return 0; }
#endif

static inline void fz_bf16_tile(int hw, const uint32_t *A, ptrdiff_t na, const uint32_t *B,
                                ptrdiff_t n_panels, ptrdiff_t dp2, float *C, ptrdiff_t ldc,
                                const float *rn, const float *thr, uint32_t *masks)
{
#if FZ_BF16_HW_BUILT
    if (hw) {
        fz_bf16_tile_avx512(A, na, B, n_panels, dp2, C, ldc, rn, thr, masks);
        return;
    }
#endif
    fz_bf16_tile_portable(A, na, B, n_panels, dp2, C, ldc, rn, thr, masks);
}

#endif
