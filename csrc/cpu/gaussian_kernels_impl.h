/* One dtype of csrc/cpu/gaussian_kernels.h: included once per input type, with FZ_T the
 * type and FZ_N(name) the name with its dtype suffix. */

static inline double FZ_N(fz_direct)(const FZ_T *f, const FZ_T *m, ptrdiff_t d, double var,
                                     double ln)
{
    double s = 0.0;
    #pragma omp simd reduction(+:s)
    for (ptrdiff_t t = 0; t < d; t++) {
        double diff = (double)f[t] - (double)m[t];
        s += diff * diff;
    }
    return -s / (2.0 * var) - ln;
}

/* The refinement step of fz_gauss_lse, for a sum that did not certify (with budget > 0):
 * with wmax kept as the reference, each kept term that carries most of the error (2 e_c
 * b_c above a quarter of the allowance per term, tau) or whose b_c passes 1 nat swaps e_c
 * for e^(L_dir + lw_c - wmax) and drops e_c b_c from err (its new value is included even if
 * it falls below the cut: the sum stays over a superset of the terms); bk becomes the
 * largest b_c of the terms left as they were. b: the terms' bounds (0 where a value is
 * direct already), or NULL for the row's fz_beta. Returns whether the sum
 * then certifies, and the logsumexp in *lse. */
static inline __attribute__((always_inline)) int FZ_N(fz_lse_refine)(
    const FZ_T *frow, const FZ_T *means, const fz_gauss_params *q, const double *L,
    const double *b, double fn, double wmax, double cut, int degree, double left_out,
    double eps, double sum, double err, ptrdiff_t n_terms, double budget,
    fz_direct_memo *memo, ptrdiff_t *n_direct, double *lse)
{
    const ptrdiff_t C = q->n_classes, d = q->d;
    const double *lw = q->lw;
    const double tau = budget * sum / (4.0 * (double)n_terms);
    const double lo = wmax - cut;
    double removed = 0.0, added = 0.0, err_removed = 0.0, bk = 0.0;
    ptrdiff_t c;
    for (ptrdiff_t c0 = 0; c0 < C; c0 += FZ_GAUSS_CHUNK) {
        const ptrdiff_t c1 = FZ_MIN(c0 + FZ_GAUSS_CHUNK, C);
        double hi = -INFINITY;
        #pragma omp simd reduction(max:hi)
        for (c = c0; c < c1; c++)
            hi = FZ_MAX(L[c] + lw[c], hi);
        if (!(hi >= lo))
            continue;
        for (c = c0; c < c1; c++) {
            double x = (L[c] + lw[c]) - wmax;
            if (!(x >= -cut))
                continue;
            double e = degree ? fz_exp_poly(x, degree) : exp(x);
            double bc = b != NULL ? b[c] : fz_beta(q->kh, q->km, c, fn);
            if (2.0 * e * bc > tau || bc > 1.0) {
                (*n_direct)++;
                double v = FZ_N(fz_direct)(frow, means + c * d, d, q->var[c], q->ln[c]);
                fz_direct_memo_put(memo, c, v);
                removed += e;
                err_removed += e * bc;
                added += exp(v + lw[c] - wmax);
            } else {
                bk = FZ_MAX(bk, bc);
            }
        }
    }
    /* the subtractions lose at most 2 u' (sum + err) more */
    sum = (sum - removed) + added;
    err = FZ_MAX(err - err_removed, 0.0) + 2.0 * FZ_UNIT_ROUNDOFF_DOUBLE * (sum + err);
    *lse = wmax + log(sum);
    budget = fz_lse_budget(q->acc, *lse, q->log_c, q->n_padded, left_out, eps);
    return FZ_CERTIFIED(err, sum, budget, bk);
}

/* The logsumexp of one row from the pristine GEMM-form values (see the header): L~ in L,
 * their bounds fz_beta (at most bmax), the maxima of L~ + lw per block of FZ_LSE_BLOCK
 * classes in blk_w, wmax = max_c (L~_c + lw_c) > -inf. Terms below
 * wmax - cut are left out, cut taken from the accuracy the output needs and bmax
 * (fz_lse_cut); the others are summed with fz_exp_poly (float64 input: degree 9, 10 or
 * 12, the lowest that |lse| allows; float32: degree 7, or fz_expf_poly), or libm's exp
 * where |lse| is too close to 0 for the polynomial's error. The sums carry sum_c e_c b_c
 * only where bmax does not certify them. Where the certified error exceeds acc |lse|, the
 * terms that carry most of it and
 * those whose b_c is above 1 nat (where only bk itself bounds the error) take their direct
 * values (fz_lse_refine); if that still fails, every term does.
 * scratch: C doubles. Depends only on (L~, beta, lw): the same in
 * every call and whatever else is asked. */
