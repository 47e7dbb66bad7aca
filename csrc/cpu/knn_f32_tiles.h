/* Float32 dot-product tiles for pass 1 of the kNN kernel (csrc/cpu/knn_twopass.pxi), and
 * the products of the Gaussian kernel (csrc/cpu/gaussian_cpu.pyx), float32 and float64:
 * fz_f64_tile / fz_f64_pack_panels are the same in float64 (panels of FZ_F64_NR rows, 12 x
 * 16 outputs per micro-tile, no masks). Both types come from dot_tiles_impl.h.
 *
 * fz_f32_tile(kernel, A, na, d, B, nb, C, ldc) writes C[i][32 p + l] = the float32 dot
 * product of query row i (A + i d, row-major, read in place) and reference row 32 p + l
 * < nb (n_panels = nb / 32 rounded up; the padding rows' columns may be left unwritten),
 * with the references packed by fz_f32_pack_panels in panels of FZ_F32_NR rows: component
 * t of panel p's row l at B[(p d + t) FZ_F32_NR + l] (rows past the tile's end are zero;
 * for the AVX2 kernel, each panel's two halves one after the other: dot_tiles_impl.h).
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
 * multiply-adds) and C is written once. The micro-kernel is the `kernel` argument:
 * FZ_TILES_AVX512 (12 x 32 outputs in 24 zmm accumulators), FZ_TILES_AVX2 (6 x 16 outputs,
 * half a panel, in 12 ymm accumulators: AVX2 has 16 vector registers), each only where
 * fz_tiles_cpu_kernels() says the CPU has it, or anything else the portable one (what the
 * tests run on any CPU). All three form the same products within the pass-1 bound; the two
 * vector kernels the same FMAs in the same order, so bit for bit the same values and masks.
 */
#ifndef FASTZSL_KNN_F32_TILES_H
#define FASTZSL_KNN_F32_TILES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FZ_F32_NR 32 /* reference rows per panel: two 16-lane vectors */
#define FZ_F64_NR 16 /* the same for float64: two 8-lane vectors */
#define FZ_TILE_MR 12 /* query rows per micro-tile: 24 accumulators + 2 panel vectors */
#define FZ_TILE_MR_AVX2 6 /* the same for AVX2: 12 accumulators + 2 panel vectors + 1 */
/* the micro-kernels (the `kernel` argument of fz_f32_tile / fz_f64_tile); also the codes of
 * knn_cpu's products route (0 there: BLAS, not the tiles) */
#define FZ_TILES_AVX512 1
#define FZ_TILES_PORTABLE 2
#define FZ_TILES_AVX2 3

/* The pass-1 mask of one panel's 32 products acc against one query's threshold (rn: the
 * panel's norms); the tiles' portable kernels (here and knn_bf16.h) form it. */
static inline uint32_t fz_panel_mask(const float *acc, const float *rn, float thr)
{
    uint32_t m = 0;
    for (int l = 0; l < 32; l++)
        m |= (uint32_t)(rn[l] - (acc[l] + acc[l]) <= thr) << l;
    return m;
}

#if defined(__x86_64__) && defined(__GNUC__) && (__GNUC__ >= 10 || defined(__clang__))
#include <immintrin.h>
#define FZ_TILES_HW_BUILT 1

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

/* The same for the AVX2 micro-tile, half a panel h (0 or 1) at a time: the first half
 * writes the mask's low 16 bits, the second adds the high ones (rnh: that half's norms). */
#define FZ_TILE_MASKS_AVX2(c0, c1, rows, rnh, thr, masks, n_panels, p, h)                 \
    do {                                                                                  \
        const __m256 rn0_ = _mm256_loadu_ps(rnh);                                         \
        const __m256 rn1_ = _mm256_loadu_ps((rnh) + 8);                                   \
        _Pragma("GCC unroll 6")                                                           \
        for (int r_ = 0; r_ < (rows); r_++) {                                             \
            const __m256 th_ = _mm256_set1_ps((thr)[r_]);                                 \
            const __m256 v0_ = _mm256_sub_ps(rn0_, _mm256_add_ps(c0[r_], c0[r_]));        \
            const __m256 v1_ = _mm256_sub_ps(rn1_, _mm256_add_ps(c1[r_], c1[r_]));        \
            const uint32_t m_ =                                                           \
                (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v0_, th_, _CMP_LE_OQ))         \
                | ((uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v1_, th_, _CMP_LE_OQ)) << 8); \
            if ((h) == 0)                                                                 \
                (masks)[r_ * (n_panels) + (p)] = m_;                                      \
            else                                                                          \
                (masks)[r_ * (n_panels) + (p)] |= m_ << 16;                               \
        }                                                                                 \
    } while (0)

