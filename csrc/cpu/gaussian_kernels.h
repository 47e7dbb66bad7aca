/* Row reductions of csrc/cpu/gaussian_cpu.pyx (GEMM-form Gaussian log-likelihoods).
 *
 * For one tile of rows, given the dot products P[i, c] = Fc_i . Mc_c of the centred rows
 * and means (BLAS or the f32 tiles, input precision) and the squared norms
 * fn_i = ||Fc_i||^2 (double), fz_gauss_tile_{f,d} forms in double
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
 *   logsumexp: from L~ and beta alone (fz_gauss_lse), certified as a whole: its error
 *     bound (1 + (e - 2) bk) sum e_c b_c / sum e_c (bk: the kept terms' largest b_c, while
 *     at most 1; bk itself beyond: FZ_CERTIFIED) plus the terms left out (fz_lse_other),
 *     exp's and the sums' rounding must stay within acc |lse|, else the terms carrying
 *     most of it (and those above 1 nat) take L_dir (then all terms).
 *     Terms further than cut below the largest are left out, cut from the accuracy the
 *     output needs (fz_lse_cut) plus 2 beta_max, at most FZ_LSE_CUT_MAX, and the rest
 *     summed with a vectorised exp polynomial (fz_exp_poly of the lowest degree |lse|
 *     allows, or fz_expf_poly in float32 for float32 inputs where |lse| leaves room).
 *   The (n, C) matrix, when asked for, holds F.
 *
 * Per row: pass A forms L~ and the maxima of L~ and of L~ + lw, overall and per block of
 * FZ_LSE_BLOCK classes (vectorised); the logsumexp follows (blocks without a term are
 * skipped on their maximum); with the matrix asked for, every "need" entry is then fixed.
 * Pass B screens every entry with beta_max in place of its own beta against lo1 = max L~ -
 * beta_max and the thresholds, skipping blocks on their maximum (and smallest threshold)
 * and then chunks of FZ_GAUSS_CHUNK entries after one vectorised max-reduction each; the
 * entries that pass are tested with their own beta and listed when they may be an
 * argmax candidate or not below their threshold. Only the listed entries (a few per row on
 * typical data) get the scalar treatment above, so a row costs a few vectorised passes plus
 * O(listed) work. With at most FZ_PAD classes that fixed cost per row dominates, so rows
 * go FZ_LANES at a time, a row per vector lane (fz_gauss_lanes), their direct values and
 * the logsumexp's refinement (fz_lse_refine) included; only rows with several argmax
 * candidates, a float32 entry next to its threshold or a logsumexp that does not certify
 * after refinement take the one-row path. A row's values depend only on the row, the
 * classes and acc (and the thresholds, for float32 entries next to one), so a row gets the
 * same numbers in every call whose GEMM sees it in the same tile position (every tile is
 * padded to the full GEMM call shape).
 * The direct route (fz_gauss_tile with no products; the caller picks it for at most FZ_PAD
 * classes and small d, where the product and its bounds cost more than the differences):
 * the lanes take every value by direct differences in double (fz_lanes_direct: B_c = L_dir,
 * b_c = 0 throughout, so every decision is on direct values and the logsumexp certifies
 * from the exp's and the sum's own errors alone); a row they cannot decide (exact ties,
 * every weight zero, a logsumexp too close to 0 for the polynomial) is finished there by
 * libm's exp.
 * The hot function is compiled for x86-64-v4 / v3 / baseline and picked at load time
 * (GCC target_clones): the build itself uses portable flags.
 */
#ifndef FASTZSL_GAUSSIAN_KERNELS_H
#define FASTZSL_GAUSSIAN_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12 \
    && defined(__ELF__)
#define FZ_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FZ_CLONES
#endif

#define FZ_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FZ_MAX(a, b) ((a) > (b) ? (a) : (b))
#define FZ_GAUSS_CHUNK 16
/* classes per block of a row's block maxima (pass A), for skipping blocks in the
 * logsumexp and the screen */