static inline __attribute__((always_inline)) double FZ_N(fz_gauss_lse)(
    const FZ_T *frow, const FZ_T *means, const fz_gauss_params *q, const double *L,
    const double *blk_w, double fn, double wmax, double bmax, double *scratch,
    fz_direct_memo *memo, ptrdiff_t *n_direct)
{
    const ptrdiff_t C = q->n_classes, d = q->d;
    const ptrdiff_t Cp = q->n_padded;  /* the sums run over the padding too: zero terms */
    const double *lw = q->lw;
    const int f32 = sizeof(FZ_T) == 4;
    const double mag = fz_lse_magnitude(wmax, q->log_c);
    /* A left-out term's true value is at most e^(-cut + bmax) of e^wmax, and the kept
     * terms' sum at least e^-bmax of it (its largest term's): the cut takes 2 bmax more */
    double left_out;
    const double cut = fz_lse_cut(q->acc * mag, q->log_c, 2.0 * bmax, &left_out);
    /* the exp's share of the accuracy: the lowest degree that fits it (float32 inputs: 7),
     * else libm's exp (0) */
    const double room = 0.25 * q->acc * mag;
    const int degree = f32 ? (FZ_EXP7_EPS <= room ? 7 : 0)
        : FZ_EXP9_EPS <= room ? 9 : FZ_EXP10_EPS <= room ? 10 : FZ_EXP12_EPS <= room ? 12 : 0;
    /* float32 inputs: the float32 sum where its error fits a quarter of the budget */
    const int single = f32 && FZ_F32_REL(cut, Cp) + 0x1p-24 <= room;
    const double eps = single ? FZ_F32_REL(cut, Cp)
        : degree ? FZ_EXP_EPS(degree) : FZ_UNIT_ROUNDOFF_DOUBLE;
    /* Every term's bound is at most bk_max (bmax, with room for its rounding), so err <=
     * bk_max sum: where that certifies even with the least budget the logsumexp allows
     * (|lse| >= mag, the other errors taken at |lse| <= |wmax| + ln C), the sums need not
     * carry err (libm's loop always does) */
    const double bk_max = bmax * (1.0 + 0x1p-40);
    const double budget_lo = q->acc * mag
        - fz_lse_other(fabs(wmax) + q->log_c, q->log_c, Cp, left_out, eps);
    int with_err = degree == 0 || !FZ_CERTIFIED(bk_max, 1.0, budget_lo, bk_max);
    double err, bk, *V = scratch;
    ptrdiff_t c;
    double sum, lse, budget;
    for (;;) {
        if (single)
            sum = fz_lse_terms_f32(L, lw, blk_w, q->kh_f, q->km_f, fn, Cp, wmax, cut, with_err,
                                   &err);
        else
            sum = fz_lse_terms(L, lw, blk_w, q->kh, q->km, fn, Cp, wmax, cut, degree,
                               with_err, &err);
        if (!with_err)
            err = bk_max * sum;
        lse = wmax + log(sum);
        budget = fz_lse_budget(q->acc, lse, q->log_c, Cp, left_out, eps);
        /* FZ_CERTIFIED holds for any upper bound of the kept terms' largest bound bk: first
         * bk_max, the terms' own only looked for when that fails */
        if (FZ_CERTIFIED(err, sum, budget, bk_max))
            return lse;
        if (with_err)
            break;
        with_err = 1;  /* lse fell short of the least budget's assumption: sum again */
    }
    /* the terms' own largest bound (a superset of the float32 sum's terms) */
    const ptrdiff_t n_terms = fz_lse_kept(L, lw, blk_w, q->kh, q->km, fn, Cp, wmax,
                                          single ? cut + FZ_F32_CUT_SLACK : cut, &bk);
    if (FZ_CERTIFIED(err, sum, budget, bk))
        return lse;
    if (budget > 0.0 && FZ_N(fz_lse_refine)(frow, means, q, L, NULL, fn, wmax, cut, degree,
                                            left_out, eps, sum, err, n_terms, budget, memo,
                                            n_direct, &lse))
        return lse;
    /* Still not certified: direct values of every term that can be within FZ_LSE_CUT_MAX of
     * the largest direct one (a direct value is within b_c of L~_c), summed with libm. */
    double dmax = -INFINITY;
    for (c = 0; c < C; c++) {
        V[c] = -INFINITY;
        if (L[c] + lw[c] + fz_beta(q->kh, q->km, c, fn) >= wmax - bmax - FZ_LSE_CUT_MAX
            && lw[c] > -INFINITY) {
            (*n_direct)++;
            V[c] = FZ_N(fz_direct)(frow, means + c * d, d, q->var[c], q->ln[c]) + lw[c];
            dmax = FZ_MAX(V[c], dmax);
        }
    }
    sum = 0.0;
    for (c = 0; c < C; c++)
        if (V[c] - dmax >= -FZ_LSE_CUT_MAX)
            sum += exp(V[c] - dmax);
    return dmax + log(sum);
}

/* One row (see the header for the definitions). L, b: C doubles of scratch (L is left
 * holding the row's values where the matrix is asked for: full); blk: 2 C / FZ_LSE_BLOCK
 * + 2 doubles (the block maxima); list: C ints of scratch, scratch: C doubles. Returns the
 * number of direct evaluations. */
static inline __attribute__((always_inline)) ptrdiff_t FZ_N(fz_gauss_row)(
    const FZ_T *p, double fn, const FZ_T *frow, const FZ_T *means, const fz_gauss_params *q,
    int full, double *L, double *b, double *blk, int *list, double *scratch,
    double *row_max, int64_t *row_argmax, double *row_lse, uint8_t *all_below)
{
    const ptrdiff_t C = q->n_classes, d = q->d, Cp = q->n_padded;
    const double acc = q->acc;
    const int exact = q->exact_thresholds;
    const double *h = q->h, *k = q->k, *kh = q->kh, *km = q->km;
    const double *var = q->var, *ln = q->ln, *lw = q->lw, *thr = q->thr;
    ptrdiff_t n_direct = 0, c, j, n_list = 0;
    double mxv = -INFINITY, mxw = -INFINITY;
    int need_any = 0;
    fz_direct_memo memo;
    memo.n = 0;

#define FZ_DIRECT(c) (fz_direct_memo_has(&memo, c) ? memo.v[memo.hit] \
    : (n_direct++, FZ_N(fz_direct)(frow, means + (c) * d, d, var[c], ln[c])))

    /* Pass A: L~, the maxima of L~ and of L~ + lw; with the matrix asked for, also beta
     * (b) and whether some entry needs its direct value ("need"), fixed up front. Without
     * it beta (fz_beta) is formed where it is used: the listed entries, the logsumexp's
     * terms. */
    double *blk_v = blk, *blk_w = blk + (Cp + FZ_LSE_BLOCK - 1) / FZ_LSE_BLOCK;