/* The micro-kernels this CPU runs, as a bit set: 1 << FZ_TILES_AVX512 where it has
 * AVX-512F and FMA, 1 << FZ_TILES_AVX2 where it has AVX2 and FMA. */
static inline int fz_tiles_cpu_kernels(void)
{
    __builtin_cpu_init();
    const int fma = __builtin_cpu_supports("fma");
    return (fma && __builtin_cpu_supports("avx512f") ? 1 << FZ_TILES_AVX512 : 0)
           | (fma && __builtin_cpu_supports("avx2") ? 1 << FZ_TILES_AVX2 : 0);
}

/* The four sums of a0..a3's lanes, in that order */
__attribute__((target("avx2,fma"), always_inline))
static inline __m128 fz_f32_sum4_avx2(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* One step of FZ_DOTS_BLOCK_AVX2: components t_..t_+7 of the four rows and the M queries,
 * loaded by LOAD(p) */
#define FZ_DOTS_STEP_AVX2(M, LOAD)                                                          \
    do {                                                                                    \
        const __m256 r0_ = LOAD(R0 + t_), r1_ = LOAD(R1 + t_);                              \
        const __m256 r2_ = LOAD(R2 + t_), r3_ = LOAD(R3 + t_);                              \
        for (int u_ = 0; u_ < (M); u_++) {                                                  \
            const __m256 q_ = LOAD(Q + (q0 + u_) * d + t_);                                 \
            acc_[u_][0] = _mm256_fmadd_ps(r0_, q_, acc_[u_][0]);                            \
            acc_[u_][1] = _mm256_fmadd_ps(r1_, q_, acc_[u_][1]);                            \
            acc_[u_][2] = _mm256_fmadd_ps(r2_, q_, acc_[u_][2]);                            \
            acc_[u_][3] = _mm256_fmadd_ps(r3_, q_, acc_[u_][3]);                            \
        }                                                                                   \
    } while (0)
#define FZ_DOTS_TAIL_LOAD(p) _mm256_maskload_ps((p), tail_)

/* fz_f32_dots' block of four reference rows R0..R3 (repeats past the tile's end, nrow of
 * them stored) against queries q0..q0+M-1: 8 components per FMA, the last d % 8 by masked
 * loads (zeros elsewhere, which add nothing), then each sum's lanes added up */
#define FZ_DOTS_BLOCK_AVX2(M)                                                               \
    do {                                                                                    \
        __m256 acc_[M][4];                                                                  \
        for (int u_ = 0; u_ < (M); u_++)                                                    \
            for (int v_ = 0; v_ < 4; v_++)                                                  \
                acc_[u_][v_] = _mm256_setzero_ps();                                         \
        ptrdiff_t t_ = 0;                                                                   \
        for (; t_ + 8 <= d; t_ += 8)                                                        \
            FZ_DOTS_STEP_AVX2(M, _mm256_loadu_ps);                                          \
        if (t_ < d)                                                                         \
            FZ_DOTS_STEP_AVX2(M, FZ_DOTS_TAIL_LOAD);                                        \
        for (int u_ = 0; u_ < (M); u_++) {                                                  \
            const __m128 s_ = fz_f32_sum4_avx2(acc_[u_][0], acc_[u_][1], acc_[u_][2],       \
                                               acc_[u_][3]);                                \
            if (nrow == 4) {                                                                \
                _mm_storeu_ps(out + (q0 + u_) * ldo + r, s_);                               \
            } else {                                                                        \
                float e_[4];                                                                \
                _mm_storeu_ps(e_, s_);                                                      \
                for (int v_ = 0; v_ < nrow; v_++)                                           \
                    out[(q0 + u_) * ldo + r + v_] = e_[v_];                                 \
            }                                                                               \
        }                                                                                   \
    } while (0)

/* fz_f32_dots with AVX2 and FMA: four reference rows against three queries at a time (12
 * accumulators, 4 row vectors), the rows read in place */
__attribute__((target("avx2,fma")))
static void fz_f32_dots_avx2(const float *Q, ptrdiff_t nq, const float *R, ptrdiff_t nr,
                             ptrdiff_t d, float *out, ptrdiff_t ldo)
{
    /* the lanes of the last d % 8 components */
    const __m256i tail_ = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(d % 8)),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (ptrdiff_t r = 0; r < nr; r += 4) {
        const int nrow = nr - r < 4 ? (int)(nr - r) : 4;
        const float *R0 = R + r * d;
        const float *R1 = R + (r + (nrow > 1)) * d;
        const float *R2 = R + (r + (nrow > 2 ? 2 : 0)) * d;
        const float *R3 = R + (r + (nrow > 3 ? 3 : 0)) * d;
        ptrdiff_t q0 = 0;
        for (; q0 + 3 <= nq; q0 += 3)
            FZ_DOTS_BLOCK_AVX2(3);
        if (nq - q0 == 2)
            FZ_DOTS_BLOCK_AVX2(2);
        else if (nq - q0 == 1)
            FZ_DOTS_BLOCK_AVX2(1);
    }
}
#undef FZ_DOTS_BLOCK_AVX2
#undef FZ_DOTS_STEP_AVX2
#undef FZ_DOTS_TAIL_LOAD
#else
#define FZ_TILES_HW_BUILT 0
static inline int fz_tiles_cpu_kernels(void) { return 0; }
#endif