#define FZ_LSE_BLOCK 64
/* the class arrays are padded to a multiple of this (see fz_gauss_params) */
#define FZ_PAD 16
/* rows decided together where the classes fit one FZ_PAD (fz_gauss_lanes; tiles of rows
 * are a multiple of it) */
#define FZ_LANES 8
/* the largest d of the direct route's lanes (fz_lanes_direct: the rows' transposed copy) */
#define FZ_DIRECT_MAX_D 256
/* fz_gauss_lanes' answer when the direct route meets a value that is not finite */
#define FZ_LANES_HANDOVER (1u << 31)
/* Half of a group of lanes (four rows' doubles): the direct route computes in these, not
 * in eight-double vectors. GCC keeps a vector wider than the CPU's registers (on AVX2:
 * eight doubles) in memory and moves it through general registers at every operation
 * (the eight-double route took 6-12x the blocked product's time on Zen 3); four doubles
 * are one AVX2 register, and AVX-512 CPUs run them at the same rate (Zen 4 splits its
 * 512-bit operations in two). */
typedef double fz_half_vd __attribute__((vector_size(FZ_LANES / 2 * sizeof(double))));
typedef int64_t fz_half_vm __attribute__((vector_size(FZ_LANES / 2 * sizeof(double))));

/* FZ_MAX lane by lane (a > b ? a : b), as one vector operation */
static inline __attribute__((always_inline)) fz_half_vd fz_half_max(fz_half_vd a,
                                                                     fz_half_vd b)
{
    const fz_half_vm m = a > b;
    return (fz_half_vd)((m & (fz_half_vm)a) | (~m & (fz_half_vm)b));
}

/* why an entry is on a row's list (pass B) */
enum { FZ_ARGMAX = 1, FZ_THRESHOLD = 4 };

#define FZ_UNIT_ROUNDOFF_DOUBLE 0x1p-53
/* logsumexp terms are never cut closer than this far below the largest, nor kept further */
#define FZ_LSE_CUT_MIN 1.0
#define FZ_LSE_CUT_MAX 64.0
/* Relative error bounds of fz_exp_poly on [-FZ_LSE_CUT_MAX - 1, 0] (degree 12, 10, 9 and 7;
 * derived in fastzsl/backends/_gaussian_gemm.py, EXP_POLY_EPS, and checked there against
 * libm). */
#define FZ_EXP12_EPS 0x1p-47
#define FZ_EXP10_EPS 0x1p-41
#define FZ_EXP9_EPS 0x1p-36
#define FZ_EXP7_EPS 0x1p-26
/* the bound of fz_exp_poly's degree (12, 10, 9 or 7) */
#define FZ_EXP_EPS(degree) ((degree) >= 12 ? FZ_EXP12_EPS : (degree) == 10 ? FZ_EXP10_EPS \
                            : (degree) == 9 ? FZ_EXP9_EPS : FZ_EXP7_EPS)

/* exp(x) for x in [-FZ_LSE_CUT_MAX - 1, 0], branch-free so that it vectorises: x = k ln2 + r
 * (k = round(x / ln2), Cody-Waite split of ln2, r exact to 0.35 u), e^r by its Taylor
 * polynomial of degree 12, 10, 9 or 7 (the lowest whose error the output allows: degree,
 * constant in every loop that calls it) in Estrin's scheme (pairs of
 * coefficients joined by r^2, r^4, r^8: four multiply-adds deep rather than Horner's
 * twelve, so that the lanes' chains are not waiting on each other's latency; no term
 * takes more roundings than Horner's 2n), times 2^k built from the bits of the rounding
 * constant (-96 <= k <= 0: a normal power of two, exact). */