#define FZ_PASS_A(MORE) \
    for (ptrdiff_t b0 = 0; b0 < Cp; b0 += FZ_LSE_BLOCK) { \
        const ptrdiff_t b1 = FZ_MIN(b0 + FZ_LSE_BLOCK, Cp); \
        double bv = -INFINITY, bw = -INFINITY; \
        _Pragma("omp simd reduction(max:bv, bw) reduction(|:need_any)") \
        for (c = b0; c < b1; c++) { \
            double v = h[c] * (2.0 * (double)p[c] - fn) - k[c]; \
            L[c] = v; \
            bv = v > bv ? v : bv; \
            bw = v + lw[c] > bw ? v + lw[c] : bw; \
            MORE; \
        } \
        blk_v[b0 / FZ_LSE_BLOCK] = bv; \
        blk_w[b0 / FZ_LSE_BLOCK] = bw; \
        mxv = bv > mxv ? bv : mxv; \
        mxw = bw > mxw ? bw : mxw; \
    }
    if (full) {
        FZ_PASS_A(double bc = fz_beta(kh, km, c, fn); b[c] = bc;
                  need_any |= bc > acc * fabs(v))
    } else {
        FZ_PASS_A((void)0)
    }
#undef FZ_PASS_A
    const double bmax = q->kh_max * fn + q->km_max;
    /* logsumexp first, while L holds the pristine L~ */
    *row_lse = mxw == -INFINITY ? -INFINITY /* every weight is zero */
        : FZ_N(fz_gauss_lse)(frow, means, q, L, blk_w, fn, mxw, bmax, scratch, &memo,
                             &n_direct);
    if (full && need_any) { /* the matrix holds B: fix every "need" entry */
        for (ptrdiff_t c0 = 0; c0 < C; c0 += FZ_GAUSS_CHUNK) {
            ptrdiff_t c1 = c0 + FZ_GAUSS_CHUNK < C ? c0 + FZ_GAUSS_CHUNK : C;
            int any = 0;
            #pragma omp simd reduction(|:any)
            for (c = c0; c < c1; c++)
                any |= b[c] > acc * fabs(L[c]);
            for (c = c0; any && c < c1; c++) {
                if (b[c] > acc * fabs(L[c])) {
                    L[c] = FZ_DIRECT(c);
                    b[c] = 0.0;
                    blk_v[c / FZ_LSE_BLOCK] = FZ_MAX(L[c], blk_v[c / FZ_LSE_BLOCK]);
                }
            }
        }
    }
    /* lo1 = max L~ - beta_max <= max_c (B_c - b_c), a lower bound of the maximum. Pass B
     * lists the entries that may matter for a decision, t_c = L_c + b_c >= min(lo1,
     * threshold_c): a possible argmax (t >= lo1) or possibly not below its threshold. It
     * screens with beta_max in place of b_c (a superset); a chunk is tested with one
     * max-reduction of t - z (>= 0 exactly when t >= z). */
    const double lo1 = mxv - bmax;
    int above = 0;
#define FZ_SCREEN_U(c) ((L[c] + bmax) - lo1)
#define FZ_SCREEN_UT(c) ((L[c] + bmax) - FZ_MIN(lo1, thr[c]))
    /* upper bounds of those over a block, from its maximum (rounding is monotone) */
#define FZ_BLOCK_U(i) ((blk_v[i] + bmax) - lo1)
#define FZ_BLOCK_UT(i) ((blk_v[i] + bmax) - FZ_MIN(lo1, q->thr_min[i]))
#define FZ_LIST_ENTRY { \
        if (!full) \
            b[c] = fz_beta(kh, km, c, fn); \
        double t = L[c] + b[c]; \
        int flags = (t >= lo1 ? FZ_ARGMAX : 0) | (t >= thr[c] ? FZ_THRESHOLD : 0); \
        if (flags) { \
            list[n_list++] = (int)(c * 8 + flags); \
            if (b[c] > acc * fabs(L[c])) { /* B_c */ \
                L[c] = FZ_DIRECT(c); \
                b[c] = 0.0; \
            } \
        } \
    }
    if (q->finite_thresholds) {
        FZ_FOR_NONNEG(FZ_SCREEN_UT, FZ_BLOCK_UT, C, c, FZ_LIST_ENTRY);
    } else {
        FZ_FOR_NONNEG(FZ_SCREEN_U, FZ_BLOCK_U, C, c, FZ_LIST_ENTRY);
    }
