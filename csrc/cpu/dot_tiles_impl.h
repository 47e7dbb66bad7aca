/* One element type of the dot-product tiles of csrc/cpu/knn_f32_tiles.h: included once per
 * type, with FZ_TT the type, FZ_TN(name) its function names (fz_f32_name, fz_f64_name),
 * FZ_TNR the rows per panel (two vectors), FZ_TV / FZ_TV_* the AVX-512 vector type and
 * operations, FZ_TY / FZ_TY_* the AVX2 ones (FZ_TY_LANES per vector: half a panel is two),
 * and FZ_TMASKS 1 where the tiles also form kNN pass 1's masks (float32); it undefines
 * them at its end. */

/* Panels of the n rows R (row-major, d components) into B for the micro-kernel `kernel`, the
 * last panel padded with zero rows; z: NULL, or a centre taken off every row on the way
 * ((FZ_TT)((double)x - z_t): the double difference rounded once to the type). Each panel
 * is a block of d FZ_TNR components; within it the AVX2 kernel's panels hold two halves of
 * FZ_TNR / 2 rows one after the other (component t of row l at ((l / half) d + t) half +
 * l % half), so that kernel streams a half panel contiguously; the others' rows interleave
 * whole (t FZ_TNR + l). */
static inline FZ_TT *FZ_TN(panel_row)(int kernel, FZ_TT *B, ptrdiff_t r, ptrdiff_t d,
                                      ptrdiff_t *step)
{
    /* where row r's component 0 goes: component t at [t * step] (see pack_panels) */
    const ptrdiff_t h = kernel == FZ_TILES_AVX2 ? FZ_TNR / 2 : FZ_TNR;
    const ptrdiff_t l = r % FZ_TNR;
    *step = h;
    return B + (r / FZ_TNR) * d * FZ_TNR + (l / h) * d * h + l % h;
}

static inline void FZ_TN(pack_panels)(int kernel, const FZ_TT *R, ptrdiff_t n, ptrdiff_t d,
                                      const double *z, FZ_TT *B)
{
    const ptrdiff_t n_panels = (n + FZ_TNR - 1) / FZ_TNR;
    for (ptrdiff_t p = 0; p < n_panels; p++)
        for (ptrdiff_t l = 0; l < FZ_TNR; l++) {
            ptrdiff_t h;
            const ptrdiff_t r = p * FZ_TNR + l;
            FZ_TT *dst = FZ_TN(panel_row)(kernel, B, r, d, &h);
            if (r >= n) {
                for (ptrdiff_t t = 0; t < d; t++)
                    dst[t * h] = 0;
            } else if (z != NULL) {
                for (ptrdiff_t t = 0; t < d; t++)
                    dst[t * h] = (FZ_TT)((double)R[r * d + t] - z[t]);
            } else {
                for (ptrdiff_t t = 0; t < d; t++)
                    dst[t * h] = R[r * d + t];
            }
        }
}

static void FZ_TN(tile_portable)(const FZ_TT *A, ptrdiff_t na, ptrdiff_t d, const FZ_TT *B,
                                 ptrdiff_t n_panels, FZ_TT *C, ptrdiff_t ldc,
                                 const FZ_TT *rn, const FZ_TT *thr, uint32_t *masks)
{
    FZ_TT acc[FZ_TNR];
    for (ptrdiff_t i = 0; i < na; i++)
        for (ptrdiff_t p = 0; p < n_panels; p++) {
            const FZ_TT *b = B + p * d * FZ_TNR;
            for (ptrdiff_t l = 0; l < FZ_TNR; l++)
                acc[l] = 0;
            for (ptrdiff_t t = 0; t < d; t++) {
                const FZ_TT a = A[i * d + t];
                for (ptrdiff_t l = 0; l < FZ_TNR; l++)
                    acc[l] += a * b[t * FZ_TNR + l];
            }
            memcpy(C + i * ldc + p * FZ_TNR, acc, sizeof acc);
#if FZ_TMASKS
            if (masks != NULL)
                masks[i * n_panels + p] = fz_panel_mask(acc, rn + p * FZ_TNR, thr[i]);
#else
            (void)rn, (void)thr, (void)masks;
#endif
        }
}

