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

/* One row (see the header for the definitions). L, b: C doubles of scratch (L is left
 * holding the row's values where the matrix is asked for: full); list: C ints of scratch.
 * Returns the number of direct evaluations. */
static inline __attribute__((always_inline)) ptrdiff_t FZ_N(fz_gauss_row)(
    const FZ_T *p, double fn, const FZ_T *frow, const FZ_T *means, const fz_gauss_params *q,
    int full, double *L, double *b, int *list, double *row_max, int64_t *row_argmax,
    double *row_lse, uint8_t *all_below)
{
    const ptrdiff_t C = q->n_classes, d = q->d;
    const double acc = q->acc;
    const int exact = q->exact_thresholds;
    const double *h = q->h, *k = q->k, *kh = q->kh, *km = q->km;
    const double *var = q->var, *ln = q->ln, *lw = q->lw, *thr = q->thr;
    ptrdiff_t n_direct = 0, c, j, n_list = 0;
    double mxv = -INFINITY;
    int need_any = 0;

#define FZ_DIRECT(c) (n_direct++, FZ_N(fz_direct)(frow, means + (c) * d, d, var[c], ln[c]))

    /* Pass A: L~ and its maximum (and, for the matrix, beta and the "need" entries, marked
     * b = -1: a bound is never negative) */
    if (full) {
        #pragma omp simd reduction(max:mxv) reduction(|:need_any)
        for (c = 0; c < C; c++) {
            double v = h[c] * (2.0 * (double)p[c] - fn) - k[c];
            double bc = kh[c] * fn + km[c];
            int need = bc > acc * fabs(v);
            L[c] = v;
            b[c] = need ? -1.0 : bc;
            mxv = v > mxv ? v : mxv;
            need_any |= need;
        }
    } else {
        #pragma omp simd reduction(max:mxv)
        for (c = 0; c < C; c++) {
            double v = h[c] * (2.0 * (double)p[c] - fn) - k[c];
            L[c] = v;
            mxv = v > mxv ? v : mxv;
        }
    }
    if (need_any) { /* the matrix holds B: fix every "need" entry */
        for (ptrdiff_t c0 = 0; c0 < C; c0 += FZ_GAUSS_CHUNK) {
            ptrdiff_t c1 = c0 + FZ_GAUSS_CHUNK < C ? c0 + FZ_GAUSS_CHUNK : C;
            double top = 0.0;
            #pragma omp simd reduction(max:top)
            for (c = c0; c < c1; c++)
                top = -b[c] > top ? -b[c] : top;
            for (c = c0; top > 0.0 && c < c1; c++) {
                if (b[c] < 0.0) {
                    L[c] = FZ_DIRECT(c);
                    b[c] = 0.0;
                }
            }
        }
    }
    /* Lower bounds: lo1 <= max_c (B_c - b_c), as the entry with the largest L~ has
     * B - b >= L~ - beta and beta <= bc_max; W <= max_c (F_c + lw_c), from that entry when
     * every weight is finite (F >= lo1 there) and from the heaviest class cw. Pass B lists
     * the entries that may matter, t_c = L_c + b_c >= z_c = min(lo1, threshold_c,
     * W - lse_cut - lw_c): a possible argmax (t >= lo1), possibly not below its
     * threshold (t >= threshold_c) or a logsumexp term within lse_cut of the largest.
     * A chunk is tested with one max-reduction of t - z (>= 0 exactly when t >= z). */
    const double lo1 = mxv - (q->kh_max * fn + q->km_max);
    double W = INFINITY; /* no finite weight: no logsumexp terms */
    if (q->heavy >= 0) {
        c = q->heavy;
        W = (L[c] - (full ? (b[c] > 0.0 ? b[c] : 0.0) : kh[c] * fn + km[c])) + lw[c];
        if (q->all_weights_finite && lo1 + q->lw_min > W)
            W = lo1 + q->lw_min;
    }
    const double wcut = W - q->lse_cut;
    int above = 0;
    /* The screen uses beta_max for every entry (a superset of the list), and leaves out
     * the threshold and weight streams when they are all +inf or all equal. */
    const double bmax = q->kh_max * fn + q->km_max;
    const double z0 = q->uniform_weights ? (wcut - lw[0] < lo1 ? wcut - lw[0] : lo1) : lo1;
#define FZ_SCREEN_U(c) ((L[c] + bmax) - z0)
#define FZ_SCREEN_UT(c) ((L[c] + bmax) - FZ_MIN(z0, thr[c]))
#define FZ_SCREEN_W(c) ((L[c] + bmax) - FZ_MIN(z0, wcut - lw[c]))
#define FZ_SCREEN_WT(c) ((L[c] + bmax) - FZ_MIN(FZ_MIN(z0, thr[c]), wcut - lw[c]))
#define FZ_LIST_ENTRY { \
        double bc = full ? b[c] : kh[c] * fn + km[c]; \
        double t = L[c] + bc; \
        int flags = (t >= lo1 ? FZ_ARGMAX : 0) | (t >= wcut - lw[c] ? FZ_LSE : 0) \
                  | (t >= thr[c] ? FZ_THRESHOLD : 0); \
        if (flags) { \
            list[n_list++] = (int)(c * 8 + flags); \
            if (!full) { \
                if (bc > acc * fabs(L[c])) { /* B_c */ \
                    L[c] = FZ_DIRECT(c); \
                    bc = 0.0; \
                } \
                b[c] = bc; \
            } \
        } \
    }
    switch (q->uniform_weights * 2 + q->finite_thresholds) {
    case 3: FZ_FOR_NONNEG(FZ_SCREEN_UT, C, c, FZ_LIST_ENTRY); break;
    case 2: FZ_FOR_NONNEG(FZ_SCREEN_U, C, c, FZ_LIST_ENTRY); break;
    case 1: FZ_FOR_NONNEG(FZ_SCREEN_WT, C, c, FZ_LIST_ENTRY); break;
    default: FZ_FOR_NONNEG(FZ_SCREEN_W, C, c, FZ_LIST_ENTRY); break;
    }