#undef FZ_SCREEN_U
#undef FZ_SCREEN_UT
#undef FZ_BLOCK_U
#undef FZ_BLOCK_UT
#undef FZ_LIST_ENTRY
    /* argmax over the listed candidates */
    double lo = -INFINITY, mx = -INFINITY;
    ptrdiff_t n_cand = 0;
    int am = 0;
    for (j = 0; j < n_list; j++) {
        c = list[j] >> 3;
        if ((list[j] & FZ_ARGMAX) && L[c] - b[c] > lo)
            lo = L[c] - b[c];
    }
    for (j = 0; j < n_list; j++) {
        c = list[j] >> 3;
        n_cand += (list[j] & FZ_ARGMAX) && L[c] + b[c] >= lo;
    }
    for (j = 0; j < n_list; j++) {
        c = list[j] >> 3;
        if (!(list[j] & FZ_ARGMAX) || !(L[c] + b[c] >= lo))
            continue;
        if (n_cand > 1 && b[c] > 0.0) {
            L[c] = FZ_DIRECT(c);
            b[c] = 0.0;
        }
        if (L[c] > mx) { /* list order is index order: the first maximum wins */
            mx = L[c];
            am = (int)c;
        }
    }
    *row_max = mx;
    *row_argmax = am;
    /* all_below */
    for (j = 0; j < n_list; j++) {
        c = list[j] >> 3;
        if (!(list[j] & FZ_THRESHOLD))
            continue;
        if (exact && b[c] > 0.0 && fabs(L[c] - thr[c]) <= b[c]) {
            L[c] = FZ_DIRECT(c);
            b[c] = 0.0;
        }
        above |= !(L[c] < thr[c]);
    }
    *all_below = !above;
    return n_direct;
#undef FZ_DIRECT
}

/* Centres rows r0..r1-1 of F (row length d) on z into the tile buffer fc, padded with zero
 * rows to ``tile`` rows (every tile then meets the same BLAS call shape, so a row's products
 * do not depend on n), and their squared norms (double) into fn. Returns 0, or -2 when a
 * norm exceeds norm_limit (or is NaN / inf): the product could overflow. */
FZ_CLONES static int FZ_N(fz_centre_tile)(const FZ_T *F, ptrdiff_t r0, ptrdiff_t r1,
                                        ptrdiff_t tile, ptrdiff_t d, const double *z,
                                        double norm_limit, FZ_T *fc, double *fn)
{
    int failed = 0;
    for (ptrdiff_t row = 0; row < tile; row++) {
        FZ_T *out = fc + row * d;
        double s = 0.0;
        if (r0 + row < r1) {
            const FZ_T *x = F + (r0 + row) * d;
            #pragma omp simd reduction(+:s)
            for (ptrdiff_t t = 0; t < d; t++) {
                FZ_T v = (FZ_T)((double)x[t] - z[t]);
                out[t] = v;
                s += (double)v * (double)v;
            }
        } else {
            memset(out, 0, (size_t)d * sizeof(FZ_T));
        }
        fn[row] = s;
        if (!(s <= norm_limit))
            failed = -2;
    }
    return failed;
}

/* Row i of a tile by fz_gauss_row, its outputs stored (P: the tile's products, row i - r0
 * at P + (i - r0) ldp; fn likewise). */
static inline __attribute__((always_inline)) ptrdiff_t FZ_N(fz_gauss_one)(
    const FZ_T *P, ptrdiff_t ldp, const double *fn, const FZ_T *F, const FZ_T *means,
    ptrdiff_t i, ptrdiff_t r0, const fz_gauss_params *q, double *L, double *b, double *blk,
    int *list, double *scratch, FZ_T *Lout, FZ_T *row_max, int64_t *row_argmax,
    FZ_T *row_lse, uint8_t *all_below)
{
    const ptrdiff_t C = q->n_classes, d = q->d;
    double mx, lse;
    ptrdiff_t n_direct;
    if (Lout != NULL)
        n_direct = FZ_N(fz_gauss_row)(P + (i - r0) * ldp, fn[i - r0], F + i * d, means, q, 1,
                                      L, b, blk, list, scratch, &mx, row_argmax + i, &lse,
                                      all_below + i);
    else
        n_direct = FZ_N(fz_gauss_row)(P + (i - r0) * ldp, fn[i - r0], F + i * d, means, q, 0,
                                      L, b, blk, list, scratch, &mx, row_argmax + i, &lse,
                                      all_below + i);
    row_max[i] = (FZ_T)mx;
    row_lse[i] = (FZ_T)lse;
    if (Lout != NULL) {
        FZ_T *out = Lout + i * C;
        #pragma omp simd
        for (ptrdiff_t c = 0; c < C; c++)
            out[c] = (FZ_T)L[c];
    }
    return n_direct;
}

/* four consecutive entries of a row, in double */
static inline __attribute__((always_inline)) fz_half_vd FZ_N(fz_load4)(const FZ_T *p)
{
    typedef FZ_T fz_v4 __attribute__((vector_size(4 * sizeof(FZ_T))));
    fz_v4 v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, fz_half_vd);
}

/* The direct route's pass A for rows g..g+FZ_LANES-1 (those past r1 repeat row g):
 * V[c][j] = -s h_c - ln_c, s the row's sum of squared differences from mean c in double,
 * in the order of the coordinates (the same value in every call: it depends on the row
 * alone); B = 0 (a direct value is the reference, as elsewhere). The rows are
 * transposed into a lane per row (in two halves, fz_half_vd), and four classes go
 * together: eight independent sums hide the latency of the multiply-adds. Returns 0 when
 * some value is not finite (a NaN or infinity in F, or a sum that overflows): the caller
 * hands over to the direct kernel, after the finite check, as the GEMM form does for
 * norms that could overflow. */