#if FZ_TILES_HW_BUILT
/* rows (<= FZ_TILE_MR, a constant where inlined) rows of A against every panel, over
 * components k0..k1-1: the accumulators start from zero (k0 == 0) or from C, where the
 * previous components left them, so the sums are the same FMAs in the same order */
__attribute__((target("avx512f,fma"), always_inline))
static inline void FZ_TN(rows_avx512)(const FZ_TT *a, ptrdiff_t d, ptrdiff_t k0,
                                      ptrdiff_t k1, const FZ_TT *B, ptrdiff_t n_panels,
                                      FZ_TT *C, ptrdiff_t ldc, const FZ_TT *rn,
                                      const FZ_TT *thr, uint32_t *masks, const int rows)
{
    for (ptrdiff_t p = 0; p < n_panels; p++) {
        const FZ_TT *b = B + p * d * FZ_TNR;
        FZ_TV c0[FZ_TILE_MR], c1[FZ_TILE_MR];
#pragma GCC unroll 12
        for (int r = 0; r < rows; r++) {
            c0[r] = k0 == 0 ? FZ_TV_ZERO() : FZ_TV_LOAD(C + r * ldc + p * FZ_TNR);
            c1[r] = k0 == 0 ? FZ_TV_ZERO()
                            : FZ_TV_LOAD(C + r * ldc + p * FZ_TNR + FZ_TNR / 2);
        }
        for (ptrdiff_t t = k0; t < k1; t++) {
            const FZ_TV b0 = FZ_TV_LOAD(b + t * FZ_TNR);
            const FZ_TV b1 = FZ_TV_LOAD(b + t * FZ_TNR + FZ_TNR / 2);
#pragma GCC unroll 12
            for (int r = 0; r < rows; r++) {
                const FZ_TV av = FZ_TV_SET1(a[r * d + t]);
                c0[r] = FZ_TV_FMA(av, b0, c0[r]);
                c1[r] = FZ_TV_FMA(av, b1, c1[r]);
            }
        }
#pragma GCC unroll 12
        for (int r = 0; r < rows; r++) {
            FZ_TV_STORE(C + r * ldc + p * FZ_TNR, c0[r]);
            FZ_TV_STORE(C + r * ldc + p * FZ_TNR + FZ_TNR / 2, c1[r]);
        }
#if FZ_TMASKS
        if (masks != NULL && k1 == d)
            FZ_TILE_MASKS_AVX512(c0, c1, rows, rn, thr, masks, n_panels, p);
#else
        (void)rn, (void)thr, (void)masks;
#endif
    }
}

/* Components per pass of a micro-tile: its rows' slices (12 x FZ_TILE_KC) stay in L1 */
#define FZ_TILE_KC ((ptrdiff_t)(2048 / sizeof(FZ_TT)))