#undef FZ_SCREEN_U
#undef FZ_SCREEN_UT
#undef FZ_SCREEN_W
#undef FZ_SCREEN_WT
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
    /* logsumexp over the listed terms */
    double wmax = -INFINITY;
    for (j = 0; j < n_list; j++) {
        c = list[j] >> 3;
        if ((list[j] & FZ_LSE) && L[c] + lw[c] > wmax)
            wmax = L[c] + lw[c];
    }
    if (wmax == -INFINITY) { /* every weight is zero */
        *row_lse = -INFINITY;
        return n_direct;
    }
    double sum = 0.0, err = 0.0;
    for (j = 0; j < n_list; j++) {
        c = list[j] >> 3;
        double x = L[c] + lw[c] - wmax;
        if ((list[j] & FZ_LSE) && x >= -q->lse_cut) {
            double e = exp(x);
            sum += e;
            err += e * b[c];
        }
    }
    double lse = wmax + log(sum);
    if (2.0 * err > acc * fabs(lse) * sum) {
        /* direct values for these terms (kept in b: the row's values stay as they are) */
        wmax = -INFINITY;
        for (j = 0; j < n_list; j++) {
            c = list[j] >> 3;
            if (!(list[j] & FZ_LSE))
                continue;
            b[c] = (b[c] > 0.0 ? FZ_DIRECT(c) : L[c]) + lw[c];
            wmax = b[c] > wmax ? b[c] : wmax;
        }
        sum = 0.0;
        for (j = 0; j < n_list; j++) {
            c = list[j] >> 3;
            double x = b[c] - wmax;
            if ((list[j] & FZ_LSE) && x >= -q->lse_cut)
                sum += exp(x);
        }
        lse = wmax + log(sum);
    }
    *row_lse = lse;
    return n_direct;
#undef FZ_DIRECT
}

/* Rows r0..r1-1 of a tile: P is (r1 - r0) x C (row stride C), fn per tile row, F and
 * the outputs indexed by global row. Lout is NULL, or the (n, C) output matrix. */
FZ_CLONES static ptrdiff_t FZ_N(fz_gauss_tile)(
    const FZ_T *P, const double *fn, const FZ_T *F, const FZ_T *means, ptrdiff_t r0,
    ptrdiff_t r1, const fz_gauss_params *q, double *L, double *b, int *list, FZ_T *Lout,
    FZ_T *row_max, int64_t *row_argmax, FZ_T *row_lse, uint8_t *all_below)
{
    const ptrdiff_t C = q->n_classes, d = q->d;
    ptrdiff_t n_direct = 0;
    for (ptrdiff_t i = r0; i < r1; i++) {
        double mx, lse;
        if (Lout != NULL)
            n_direct += FZ_N(fz_gauss_row)(P + (i - r0) * C, fn[i - r0], F + i * d, means,
                                           q, 1, L, b, list, &mx, row_argmax + i, &lse,
                                           all_below + i);
        else
            n_direct += FZ_N(fz_gauss_row)(P + (i - r0) * C, fn[i - r0], F + i * d, means,
                                           q, 0, L, b, list, &mx, row_argmax + i, &lse,
                                           all_below + i);
        row_max[i] = (FZ_T)mx;
        row_lse[i] = (FZ_T)lse;
        if (Lout != NULL) {
            FZ_T *out = Lout + i * C;
            #pragma omp simd
            for (ptrdiff_t c = 0; c < C; c++)
                out[c] = (FZ_T)L[c];
        }
    }
    return n_direct;
}