static inline int FZ_N(fz_lanes_direct)(
    const FZ_T *F, ptrdiff_t g, ptrdiff_t r1, const fz_gauss_params *q,
    double (*V)[FZ_LANES], double *mxv_out, double *mxw_out)
{
    const ptrdiff_t C = q->n_classes, d = q->d;
    const double *means = q->means_d;
    fz_half_vd ft[FZ_DIRECT_MAX_D][2];  /* coordinate k of the rows, in two halves */
    const fz_half_vd zero = {0.0};
    fz_half_vd ok_lo = zero, ok_hi = zero;
    fz_half_vd mxv_lo, mxv_hi, mxw_lo, mxw_hi;
    ptrdiff_t c, j, k;
    memcpy(&mxv_lo, mxv_out, sizeof mxv_lo);
    memcpy(&mxv_hi, mxv_out + FZ_LANES / 2, sizeof mxv_hi);
    memcpy(&mxw_lo, mxw_out, sizeof mxw_lo);
    memcpy(&mxw_hi, mxw_out + FZ_LANES / 2, sizeof mxw_hi);
    for (int h = 0; h < 2; h++) {
        const FZ_T *row[FZ_LANES / 2];
        for (j = 0; j < FZ_LANES / 2; j++) {
            const ptrdiff_t i = g + h * (FZ_LANES / 2) + j;
            row[j] = F + (i < r1 ? i : g) * d;
        }
        /* four coordinates of the half's four rows at a time, transposed by shuffles (a
         * scalar copy cost a fifth of the C = 10 rows' time at d = 50) */
        for (k = 0; k + 4 <= d; k += 4) {
            fz_half_vd x[4];
            for (j = 0; j < 4; j++)
                x[j] = FZ_N(fz_load4)(row[j] + k);
            const fz_half_vm even = {0, 4, 2, 6}, odd = {1, 5, 3, 7};
            const fz_half_vm lo = {0, 1, 4, 5}, hi = {2, 3, 6, 7};
            const fz_half_vd t0 = __builtin_shuffle(x[0], x[1], even);
            const fz_half_vd t1 = __builtin_shuffle(x[0], x[1], odd);
            const fz_half_vd t2 = __builtin_shuffle(x[2], x[3], even);
            const fz_half_vd t3 = __builtin_shuffle(x[2], x[3], odd);
            ft[k][h] = __builtin_shuffle(t0, t2, lo);
            ft[k + 1][h] = __builtin_shuffle(t1, t3, lo);
            ft[k + 2][h] = __builtin_shuffle(t0, t2, hi);
            ft[k + 3][h] = __builtin_shuffle(t1, t3, hi);
        }
        for (; k < d; k++)
            for (j = 0; j < FZ_LANES / 2; j++)
                ft[k][h][j] = (double)row[j][k];
    }
    for (c = 0; c < C; c += 4) {
        /* a group of four classes; past C, the last class again (not stored) */
        const double *m0 = means + c * d;
        const double *m1 = means + FZ_MIN(c + 1, C - 1) * d;
        const double *m2 = means + FZ_MIN(c + 2, C - 1) * d;
        const double *m3 = means + FZ_MIN(c + 3, C - 1) * d;
        /* eight named sums (four classes, two halves): an array of them stays in memory */
        fz_half_vd s0 = zero, s1 = zero, s2 = zero, s3 = zero;
        fz_half_vd t0 = zero, t1 = zero, t2 = zero, t3 = zero;
        for (k = 0; k < d; k++) {
            const fz_half_vd x = ft[k][0], y = ft[k][1];
            fz_half_vd e;
            e = x - m0[k]; s0 += e * e;
            e = y - m0[k]; t0 += e * e;
            e = x - m1[k]; s1 += e * e;
            e = y - m1[k]; t1 += e * e;
            e = x - m2[k]; s2 += e * e;
            e = y - m2[k]; t2 += e * e;
            e = x - m3[k]; s3 += e * e;
            e = y - m3[k]; t3 += e * e;
        }
        const fz_half_vd lo[4] = {s0, s1, s2, s3}, hi[4] = {t0, t1, t2, t3};
        for (ptrdiff_t u = 0; u < 4 && c + u < C; u++) {
            const double h = q->h[c + u], ln = q->ln[c + u], lw = q->lw[c + u];
            const fz_half_vd vl = -lo[u] * h - ln, vh = -hi[u] * h - ln;
            memcpy(V[c + u], &vl, sizeof vl);
            memcpy(V[c + u] + FZ_LANES / 2, &vh, sizeof vh);
            mxv_lo = fz_half_max(vl, mxv_lo);
            mxv_hi = fz_half_max(vh, mxv_hi);
            mxw_lo = fz_half_max(vl + lw, mxw_lo);
            mxw_hi = fz_half_max(vh + lw, mxw_hi);
            ok_lo += vl - vl;  /* NaN unless v is finite */
            ok_hi += vh - vh;
        }
    }
    memcpy(mxv_out, &mxv_lo, sizeof mxv_lo);
    memcpy(mxv_out + FZ_LANES / 2, &mxv_hi, sizeof mxv_hi);
    memcpy(mxw_out, &mxw_lo, sizeof mxw_lo);
    memcpy(mxw_out + FZ_LANES / 2, &mxw_hi, sizeof mxw_hi);
    for (j = 0; j < FZ_LANES / 2; j++)
        if (ok_lo[j] != 0.0 || ok_hi[j] != 0.0)
            return 0;
    return 1;
}