static inline __attribute__((always_inline)) double fz_exp_poly(double x, int degree)
{
    const double magic = 0x1.8p52;  /* adding it rounds to an integer in the low bits */
    double t = x * 0x1.71547652b82fep0 + magic;
    double kf = t - magic;
    double r = (x - kf * 0x1.62e42fee00000p-1) - kf * 0x1.a39ef35793c76p-33;
    const double r2 = r * r, r4 = r2 * r2;
    const double p01 = 1.0 + r, p23 = 0.5 + r * (1.0 / 6.0);
    const double p45 = 1.0 / 24.0 + r * (1.0 / 120.0), p67 = 1.0 / 720.0 + r * (1.0 / 5040.0);
    const double q03 = p01 + r2 * p23, q47 = p45 + r2 * p67;
    const double o07 = q03 + r4 * q47;
    const double p89 = 1.0 / 40320.0 + r * (1.0 / 362880.0);
    double p;
    if (degree <= 7) {
        p = o07;
    } else if (degree == 9) {
        p = o07 + (r4 * r4) * p89;
    } else if (degree == 10) {
        p = o07 + (r4 * r4) * (p89 + r2 * (1.0 / 3628800.0));
    } else {
        const double p1011 = 1.0 / 3628800.0 + r * (1.0 / 39916800.0);
        const double q812 = (p89 + r2 * p1011) + r4 * (1.0 / 479001600.0);
        p = o07 + (r4 * r4) * q812;
    }
    int64_t bits;
    memcpy(&bits, &t, sizeof bits);
    /* bits(t) = bits(magic) + k, and bits(magic) << 52 vanishes mod 2^64 */
    bits = (int64_t)(((uint64_t)bits + 1023u) << 52);
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Absolute error bound of fz_log_poly on [1, 2^10) (derived in
 * fastzsl/backends/_gaussian_gemm.py, LOG_POLY_EPS; tests check it against long double). */
#define FZ_LOG_POLY_EPS 0x1p-48

/* biased - 1023 as a double, for a biased exponent in [0, 2048] (from a double's bits):
 * placed in 2^52's mantissa, 2^52 + 1023 taken off; exact, and without an int64
 * conversion, which AVX2 lacks (a loop that converts stays scalar there) */
static inline __attribute__((always_inline)) double fz_unbiased_exponent(uint64_t biased)
{
    const uint64_t bits = biased + 0x4330000000000000ULL;
    double x;
    memcpy(&x, &bits, sizeof x);
    return x - 0x1.00000000003ffp+52;
}

/* ln x for x in [1, 2^10) (a logsumexp's sum: its largest term is 1), branch-free so that
 * it vectorises: x = 2^e m with m in [sqrt(1/2), sqrt 2) from the bits, ln m = 2 atanh(t),
 * t = (m - 1) / (m + 1), |t| <= 0.1716, by its series up to t^19 (Horner in t^2), e ln 2
 * by the Cody-Waite split of fz_exp_poly (e ln2_hi exact). */
static inline double fz_log_poly(double x)
{
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    const uint64_t big = (bits & 0x000fffffffffffffULL) > 0x6a09e667f3bcdULL;
    /* the mantissa with exponent 0, or -1 where m > sqrt 2 */
    const uint64_t mbits = (bits & 0x000fffffffffffffULL) | ((1023 - big) << 52);
    double m;
    memcpy(&m, &mbits, sizeof m);
    const double ef = fz_unbiased_exponent((bits >> 52) + big);
    const double t = (m - 1.0) / (m + 1.0), z = t * t;
    double p = 1.0 / 19.0;
    for (int k = 17; k >= 1; k -= 2)  /* unrolled, the coefficients folded */
        p = p * z + 1.0 / (double)k;
    return ef * 0x1.62e42fee00000p-1 + (2.0 * t * p + ef * 0x1.a39ef35793c76p-33);
}

/* The smallest |lse| a row's logsumexp can have: it lies in [wmax, wmax + ln C] */
static inline double fz_lse_magnitude(double wmax, double log_c)
{
    /* max(wmax, -top, 0): the same (a NaN wmax gives 0), but without branches */
    const double top = wmax + log_c;
    return FZ_MAX(FZ_MAX(wmax, -top), 0.0);
}

/* fz_lse_cut where tol > 0 and the cut needs no clamp (returns 1), branch-free so that it
 * vectorises across the lanes; else returns 0 and fz_lse_cut takes over (with *cut the
 * unclamped cut where tol > 0). */
static inline __attribute__((always_inline)) int fz_lse_cut_usual(
    double tol, double log_c, double extra, double *cut, double *left_out)
{
    uint64_t bits;
    memcpy(&bits, &tol, sizeof bits);
    const uint64_t biased = (bits >> 52) & 0x7ff;  /* subnormal: 0, e = -1023, clamped */
    const double e = fz_unbiased_exponent(biased);
    *cut = log_c + 0x1.62e42fefa39efp+0 /* ln 4 */ - e * 0x1.62e42fefa39efp-1 + extra;
    /* 2^(e - 2) from its bits: where the cut is in range e > -100 (the cut is at most 64) */
    const uint64_t pow2 = (biased - 2) << 52;
    double p;
    memcpy(&p, &pow2, sizeof p);
    *left_out = p * (1.0 + 0x1p-40);
    return (tol > 0.0) & (*cut >= FZ_LSE_CUT_MIN) & (*cut <= FZ_LSE_CUT_MAX);
}

/* The logsumexp cut, and in *left_out the most that the terms it leaves out add to lse:
 * C e^(-cut + extra), kept below a quarter of tol (the absolute accuracy the output
 * needs) by cut >= ln C + ln(4 / tol) + extra (extra: fz_gauss_lse's 2 beta_max). ln tol is
 * bounded below by e ln 2 (tol = m 2^e, 1 <= m < 2, e from its bits: no log per row), so
 * the cut is at most ln 2 longer than it must be, and the bound is then 2^(e - 2), up to
 * the cut's rounding (a few ulps of 64, well within the factor 1 + 2^-40): no exp per row
 * unless the cut is clamped to [FZ_LSE_CUT_MIN, FZ_LSE_CUT_MAX]. */
static inline double fz_lse_cut(double tol, double log_c, double extra, double *left_out)
{
    double cut;
    if (fz_lse_cut_usual(tol, log_c, extra, &cut, left_out))
        return cut;
    cut = !(tol > 0.0) || cut > FZ_LSE_CUT_MAX ? FZ_LSE_CUT_MAX : FZ_LSE_CUT_MIN;
    *left_out = exp(log_c - cut + extra);
    return cut;
}

typedef struct {
    ptrdiff_t n_classes, d;
    /* n_classes rounded up to a multiple of FZ_PAD (a vector of floats): the class arrays
     * (and a row's scratch and products) hold that many entries, the padding ones with
     * h = kh = km = 0 and k = +inf, so L~ = -inf and beta = 0 there. The vectorised passes
     * run over all of them: no scalar tail, whose stores stall the vector reductions after
     * it. */
    ptrdiff_t n_padded;
    const double *h;     /* h_c = 1 / (2 var_c) */
    const double *k;     /* h_c mn_c + ln_c */
    const double *kh;    /* K h_c */
    const double *km;    /* K h_c mn_c */
    const float *kh_f, *km_f;  /* kh, km rounded up to float32 (fz_lse_terms_f32) */
    const double *var;   /* var_c (direct recompute) */
    const double *means_d;  /* the means in double, C x d (the direct route), or NULL */
    const double *ln;    /* d/2 log(2 pi var_c) */
    const double *lw;    /* log weights */
    const double *thr;   /* thresholds */
    const double *thr_min;  /* the smallest threshold per block of FZ_LSE_BLOCK classes */
    double kh_max, km_max;   /* max kh, max km: beta_c <= kh_max fn + km_max */
    int finite_thresholds;   /* some threshold is below +inf */
    double acc;
    double log_c;            /* ln C */
    int exact_thresholds;
} fz_gauss_params;

/* beta_c = kh_c fn + km_c, the bound of class c's GEMM-form value in a row with squared
 * norm fn (kh, km: fz_gauss_params's). Not stored per entry (a store costs more than the
 * multiply-add): formed by this one expression wherever it is used, so that it rounds
 * alike at every site and no decision depends on where it was formed. */
static inline double fz_beta(const double *kh, const double *km, ptrdiff_t c, double fn)
{
    return kh[c] * fn + km[c];
}

/* The direct values a row's logsumexp computed (its refined terms), kept for the row's
 * other steps, which would compute the same values again (the row's own class, typically:
 * far classes in float32, whose accuracy target the product's bound rarely meets). */
#define FZ_DIRECT_MEMO 4
typedef struct {
    ptrdiff_t c[FZ_DIRECT_MEMO];
    double v[FZ_DIRECT_MEMO];
    int n, hit;
} fz_direct_memo;

static inline void fz_direct_memo_put(fz_direct_memo *m, ptrdiff_t c, double v)
{
    if (m->n < FZ_DIRECT_MEMO) {
        m->c[m->n] = c;
        m->v[m->n++] = v;
    }
}

/* whether class c's value is kept; if so, at m->v[m->hit] */
static inline int fz_direct_memo_has(fz_direct_memo *m, ptrdiff_t c)
{
    for (int i = 0; i < m->n; i++)
        if (m->c[i] == c) {
            m->hit = i;
            return 1;
        }
    return 0;
}

/* Runs BODY for every c in [0, n) with M(c) >= 0, in increasing c: blocks of FZ_LSE_BLOCK
 * entries whose upper bound UB(block) (from pass A's block maxima) is below 0 are skipped,
 * then chunks of FZ_GAUSS_CHUNK after one vectorised max-reduction each, since only a few
 * entries per row are expected. Up to FZ_GAUSS_CHUNK entries are tested one by one: a
 * reduction that short costs more than it saves. */
#define FZ_FOR_NONNEG(M, UB, n, c, BODY)                                                  \
    if ((n) <= FZ_GAUSS_CHUNK) {                                                          \
        for (c = 0; c < (n); c++) {                                                       \
            if (M(c) >= 0.0)                                                              \
                BODY                                                                      \
        }                                                                                 \
    } else                                                                                \
    for (ptrdiff_t b0_ = 0; b0_ < (n); b0_ += FZ_LSE_BLOCK) {                             \
        ptrdiff_t b1_ = b0_ + FZ_LSE_BLOCK < (n) ? b0_ + FZ_LSE_BLOCK : (n);              \
        if (!(UB(b0_ / FZ_LSE_BLOCK) >= 0.0))                                             \
            continue;                                                                     \
        for (ptrdiff_t c0_ = b0_; c0_ < b1_; c0_ += FZ_GAUSS_CHUNK) {                     \
            ptrdiff_t c1_ = c0_ + FZ_GAUSS_CHUNK < b1_ ? c0_ + FZ_GAUSS_CHUNK : b1_;      \
            double top_ = -INFINITY;                                                      \
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

/* The roundings that bound fz_lse_terms' double sums of C terms (times the unit roundoff:
 * their relative error; callers pad C to a multiple of FZ_PAD): FZ_PAD lane sums of
 * C / FZ_PAD terms each, then the lanes, in any order (with room for the rounding of e B). */
#define FZ_LSE_SUM_TERMS(C) ((double)((C) / FZ_PAD + FZ_PAD + 4))

/* sum_c e^(x_c) over the terms x_c = V_c + W_c - wmax >= -cut, with the vectorised
 * fz_exp_poly of that degree (0: libm's exp, with with_err), and, with with_err, err =
 * sum_c e^(x_c) B_c, B_c = fz_beta(KH, KM, c, fn) >= 0 (else *err_out is left alone).
 * C is a multiple of FZ_PAD (callers pad it); the terms add into FZ_PAD lane sums
 * (FZ_LSE_SUM_TERMS), one vector's worth per class of a chunk. Blocks of FZ_LSE_BLOCK
 * without a term are skipped on their maximum blk_w (of V + W, from pass A: most of a row
 * where the classes are far apart). The kept terms' count and largest B_c, which only a
 * sum that does not certify on bmax needs, are fz_lse_kept's. */
static inline __attribute__((always_inline)) double fz_lse_terms(
    const double *V, const double *W, const double *blk_w, const double *KH,
    const double *KM, double fn, ptrdiff_t C, double wmax, double cut, int degree,
    int with_err, double *err_out)
{
    const double lo = wmax - cut;
    double ls[FZ_PAD] = {0}, le[FZ_PAD] = {0};
    double sum = 0.0, err = 0.0;
    ptrdiff_t j;
    /* one loop per (degree, with_err): a constant polynomial in each */
#define FZ_TERMS(DEG, ERR) {                                                               \
        _Pragma("omp simd")                                                               \
        for (j = 0; j < FZ_PAD; j++) {                                                    \
            const double x = (V[c0 + j] + W[c0 + j]) - wmax;                              \
            const double e = (x >= -cut ? 1.0 : 0.0) * fz_exp_poly(FZ_MAX(x, -cut), DEG); \
            ls[j] += e;                                                                   \
            if (ERR)                                                                      \
                le[j] += e * fz_beta(KH, KM, c0 + j, fn);                                 \
        }                                                                                 \
    }
    for (ptrdiff_t b0 = 0; b0 < C; b0 += FZ_LSE_BLOCK) {
        const ptrdiff_t b1 = FZ_MIN(b0 + FZ_LSE_BLOCK, C);
        if (!(blk_w[b0 / FZ_LSE_BLOCK] >= lo))
            continue;
        for (ptrdiff_t c0 = b0; c0 < b1; c0 += FZ_PAD) {
            if (degree == 0) {
                for (j = 0; j < FZ_PAD; j++) {
                    const double x = (V[c0 + j] + W[c0 + j]) - wmax;
                    if (x >= -cut) {
                        const double e = exp(x);
                        ls[j] += e;
                        le[j] += e * fz_beta(KH, KM, c0 + j, fn);
                    }
                }
            } else if (with_err) {
                if (degree == 9) FZ_TERMS(9, 1)
                else if (degree == 10) FZ_TERMS(10, 1)
                else if (degree == 7) FZ_TERMS(7, 1)
                else FZ_TERMS(12, 1)
            } else {
                if (degree == 9) FZ_TERMS(9, 0)
                else if (degree == 10) FZ_TERMS(10, 0)
                else if (degree == 7) FZ_TERMS(7, 0)
                else FZ_TERMS(12, 0)
            }
        }
    }
#undef FZ_TERMS
    #pragma omp simd reduction(+:sum, err)
    for (j = 0; j < FZ_PAD; j++) {
        sum += ls[j];
        err += le[j];
    }
    if (with_err)
        *err_out = err;
    return sum;
}

/* The number of fz_lse_terms' terms (x_c >= -cut) and their largest B_c (*bkept_out). */
static inline ptrdiff_t fz_lse_kept(const double *V, const double *W, const double *blk_w,
                                    const double *KH, const double *KM, double fn,
                                    ptrdiff_t C, double wmax, double cut, double *bkept_out)
{
    const double lo = wmax - cut;
    double count = 0.0, bk = 0.0;
    for (ptrdiff_t b0 = 0; b0 < C; b0 += FZ_LSE_BLOCK) {
        const ptrdiff_t b1 = FZ_MIN(b0 + FZ_LSE_BLOCK, C);
        if (!(blk_w[b0 / FZ_LSE_BLOCK] >= lo))
            continue;
        #pragma omp simd reduction(+:count) reduction(max:bk)
        for (ptrdiff_t c = b0; c < b1; c++) {
            const double keep = (V[c] + W[c]) - wmax >= -cut ? 1.0 : 0.0;
            count += keep;
            bk = FZ_MAX(bk, keep * fz_beta(KH, KM, c, fn));
        }
    }
    *bkept_out = bk;
    return (ptrdiff_t)count;
}

/* x >= 0 rounded up to float32 (x (1 + 2^-23) rounded to nearest: at least x) */
static inline float fz_float_up(double x)
{
    return (float)(x * (1.0 + 0x1p-23));
}

/* expf(x) for x in [-FZ_LSE_CUT_MAX - 1, 0] in float32 arithmetic (16 lanes per AVX-512
 * vector): as fz_exp_poly, with a 17-bit ln2 head (k ln2_hi exact for |k| < 128) and the
 * degree-6 Taylor polynomial in Estrin's scheme; relative error below FZ_EXPF_EPS. */
#define FZ_EXPF_EPS 0x1p-19
static inline float fz_expf_poly(float x)
{
    const float magic = 0x1.8p23f;
    float t = x * 0x1.715476p0f + magic;
    float kf = t - magic;
    float r = (x - kf * 0x1.62e4p-1f) - kf * 0x1.7f7d1cp-20f;
    const float r2 = r * r;
    const float q03 = (1.0f + r) + r2 * (0.5f + r * (1.0f / 6.0f));
    const float q46 = (1.0f / 24.0f + r * (1.0f / 120.0f)) + r2 * (1.0f / 720.0f);
    const float p = q03 + (r2 * r2) * q46;
    int32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (int32_t)(((uint32_t)bits + 127u) << 23);  /* bits(magic) << 23 vanishes */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* classes per float32 lane sum of fz_lse_terms_f32 (a multiple of FZ_LSE_BLOCK): each is
 * then added into a double lane sum */
#define FZ_F32_FLUSH 256
/* The relative error of fz_lse_terms_f32's sums (with room for rounding B): float32 lane
 * sums of at most FZ_F32_FLUSH / FZ_PAD terms, added into double lane sums
 * (FZ_LSE_SUM_TERMS, each float32 sum one of its terms). */
#define FZ_F32_SUM_GAMMA(C) \
    ((double)(FZ_F32_FLUSH / FZ_PAD + 4) * 0x1p-24 \
     + FZ_LSE_SUM_TERMS(C) * FZ_UNIT_ROUNDOFF_DOUBLE)

/* fz_lse_terms in float32 (for float32 inputs, whose accuracy target 2^-15 leaves room):
 * x_c rounded to float32 (relative error of e^x_c below cut 2^-24), fz_expf_poly, float32
 * lane sums per FZ_F32_FLUSH classes, added up in double (FZ_F32_SUM_GAMMA). Returns the
 * sum; with with_err, *err_out is an upper bound of sum_c e_c B_c. The sum's relative
 * error from all of the above is FZ_F32_REL(cut, C). The kept terms are those of
 * fz_lse_kept with cut + FZ_F32_CUT_SLACK (x rounded to float32 moves by at most 2^-17
 * here). */
#define FZ_F32_CUT_SLACK 0x1p-10
#define FZ_F32_REL(cut, C) (FZ_EXPF_EPS + ((cut) + 1.0) * 0x1p-24 + FZ_F32_SUM_GAMMA(C))
static inline __attribute__((always_inline)) double fz_lse_terms_f32(
    const double *V, const double *W, const double *blk_w, const float *KH,
    const float *KM, double fn, ptrdiff_t C, double wmax, double cut, int with_err,
    double *err_out)
{
    const double lo = wmax - cut;
    /* the bounds in float32 from KH, KM and fn rounded up: one rounding (of the FMA), as
     * when a double bound is rounded to float32 */
    const float fnf = fz_float_up(fn);
    const float fcut = (float)cut;  /* may round either way: the terms kept are exact sums */
    double ds[FZ_PAD] = {0}, de[FZ_PAD] = {0};
    float ls[FZ_PAD] = {0}, le[FZ_PAD] = {0};
    double sum = 0.0, err = 0.0;
    ptrdiff_t j;
    for (ptrdiff_t b0 = 0; b0 < C; b0 += FZ_LSE_BLOCK) {
        const ptrdiff_t b1 = FZ_MIN(b0 + FZ_LSE_BLOCK, C);
        /* one loop with err, one without: a test inside the vector loop costs it 3x */
#define FZ_TERMS_F32(ERR) {                                                                \
            _Pragma("omp simd")                                                           \
            for (j = 0; j < FZ_PAD; j++) {                                                \
                const float x = (float)((V[c0 + j] + W[c0 + j]) - wmax);                  \
                const float e = (x >= -fcut ? 1.0f : 0.0f) * fz_expf_poly(FZ_MAX(x, -fcut)); \
                ls[j] += e;                                                               \
                if (ERR)                                                                  \
                    le[j] += e * (KH[c0 + j] * fnf + KM[c0 + j]);                         \
            }                                                                             \
        }
        if (blk_w[b0 / FZ_LSE_BLOCK] >= lo) {
            for (ptrdiff_t c0 = b0; c0 < b1; c0 += FZ_PAD) {
                if (with_err)
                    FZ_TERMS_F32(1)
                else
                    FZ_TERMS_F32(0)
            }
        }
#undef FZ_TERMS_F32
        if (b1 % FZ_F32_FLUSH == 0 || b1 == C) {
            #pragma omp simd
            for (j = 0; j < FZ_PAD; j++) {
                ds[j] += (double)ls[j];
                ls[j] = 0.0f;
            }
            if (with_err) {
                #pragma omp simd
                for (j = 0; j < FZ_PAD; j++) {
                    de[j] += (double)le[j];
                    le[j] = 0.0f;
                }
            }
        }
    }
    #pragma omp simd reduction(+:sum, err)
    for (j = 0; j < FZ_PAD; j++) {
        sum += ds[j];
        err += de[j];
    }
    if (with_err)  /* the sums, B */
        *err_out = err * (1.0 + 2.0 * FZ_F32_SUM_GAMMA(C) + FZ_EXPF_EPS + cut * 0x1p-23);
    return sum;
}

/* Whether a logsumexp is certified: the values move lse by log(sum_c e_c e^(t_c) / sum_c
 * e_c), |t_c| <= b_c over the terms kept (bk: their largest b_c). Upwards at most
 * sum_c e_c (e^(b_c) - 1) / sum_c e_c <= phi(bk) err / sum, phi(x) = (e^x - 1) / x (e^t
 * is convex: e^t - 1 <= t phi(bk) on [0, bk]), and phi(bk) <= 1 + (e - 2) bk while bk <= 1
 * (phi is convex, phi(0) = 1, phi(1) = e - 1); downwards at most err / sum (Jensen); at
 * most bk in any case. The factor 1 + 2^-10 covers the computed err / sum's own relative
 * error (the exp polynomial's and the sums', below 2^-16). budget: what acc |lse| leaves
 * for them (fz_lse_budget). Branch-free, so that it vectorises across the lanes (a NaN
 * fails both arms). */
#define FZ_CERTIFIED(err, sum, budget, bk) \
    ((((bk) <= 1.0) \
      & ((1.0 + 0.71828182845904524 * (bk)) * (1.0 + 0x1p-10) * (err) <= (budget) * (sum))) \
     | (((bk) > 1.0) & ((bk) <= (budget))))

/* The absolute error of lse = wmax + log(sum) beyond the values' own (FZ_CERTIFIED's
 * err / sum): the terms left out (left_out, from fz_lse_cut), exp's relative
 * error, the summation's (FZ_LSE_SUM_TERMS), log's and the final addition's rounding. */
static inline double fz_lse_other(double lse, double log_c, ptrdiff_t C, double left_out,
                                  double eps_exp)
{
    return left_out + eps_exp
        + FZ_LSE_SUM_TERMS(C) * FZ_UNIT_ROUNDOFF_DOUBLE
        + 2.0 * FZ_UNIT_ROUNDOFF_DOUBLE * (fabs(lse) + log_c);
}

/* FZ_CERTIFIED's budget: what the accuracy acc |lse| leaves for the values' own error
 * beside fz_lse_other's */
static inline double fz_lse_budget(double acc, double lse, double log_c, ptrdiff_t C,
                                   double left_out, double eps_exp)
{
    return acc * fabs(lse) - fz_lse_other(lse, log_c, C, left_out, eps_exp);
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