__attribute__((target("avx512f,fma")))
static void FZ_TN(tile_avx512)(const FZ_TT *A, ptrdiff_t na, ptrdiff_t d, const FZ_TT *B,
                               ptrdiff_t n_panels, FZ_TT *C, ptrdiff_t ldc, const FZ_TT *rn,
                               const FZ_TT *thr, uint32_t *masks)
{
#define FZ_TILE_ROWS(n) \
    FZ_TN(rows_avx512)(A + i0 * d, d, k0, k1, B, n_panels, C + i0 * ldc, ldc, rn, \
                       masks != NULL ? thr + i0 : NULL, \
                       masks != NULL ? masks + i0 * n_panels : NULL, n)
    for (ptrdiff_t i0 = 0; i0 < na; i0 += FZ_TILE_MR) {
        for (ptrdiff_t k0 = 0; k0 < d || k0 == 0; k0 += FZ_TILE_KC) {
            const ptrdiff_t k1 = d < k0 + FZ_TILE_KC ? d : k0 + FZ_TILE_KC;
            /* the last rows: one specialised kernel per count (accumulators stay in
             * registers) */
            switch (na - i0 < FZ_TILE_MR ? na - i0 : FZ_TILE_MR) {
#define FZ_TILE_REST(n) \
            case n: FZ_TILE_ROWS(n); break;
            FZ_TILE_REST(1) FZ_TILE_REST(2) FZ_TILE_REST(3) FZ_TILE_REST(4)
            FZ_TILE_REST(5) FZ_TILE_REST(6) FZ_TILE_REST(7) FZ_TILE_REST(8)
            FZ_TILE_REST(9) FZ_TILE_REST(10) FZ_TILE_REST(11) FZ_TILE_REST(12)
#undef FZ_TILE_REST
            default: break;
            }
        }
    }
#undef FZ_TILE_ROWS
}

/* As rows_avx512 with AVX2 (rows <= FZ_TILE_MR_AVX2): each panel in two halves of two
 * vectors (packed half after half: pack_panels), the same FMAs per output in the same
 * order; the last panel in last_halves halves (1 where its second half holds no row: its
 * outputs are left unwritten and its mask bits clear) */
__attribute__((target("avx2,fma"), always_inline))
static inline void FZ_TN(rows_avx2)(const FZ_TT *a, ptrdiff_t d, ptrdiff_t k0, ptrdiff_t k1,
                                    const FZ_TT *B, ptrdiff_t n_panels, int last_halves,
                                    FZ_TT *C, ptrdiff_t ldc, const FZ_TT *rn,
                                    const FZ_TT *thr, uint32_t *masks, const int rows)
{
    for (ptrdiff_t p = 0; p < n_panels; p++)
        for (int h = 0; h < (p == n_panels - 1 ? last_halves : 2); h++) {
            const FZ_TT *b = B + p * d * FZ_TNR + h * d * 2 * FZ_TY_LANES;  /* half h */
            FZ_TT *c = C + p * FZ_TNR + h * 2 * FZ_TY_LANES;
            FZ_TY c0[FZ_TILE_MR_AVX2], c1[FZ_TILE_MR_AVX2];
#pragma GCC unroll 6
            for (int r = 0; r < rows; r++) {
                c0[r] = k0 == 0 ? FZ_TY_ZERO() : FZ_TY_LOAD(c + r * ldc);
                c1[r] = k0 == 0 ? FZ_TY_ZERO() : FZ_TY_LOAD(c + r * ldc + FZ_TY_LANES);
            }
            for (ptrdiff_t t = k0; t < k1; t++) {
                const FZ_TY b0 = FZ_TY_LOAD(b + t * 2 * FZ_TY_LANES);
                const FZ_TY b1 = FZ_TY_LOAD(b + t * 2 * FZ_TY_LANES + FZ_TY_LANES);
#pragma GCC unroll 6
                for (int r = 0; r < rows; r++) {
                    const FZ_TY av = FZ_TY_SET1(a[r * d + t]);
                    c0[r] = FZ_TY_FMA(av, b0, c0[r]);
                    c1[r] = FZ_TY_FMA(av, b1, c1[r]);
                }
            }
#pragma GCC unroll 6
            for (int r = 0; r < rows; r++) {
                FZ_TY_STORE(c + r * ldc, c0[r]);
                FZ_TY_STORE(c + r * ldc + FZ_TY_LANES, c1[r]);
            }
#if FZ_TMASKS
            if (masks != NULL && k1 == d)
                FZ_TILE_MASKS_AVX2(c0, c1, rows, rn + p * FZ_TNR + h * 2 * FZ_TY_LANES, thr,
                                   masks, n_panels, p, h);
#else
            (void)rn, (void)thr, (void)masks;
#endif
        }
}