/* Rows g..g+FZ_LANES-1 of a tile whose classes fit one vector (n_padded == FZ_PAD), a row per
 * lane: pass A, then the direct values of the entries that need one (bound above acc
 * |L~|: B_c = L_dir, b_c = 0) and may matter (below: the reductions are those of every such
 * entry refined, with or without the matrix), the logsumexp from those values (every
 * class a term down to the cut, fz_exp_poly; the sum's log by fz_log_poly, its error
 * counted in the certificate) and the decisions of fz_gauss_row. Returns
 * the rows (a bit each) left to fz_gauss_one: the logsumexp not certified even after
 * fz_lse_refine, several argmax candidates, a float32 entry within its bound of its
 * threshold, every weight zero, or |lse| too close to 0 for the polynomial. The values
 * equal fz_gauss_one's wherever both apply: the same B and decisions, the logsumexp
 * within the same certificate (fz_gauss_one forms it from the pristine L~ and refines
 * after). Rows past r1 (the tile's padding: zero products) are
 * computed, not stored, and take no direct value, so a row's lanes never depend on the rows
 * beside it. *n_direct counts the direct values. With P NULL (the direct route: every value
 * direct, fz_lanes_direct) the lanes decide every row themselves, the rows above by libm's
 * exp and the first of tied classes, and return FZ_LANES_HANDOVER when a value is not
 * finite. */