/* out[q ldo + r] = the float32 dot product of query q < nq and reference r < nr, both
 * row-major with d components and read in place: the products of kNN's split path for a
 * few queries, where packing the reference tile (BLAS, or the tiles' panels) for them cost
 * more than the products (OpenBLAS: twice its kernel's time at 10 queries, d = 50). With
 * `avx2` (only where fz_tiles_cpu_kernels() has FZ_TILES_AVX2) eight components per FMA
 * and the lanes added up at the end, else the portable loop in component order: another
 * summation order of the same products, which the pass-1 bound allows (it holds for any). */
static inline void fz_f32_dots(int avx2, const float *Q, ptrdiff_t nq, const float *R,
                               ptrdiff_t nr, ptrdiff_t d, float *out, ptrdiff_t ldo)
{
#if FZ_TILES_HW_BUILT
    if (avx2) {
        fz_f32_dots_avx2(Q, nq, R, nr, d, out, ldo);
        return;
    }
#else
    (void)avx2;
#endif
    for (ptrdiff_t q = 0; q < nq; q++)
        for (ptrdiff_t r = 0; r < nr; r++) {
            float s = 0.0f;
            for (ptrdiff_t t = 0; t < d; t++)
                s += Q[q * d + t] * R[r * d + t];
            out[q * ldo + r] = s;
        }
}

/* float32: panels of FZ_F32_NR rows, with the pass-1 masks */
#define FZ_TT float
#define FZ_TN(name) fz_f32_##name
#define FZ_TNR FZ_F32_NR
#define FZ_TMASKS 1
#define FZ_TV __m512
#define FZ_TV_ZERO _mm512_setzero_ps
#define FZ_TV_LOAD _mm512_loadu_ps
#define FZ_TV_STORE _mm512_storeu_ps
#define FZ_TV_SET1 _mm512_set1_ps
#define FZ_TV_FMA _mm512_fmadd_ps
#define FZ_TY __m256
#define FZ_TY_LANES 8
#define FZ_TY_ZERO _mm256_setzero_ps
#define FZ_TY_LOAD _mm256_loadu_ps
#define FZ_TY_STORE _mm256_storeu_ps
#define FZ_TY_SET1 _mm256_set1_ps
#define FZ_TY_FMA _mm256_fmadd_ps
#include "dot_tiles_impl.h" /* undefines the parameters above */

/* fz_f32_pack_panels of fl32(R), float64 rows R rounded to nearest on the way: kNN's float32
 * screen of float64 input rounds each reference tile as it packs it, so the reference
 * needs no float32 copy. */
static inline void fz_f32_pack_panels_rounded(int kernel, const double *R, ptrdiff_t n,
                                              ptrdiff_t d, float *B)
{
    const ptrdiff_t n_padded = (n + FZ_F32_NR - 1) / FZ_F32_NR * FZ_F32_NR;
    for (ptrdiff_t r = 0; r < n_padded; r++) {
        ptrdiff_t h;
        float *dst = fz_f32_panel_row(kernel, B, r, d, &h);
        if (r >= n) {
            for (ptrdiff_t t = 0; t < d; t++)
                dst[t * h] = 0;
        } else {
            for (ptrdiff_t t = 0; t < d; t++)
                dst[t * h] = (float)R[r * d + t];
        }
    }
}

/* float64 (the Gaussian products): panels of FZ_F64_NR rows, no masks */
#define FZ_TT double
#define FZ_TN(name) fz_f64_##name
#define FZ_TNR FZ_F64_NR
#define FZ_TMASKS 0
#define FZ_TV __m512d
#define FZ_TV_ZERO _mm512_setzero_pd
#define FZ_TV_LOAD _mm512_loadu_pd
#define FZ_TV_STORE _mm512_storeu_pd
#define FZ_TV_SET1 _mm512_set1_pd
#define FZ_TV_FMA _mm512_fmadd_pd
#define FZ_TY __m256d
#define FZ_TY_LANES 4
#define FZ_TY_ZERO _mm256_setzero_pd
#define FZ_TY_LOAD _mm256_loadu_pd
#define FZ_TY_STORE _mm256_storeu_pd
#define FZ_TY_SET1 _mm256_set1_pd
#define FZ_TY_FMA _mm256_fmadd_pd
#include "dot_tiles_impl.h" /* undefines the parameters above */

#endif
