/* Row reductions of csrc/cpu/gaussian_cpu.pyx (GEMM-form Gaussian log-likelihoods).
 *
 * For one tile of rows, given the dot products P[i, c] = Fc_i . Mc_c of the centred rows
 * and means (BLAS, input precision) and the squared norms fn_i = ||Fc_i||^2 (double),
 * fz_gauss_tile_{f,d} forms in double
 *
 *     L~[i, c] = h_c (2 P[i, c] - fn_i) - (h_c mn_c + ln_c),   h_c = 1 / (2 var_c),
 *     beta[i, c] = K h_c (fn_i + mn_c) + 4 u' |ln_c|,
 *
 * where beta bounds |L~ - L_dir| (L_dir: the value from the double sum of squared
 * differences, fz_direct); K and the derivation are in fastzsl/backends/_gaussian_gemm.py.
 *
 * The values and decisions are defined per row, independently of which outputs are asked
 * for (every step below only needs to look at a superset of the entries it concerns):
 *
 *   B_c = L_dir if beta_c > acc |L~_c| ("need") else L~_c;   b_c = 0 or beta_c likewise.
 *   argmax: lo = max_c (B_c - b_c) is a lower bound of the true maximum; the candidates
 *     K = {c : B_c + b_c >= lo} hold it. When |K| > 1 every candidate takes L_dir, so
 *     near-ties are decided on direct values; F_c = B_c elsewhere. The argmax is the first
 *     c with the largest F_c, and the row max is that F_c.
 *   all_below: F_c < threshold_c for every c; for float32 inputs (exact_thresholds: their
 *     acc is coarse) an entry within b_c of its threshold is decided, and stored, by L_dir.
 *   logsumexp: over the terms F_c + lw_c within lse_cut of their max (the others add
 *     less than C e^-64 relative), in index order; if its error bound
 *     2 sum e_c b_c / sum e_c exceeds acc |lse|, the terms with b_c > 0 use L_dir.
 *   The (n, C) matrix, when asked for, holds F.
 *
 * Per row: pass A forms L~ and its maximum (with the matrix asked for, also beta, and
 * every "need" entry is fixed). Two lower bounds follow: lo1 = max L~ - beta_max <= lo,
 * and W <= max (F + lw) (from lo1 and the smallest weight when all weights are finite,
 * and from the heaviest class). Pass B screens every entry with beta_max in place of its
 * own beta, t = L~ + beta_max >= min(lo1, threshold_c, W - lse_cut - lw_c), skipping
 * blocks of FZ_BLOCK and then FZ_GAUSS_CHUNK entries after one vectorised max-reduction
 * each; the entries that pass are tested with their own beta and listed when they may be an
 * argmax candidate, a logsumexp term or not below their threshold. Only the listed
 * entries (a few per row on typical data) get the scalar treatment above, so a row costs
 * two vectorised passes plus O(listed) work. A row's values depend only on the row, the
 * classes and acc (and the thresholds, for float32 entries next to one), so a row gets the
 * same numbers in every call whose GEMM sees it in the same tile position (every tile is
 * padded to the full BLAS call shape).
 * The hot function is compiled for x86-64-v4 / v3 / baseline and picked at load time
 * (GCC target_clones): the build itself uses portable flags.
 */
#ifndef FASTZSL_GAUSSIAN_KERNELS_H
#define FASTZSL_GAUSSIAN_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12 \
    && defined(__ELF__)
#define FZ_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FZ_CLONES
#endif

#define FZ_BLOCK 256
#define FZ_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FZ_MAX(a, b) ((a) > (b) ? (a) : (b))
#define FZ_GAUSS_CHUNK 16

/* why an entry is on a row's list (pass B) */
enum { FZ_ARGMAX = 1, FZ_LSE = 2, FZ_THRESHOLD = 4 };

typedef struct {
    ptrdiff_t n_classes, d;
    const double *h;     /* h_c = 1 / (2 var_c) */
    const double *k;     /* h_c mn_c + ln_c */
    const double *kh;    /* K h_c */
    const double *km;    /* K h_c mn_c */
    const double *var;   /* var_c (direct recompute) */
    const double *ln;    /* d/2 log(2 pi var_c) */
    const double *lw;    /* log weights */
    const double *thr;   /* thresholds */
    double kh_max, km_max;   /* max kh, max km: beta_c <= kh_max fn + km_max */
    ptrdiff_t heavy;         /* a class with the largest log weight (-1: all are -inf) */
    int all_weights_finite;
    double lw_min;           /* the smallest log weight */
    int uniform_weights;     /* every log weight equals lw[0] */
    int finite_thresholds;   /* some threshold is below +inf */
    double acc;
    double lse_cut;          /* logsumexp terms below max - lse_cut are left out */
    int exact_thresholds;
} fz_gauss_params;

/* Runs BODY for every c in [0, n) with M(c) >= 0, in increasing c: blocks of FZ_BLOCK and
 * then of FZ_GAUSS_CHUNK entries are skipped after one vectorised max-reduction each, since
 * only a few entries per row are expected. */
#define FZ_FOR_NONNEG(M, n, c, BODY)                                                      \
    for (ptrdiff_t b0_ = 0; b0_ < (n); b0_ += FZ_BLOCK) {                                 \
        ptrdiff_t b1_ = b0_ + FZ_BLOCK < (n) ? b0_ + FZ_BLOCK : (n);                      \
        double top_ = -INFINITY;                                                          \
        _Pragma("omp simd reduction(max:top_)")                                           \
        for (c = b0_; c < b1_; c++)                                                       \
            top_ = FZ_MAX(M(c), top_);                                                    \
        if (!(top_ >= 0.0))                                                               \
            continue;                                                                     \
        for (ptrdiff_t c0_ = b0_; c0_ < b1_; c0_ += FZ_GAUSS_CHUNK) {                     \
            ptrdiff_t c1_ = c0_ + FZ_GAUSS_CHUNK < b1_ ? c0_ + FZ_GAUSS_CHUNK : b1_;      \
            top_ = -INFINITY;                                                             \
            _Pragma("omp simd reduction(max:top_)")                                       \
            for (c = c0_; c < c1_; c++)                                                   \
                top_ = FZ_MAX(M(c), top_);                                                \
            if (!(top_ >= 0.0))                                                           \
                continue;                                                                 \
            for (c = c0_; c < c1_; c++) {                                                 \
                if (M(c) >= 0.0)                                                          \
                    BODY                                                                  \
            }                                                                             \
        }                                                                                 \
    }

#define FZ_T float
#define FZ_N(name) name##_f
#include "gaussian_kernels_impl.h"
#undef FZ_T
#undef FZ_N

#define FZ_T double
#define FZ_N(name) name##_d
#include "gaussian_kernels_impl.h"
#undef FZ_T
#undef FZ_N

#endif /* FASTZSL_GAUSSIAN_KERNELS_H */