static inline __attribute__((always_inline)) unsigned FZ_N(fz_gauss_lanes_body)(
    const FZ_T *P, ptrdiff_t ldp, const double *fn, const FZ_T *F, const FZ_T *means,
    ptrdiff_t g, ptrdiff_t r0, ptrdiff_t r1, const fz_gauss_params *q, FZ_T *Lout,
    FZ_T *row_max, int64_t *row_argmax, FZ_T *row_lse, uint8_t *all_below,
    ptrdiff_t *n_direct, const int direct)
{
    const ptrdiff_t C = q->n_classes, d = q->d;
    const double acc = q->acc, log_c = q->log_c;
    const int degree = sizeof(FZ_T) == 4 ? 7 : 12;  /* fz_gauss_lse's top degree */
    const double eps_exp = FZ_EXP_EPS(degree);
    /* B_c, b_c of the classes c < C */
    double V[FZ_PAD][FZ_LANES] __attribute__((aligned(64)));
    double B[FZ_PAD][FZ_LANES] __attribute__((aligned(64)));
    double mxv[FZ_LANES] __attribute__((aligned(64)));
    double mxw[FZ_LANES] __attribute__((aligned(64)));
    double f[FZ_LANES], bmax[FZ_LANES], cut[FZ_LANES];
    double left_out[FZ_LANES], sum[FZ_LANES], err[FZ_LANES], bk[FZ_LANES], lo[FZ_LANES];
    double lse[FZ_LANES], n_terms[FZ_LANES], budget[FZ_LANES], mag[FZ_LANES];
    /* flags and counts as wide as the doubles: no packing of the compares' masks */
    int64_t certified[FZ_LANES], need[FZ_LANES], bad[FZ_LANES], above[FZ_LANES];
    int64_t n_cand[FZ_LANES], am[FZ_LANES], usual[FZ_LANES];
    unsigned bad_rows = 0;
    ptrdiff_t c, j;
    #pragma omp simd
    for (j = 0; j < FZ_LANES; j++) {
        f[j] = direct ? 0.0 : fn[g - r0 + j];
        mxv[j] = mxw[j] = -INFINITY;
        bmax[j] = direct ? 0.0 : q->kh_max * f[j] + q->km_max;
        sum[j] = err[j] = bk[j] = n_terms[j] = 0.0;
        lo[j] = -INFINITY;
        need[j] = bad[j] = above[j] = n_cand[j] = am[j] = 0;
    }
    if (direct) {
        /* the direct route: every value by direct differences (B = 0, never read) */
        if (!FZ_N(fz_lanes_direct)(F, g, r1, q, V, mxv, mxw))
            return FZ_LANES_HANDOVER;
        (*n_direct) += FZ_MIN(FZ_LANES, r1 - g) * C;
    }
    /* pass A */
    for (c = 0; c < C && !direct; c++) {
        const double h = q->h[c], k = q->k[c], lw = q->lw[c];
        const FZ_T *pc = P + (g - r0) * ldp + c;
        #pragma omp simd
        for (j = 0; j < FZ_LANES; j++) {
            const double v = h * (2.0 * (double)pc[j * ldp] - f[j]) - k;
            const double bc = fz_beta(q->kh, q->km, c, f[j]);
            V[c][j] = v;
            B[c][j] = bc;
            mxv[j] = FZ_MAX(v, mxv[j]);
            mxw[j] = FZ_MAX(v + lw, mxw[j]);
            need[j] |= bc > acc * fabs(v);
        }
    }
    /* The direct values (e.g. a row's own class where the classes are far apart, in
     * float32) of the entries that may matter: with the matrix, all; else those that may
     * be an argmax candidate (t_c = L~_c + beta_c >= max L~ - 2 beta_max), a kept
     * logsumexp term (t_c + lw_c >= max(L~ + lw) - beta_max - FZ_LSE_CUT_MAX) or not below
     * their threshold (t_c >= threshold_c). An entry left as it is has a true value below
     * t_c, while the refined maxima are at least the pristine ones less beta_max: it is
     * below every candidate's lower bound, left out of the sum (cut <= FZ_LSE_CUT_MAX) and
     * below its threshold, in the definition and in the lanes alike, so the reductions are
     * those of every entry refined, bit for bit, with or without the matrix. */
    for (j = 0; j < FZ_LANES && g + j < r1 && !direct; j++) {
        if (!need[j])
            continue;
        const FZ_T *frow = F + (g + j) * d;
        const double lo_arg = mxv[j] - 2.0 * bmax[j];
        const double lo_lse = mxw[j] - bmax[j] - FZ_LSE_CUT_MAX;
        mxv[j] = mxw[j] = -INFINITY;
        for (c = 0; c < C; c++) {
            const double v = V[c][j], t = v + B[c][j];
            if (B[c][j] > acc * fabs(v) && (Lout != NULL || t >= lo_arg
                                            || t + q->lw[c] >= lo_lse || t >= q->thr[c])) {
                V[c][j] = FZ_N(fz_direct)(frow, means + c * d, d, q->var[c], q->ln[c]);
                B[c][j] = 0.0;
                (*n_direct)++;
            }
            mxv[j] = FZ_MAX(V[c][j], mxv[j]);
            mxw[j] = FZ_MAX(V[c][j] + q->lw[c], mxw[j]);
        }
    }
    /* the logsumexp's cut (fz_gauss_lse): vectorised, fz_lse_cut where it is clamped */
    #pragma omp simd
    for (j = 0; j < FZ_LANES; j++) {
        mag[j] = fz_lse_magnitude(mxw[j], log_c);
        usual[j] = fz_lse_cut_usual(acc * mag[j], log_c, 2.0 * bmax[j], &cut[j],
                                    &left_out[j]);
        bad[j] |= !(mxw[j] > -INFINITY) | !(eps_exp <= 0.25 * acc * mag[j]);
    }
    for (j = 0; j < FZ_LANES; j++)
        if (!usual[j])
            cut[j] = fz_lse_cut(acc * mag[j], log_c, 2.0 * bmax[j], &left_out[j]);
    for (c = 0; c < C; c++) {
        const double lw = q->lw[c];
        #pragma omp simd
        for (j = 0; j < FZ_LANES; j++) {
            const double x = (V[c][j] + lw) - mxw[j];
            const double keep = x >= -cut[j] ? 1.0 : 0.0;
            const double e = keep * fz_exp_poly(FZ_MAX(x, -cut[j]), degree);
            sum[j] += e;
            if (!direct) {  /* direct values have no error */
                err[j] += e * B[c][j];
                bk[j] = FZ_MAX(bk[j], keep * B[c][j]);
            }
            n_terms[j] += keep;
        }
    }
    /* the sums are in [1, FZ_PAD] (the largest term is e^0 = 1) where the row is not bad:
     * fz_log_poly's domain, its error counted beside log's rounding (fz_lse_other) */
    #pragma omp simd
    for (j = 0; j < FZ_LANES; j++) {
        lse[j] = mxw[j] + fz_log_poly(sum[j]);
        budget[j] = fz_lse_budget(acc, lse[j], log_c, FZ_PAD, left_out[j], eps_exp)
            - FZ_LOG_POLY_EPS;
        certified[j] = FZ_CERTIFIED(direct ? 0.0 : err[j], sum[j], budget[j],
                                    direct ? 0.0 : bk[j]);
    }
    for (j = 0; j < FZ_LANES; j++) {
        if (bad[j] || certified[j])
            continue;
        /* refined as in fz_gauss_lse (e.g. a term whose bound is close to its accuracy
         * target: not "need", but beyond the certificate once its factor phi(bk) > 1 and
         * the other errors are counted) */
        bad[j] = 1;
        if (g + j < r1 && budget[j] > 0.0) {
            double Lj[FZ_PAD], bj[FZ_PAD];
            fz_direct_memo memo;
            memo.n = 0;
            for (c = 0; c < C; c++) {
                Lj[c] = V[c][j];
                bj[c] = direct ? 0.0 : B[c][j];
            }
            bad[j] = !FZ_N(fz_lse_refine)(F + (g + j) * d, means, q, Lj, bj, f[j], mxw[j],
                                          cut[j], degree, left_out[j], eps_exp, sum[j], err[j],
                                          (ptrdiff_t)n_terms[j], budget[j], &memo, n_direct,
                                          &lse[j]);
        }
    }
    /* the decisions (fz_gauss_row's list, on B and b; & and | rather than && and ||:
     * branch-free, so that the lanes vectorise) */
    const int exact = q->exact_thresholds;
    for (c = 0; c < C; c++) {
        #pragma omp simd
        for (j = 0; j < FZ_LANES; j++) {
            const double v = V[c][j], bc = direct ? 0.0 : B[c][j];
            const int flag = v + bc >= mxv[j] - bmax[j];
            lo[j] = flag & (v - bc > lo[j]) ? v - bc : lo[j];
        }
    }
    for (c = 0; c < C; c++) {
        const double thr = q->thr[c];
        #pragma omp simd
        for (j = 0; j < FZ_LANES; j++) {
            const double v = V[c][j], bc = direct ? 0.0 : B[c][j];
            const int cand = (v + bc >= mxv[j] - bmax[j]) & (v + bc >= lo[j]);
            const int listed = v + bc >= thr;
            n_cand[j] += cand;
            am[j] = cand ? c : am[j];
            above[j] |= listed & !(v < thr);
            bad[j] |= listed & exact & (bc > 0.0) & (fabs(v - thr) <= bc);
        }
    }
    int64_t any_bad = 0;
    #pragma omp simd reduction(|:any_bad)
    for (j = 0; j < FZ_LANES; j++) {
        bad[j] |= n_cand[j] != 1;
        any_bad |= bad[j];
    }
    if (!any_bad && g + FZ_LANES <= r1 && Lout == NULL) {
        /* every row decided (the usual case): stored as vectors. The one candidate is the
         * first largest value (it always is a candidate), so its value is mxv. */
        #pragma omp simd
        for (j = 0; j < FZ_LANES; j++) {
            row_max[g + j] = (FZ_T)mxv[j];
            row_argmax[g + j] = am[j];
            row_lse[g + j] = (FZ_T)lse[j];
        }
        for (j = 0; j < FZ_LANES; j++)  /* apart: bytes beside doubles do not vectorise */
            all_below[g + j] = !above[j];
        return 0;
    }
    for (j = 0; j < FZ_LANES && g + j < r1; j++) {
        const ptrdiff_t i = g + j;
        if (bad[j] && direct) {
            /* exact values: ties go to the first class, the logsumexp by libm's exp */
            double best = -INFINITY, s = 0.0;
            ptrdiff_t best_c = 0;
            for (c = 0; c < C; c++) {
                if (V[c][j] > best) {
                    best = V[c][j];
                    best_c = c;
                }
                if (q->lw[c] > -INFINITY)
                    s += exp((V[c][j] + q->lw[c]) - mxw[j]);
            }
            am[j] = (int)best_c;
            lse[j] = mxw[j] + log(s);
            bad[j] = 0;
        }
        if (bad[j]) {
            bad_rows |= 1u << j;
            continue;
        }
        row_max[i] = (FZ_T)V[am[j]][j];
        row_argmax[i] = am[j];
        row_lse[i] = (FZ_T)lse[j];
        all_below[i] = !above[j];
        if (Lout != NULL)
            for (c = 0; c < C; c++)
                Lout[i * C + c] = (FZ_T)V[c][j];
    }
    return bad_rows;
}