__attribute__((target("avx2,fma")))
static void FZ_TN(tile_avx2)(const FZ_TT *A, ptrdiff_t na, ptrdiff_t d, const FZ_TT *B,
                             ptrdiff_t nb, FZ_TT *C, ptrdiff_t ldc, const FZ_TT *rn,
                             const FZ_TT *thr, uint32_t *masks)
{
    const ptrdiff_t n_panels = (nb + FZ_TNR - 1) / FZ_TNR;
    /* few classes (C = 10 of a 32-row float32 panel) need only the first half */
    const int last_halves = nb - (n_panels - 1) * FZ_TNR <= FZ_TNR / 2 ? 1 : 2;
#define FZ_TILE_ROWS(n) \
    FZ_TN(rows_avx2)(A + i0 * d, d, k0, k1, B, n_panels, last_halves, C + i0 * ldc, ldc, rn, \
                     masks != NULL ? thr + i0 : NULL, \
                     masks != NULL ? masks + i0 * n_panels : NULL, n)
    for (ptrdiff_t i0 = 0; i0 < na; i0 += FZ_TILE_MR_AVX2)
        for (ptrdiff_t k0 = 0; k0 < d || k0 == 0; k0 += FZ_TILE_KC) {
            const ptrdiff_t k1 = d < k0 + FZ_TILE_KC ? d : k0 + FZ_TILE_KC;
            switch (na - i0 < FZ_TILE_MR_AVX2 ? na - i0 : FZ_TILE_MR_AVX2) {
#define FZ_TILE_REST(n) \
            case n: FZ_TILE_ROWS(n); break;
            FZ_TILE_REST(1) FZ_TILE_REST(2) FZ_TILE_REST(3) FZ_TILE_REST(4)
            FZ_TILE_REST(5) FZ_TILE_REST(6)
#undef FZ_TILE_REST
            default: break;
            }
        }
#undef FZ_TILE_ROWS
}
#undef FZ_TILE_KC
#endif

/* C[i][FZ_TNR p + l] = the dot product of row i of A and row FZ_TNR p + l < nb of the
 * packed B (nb rows in whole panels), by the micro-kernel `kernel` (FZ_TILES_AVX512,
 * FZ_TILES_AVX2; anything else: the portable one). The padding rows' outputs and mask bits
 * are not to be read: the AVX2 kernel may leave them unwritten. */
static inline void FZ_TN(tile)(int kernel, const FZ_TT *A, ptrdiff_t na, ptrdiff_t d,
                               const FZ_TT *B, ptrdiff_t nb, FZ_TT *C, ptrdiff_t ldc,
                               const FZ_TT *rn, const FZ_TT *thr, uint32_t *masks)
{
    const ptrdiff_t n_panels = (nb + FZ_TNR - 1) / FZ_TNR;
#if FZ_TILES_HW_BUILT
    if (kernel == FZ_TILES_AVX512) {
        FZ_TN(tile_avx512)(A, na, d, B, n_panels, C, ldc, rn, thr, masks);
        return;
    }
    if (kernel == FZ_TILES_AVX2) {
        FZ_TN(tile_avx2)(A, na, d, B, nb, C, ldc, rn, thr, masks);
        return;
    }
#endif
    FZ_TN(tile_portable)(A, na, d, B, n_panels, C, ldc, rn, thr, masks);
}

/* the parameters, for the next type */
#undef FZ_TT
#undef FZ_TN
#undef FZ_TNR
#undef FZ_TMASKS
#undef FZ_TV
#undef FZ_TV_ZERO
#undef FZ_TV_LOAD
#undef FZ_TV_STORE
#undef FZ_TV_SET1
#undef FZ_TV_FMA
#undef FZ_TY
#undef FZ_TY_LANES
#undef FZ_TY_ZERO
#undef FZ_TY_LOAD
#undef FZ_TY_STORE
#undef FZ_TY_SET1
#undef FZ_TY_FMA