/* fz_gauss_lanes_body for the GEMM form's products P, and for the direct route (P NULL:
 * compiled apart, without the bounds' work, all zero there) */
FZ_CLONES static unsigned FZ_N(fz_gauss_lanes)(
    const FZ_T *P, ptrdiff_t ldp, const double *fn, const FZ_T *F, const FZ_T *means,
    ptrdiff_t g, ptrdiff_t r0, ptrdiff_t r1, const fz_gauss_params *q, FZ_T *Lout,
    FZ_T *row_max, int64_t *row_argmax, FZ_T *row_lse, uint8_t *all_below,
    ptrdiff_t *n_direct)
{
    return FZ_N(fz_gauss_lanes_body)(P, ldp, fn, F, means, g, r0, r1, q, Lout, row_max,
                                     row_argmax, row_lse, all_below, n_direct, 0);
}

FZ_CLONES static unsigned FZ_N(fz_gauss_lanes_direct)(
    const FZ_T *F, const FZ_T *means, ptrdiff_t g, ptrdiff_t r1, const fz_gauss_params *q,
    FZ_T *Lout, FZ_T *row_max, int64_t *row_argmax, FZ_T *row_lse, uint8_t *all_below,
    ptrdiff_t *n_direct)
{
    return FZ_N(fz_gauss_lanes_body)(NULL, 0, NULL, F, means, g, g, r1, q, Lout, row_max,
                                     row_argmax, row_lse, all_below, n_direct, 1);
}

/* Rows r0..r1-1 of a tile: P is (r1 - r0) x C (row stride ldp >= C; the tile's rows up to a
 * multiple of FZ_LANES past r1 are there too, zero products), fn per tile row, F and the
 * outputs indexed by global row; or P and fn NULL: the direct route (every value by direct
 * differences, in lanes; classes that fit one FZ_PAD and d <= FZ_DIRECT_MAX_D), which
 * returns -2 when a value is not finite. Lout is NULL, or the (n, C) output matrix.
 * Returns the number of entries computed by direct differences. */
FZ_CLONES static ptrdiff_t FZ_N(fz_gauss_tile)(
    const FZ_T *P, ptrdiff_t ldp, const double *fn, const FZ_T *F, const FZ_T *means,
    ptrdiff_t r0, ptrdiff_t r1, const fz_gauss_params *q, double *L, double *b, double *blk,
    int *list, double *scratch, FZ_T *Lout, FZ_T *row_max, int64_t *row_argmax,
    FZ_T *row_lse, uint8_t *all_below)
{
    ptrdiff_t n_direct = 0;
    if (P == NULL) {
        for (ptrdiff_t g = r0; g < r1; g += FZ_LANES)
            if (FZ_N(fz_gauss_lanes_direct)(F, means, g, r1, q, Lout, row_max, row_argmax,
                                            row_lse, all_below, &n_direct))
                return -2;
        return n_direct;
    }
    if (q->n_padded == FZ_PAD) {
        for (ptrdiff_t g = r0; g < r1; g += FZ_LANES) {
            unsigned bad = FZ_N(fz_gauss_lanes)(P, ldp, fn, F, means, g, r0, r1, q, Lout,
                                                row_max, row_argmax, row_lse, all_below,
                                                &n_direct);
            for (ptrdiff_t j = 0; bad; j++, bad >>= 1)
                if (bad & 1u)
                    n_direct += FZ_N(fz_gauss_one)(P, ldp, fn, F, means, g + j, r0, q, L, b,
                                                   blk, list, scratch, Lout, row_max,
                                                   row_argmax, row_lse, all_below);
        }
        return n_direct;
    }
    for (ptrdiff_t i = r0; i < r1; i++)
        n_direct += FZ_N(fz_gauss_one)(P, ldp, fn, F, means, i, r0, q, L, b, blk, list,
                                       scratch, Lout, row_max, row_argmax, row_lse,
                                       all_below);
    return n_direct;
}
