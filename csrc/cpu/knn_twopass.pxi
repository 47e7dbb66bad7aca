from libc.math cimport sqrt  # _list_len

# The two-pass kernel of knn (part of knn_cpu.pyx, included there after
# knn_direct.pxi; the module docstring proves it exact). Pass 1 keeps _list_len(k, d)
# candidates per query from gemm tiles of dot products; pass 2 (_pass2, with its per-thread
# Pass2Scratch) re-ranks them by exact distances, or rescans the queries whose list
# overflowed. The pass-1 scans, pass 2 and the norms also serve the self-join (knn_self.pxi).

cdef enum:
    # knn: blocks of up to QUERY_BLOCK_GEMM queries x (GEMM_TILE_ELEMS / block size) float32
    # reference rows (half as many float64 rows): a 1 MiB tile of dot products per thread.
    # Measured here on the d = 50 bench: 1024 x 256 tiles 9% faster than 256 x 512 ones.
    QUERY_BLOCK_GEMM = 1024
    GEMM_TILE_ELEMS = 262144
    # Query blocks: a multiple of the threads, up to BLOCKS_PER_THREAD a thread (dynamic
    # schedule: a thread that the OS holds back leaves its share to the others), but no
    # more than leave BLOCK_MIN_QUERIES queries a block: each block packs and scans the whole
    # reference once. Chosen on blobs (20k-100k references, d = 32-128, k = 20, 2 threads):
    # one block a thread took 0.64x-0.89x the time of four at 300-1000 queries, about the
    # same at 2000-4000.
    BLOCKS_PER_THREAD = 4
    BLOCK_MIN_QUERIES = 256
    # Pass 2 of queries whose list overflowed (near-ties): RESCAN_GROUP of them at a time,
    # one more gemm over tiles of RESCAN_TILE reference rows, collecting up to
    # max(RESCAN_CAP, 2 L) candidates per query (beyond that: the direct scan).
    RESCAN_GROUP = 32
    RESCAN_TILE = 8192
    RESCAN_CAP = 2048
    # Per-thread pass-1 lists of a knn query block stay under this many bytes (large k).
    LIST_BYTES = 16777216
    # _norms of fewer rows than this run on the calling thread.
    NORMS_PARALLEL_MIN = 256

# Pass-1 lists of knn (query blocks and the split path) keep _list_len(k, d) candidates:
# k + max(LIST_EXTRA, d sqrt(k) / LIST_EXTRA_PER_DIM). The margin M grows with d u (Q + R),
# so at high d it spans more near-ties than LIST_EXTRA: on the benchmark's blobs (d = 512,
# ||x||^2 / (k-th distance) ~ 60) every query of a k + 8 list overflowed and was rescanned
# (one more gemm), while 99% needed at most k + 41 (k = 20) and k + 123 (k = 100) entries;
# measured need at d = 50 / 128 / 256: <= 4 / 9 / 16 (k = 20), 10 / 21 / 47 (k = 100). A
# longer list is always exact (the argument only needs "a list drops only candidates above
# its largest entry"); it costs pass-1 insertions and a larger pass-2 sort, both O(L) per
# accepted candidate, against a full extra gemm per overflowed query.
cdef double LIST_EXTRA_PER_DIM = 48.0


cdef inline Py_ssize_t _list_len(Py_ssize_t k, Py_ssize_t d) noexcept nogil:
    cdef Py_ssize_t extra = <Py_ssize_t>(d * sqrt(<double>k) / LIST_EXTRA_PER_DIM)
    if extra < LIST_EXTRA:
        extra = LIST_EXTRA
    return k + extra


# Pass 1's float32 dot products (knn query blocks): 0 one sgemm per tile, else the tiles of
# knn_f32_tiles.h by that micro-kernel (FZ_TILES_AVX512, FZ_TILES_AVX2, FZ_TILES_PORTABLE:
# tests). Set by set_f32_tiles, from FASTZSL_TILES at import (tile_mode_from_env).
cdef int _F32_TILES = 0
# kNN takes the tiles up to this d (the Gaussian kernel at every d): under "auto", AVX2's
# tiles were 0.87x BLAS's time at d = 40, about even at d = 300 and 1.04x-1.09x at d = 768
# (kNN 30k-60k x 3k-6k, k = 20, standard normal rows; AMD EPYC Zen 3, 2 cores), where
# OpenBLAS's own blocking wins; AVX-512's 12-row tiles reuse each panel vector twice as
# often, so they run at every d.
cdef Py_ssize_t AVX2_AUTO_MAX_D = 256
cdef Py_ssize_t _f32_tiles_max_d = 0
F32_TILE_MODES = ("auto", "blas", "avx512", "avx2", "portable")
_f32_tiles_mode = "auto"
# each kind's code in _F32_TILES (0: BLAS), and back
_TILE_CODES = {"blas": 0, "avx512": FZ_TILES_AVX512, "avx2": FZ_TILES_AVX2,
               "portable": FZ_TILES_PORTABLE}
_TILE_KINDS = {code: kind for kind, code in _TILE_CODES.items()}


def tile_kernels():
    """The vector micro-kernels this CPU (and this build) runs, widest first: some of
    ("avx512", "avx2"), read from the CPU's features (AVX-512F, or AVX2 with FMA)."""
    cpu = fz_tiles_cpu_kernels()
    return tuple(kind for kind in ("avx512", "avx2") if cpu & (1 << _TILE_CODES[kind]))


def _tile_kernel(mode):
    """The micro-kernel code of a vector mode ("avx512", "avx2"), refused where the CPU
    lacks its instructions."""
    if mode not in tile_kernels():
        raise ValueError(f"FASTZSL_TILES / set_f32_tiles: this CPU (or this build) has no "
                         f"{mode.upper()} with FMA for the {mode!r} tiles; use 'auto'")
    return _TILE_CODES[mode]


def set_f32_tiles(mode):
    """How pass 1 of float32 knn (and the Gaussian kernel, float32 and float64: gaussian_cpu)
    forms its dot products: "auto" (the widest of tile_kernels(): the AVX-512 tiles where
    the CPU has AVX-512F, else the AVX2 tiles where it has AVX2 and FMA, for kNN only up to
    d = AVX2_AUTO_MAX_D, else BLAS), "blas" (one gemm per tile), "avx512" or "avx2" (those
    tiles at every d; refused where the CPU lacks them) or "portable" (the tiles' portable
    C form on any CPU, slowly: for tests). kNN's answers are the same either way (pass 2
    re-ranks exactly), the Gaussian kernel's within its certified accuracy. Returns the
    kind now in use: "avx512", "avx2", "blas" or "portable"."""
    global _F32_TILES, _f32_tiles_mode, _f32_tiles_max_d
    if mode not in F32_TILE_MODES:
        raise ValueError(f"FASTZSL_TILES / set_f32_tiles: mode must be one of "
                         f"{F32_TILE_MODES}, not {mode!r}")
    if mode == "auto":
        kinds = tile_kernels()
        code = _TILE_CODES[kinds[0]] if kinds else 0
    elif mode in ("avx512", "avx2"):
        code = _tile_kernel(mode)
    else:
        code = _TILE_CODES[mode]
    _F32_TILES, _f32_tiles_mode = code, mode
    _f32_tiles_max_d = (AVX2_AUTO_MAX_D if mode == "auto" and code == FZ_TILES_AVX2
                        else PY_SSIZE_T_MAX)
    return f32_tiles_kind()


@contextlib.contextmanager
def using_f32_tiles(mode):
    """set_f32_tiles(mode) for the body of a ``with`` block (tests, benchmarks), the mode
    before restored after; gives the kind in use."""
    before = _f32_tiles_mode
    try:
        yield set_f32_tiles(mode)
    finally:
        set_f32_tiles(before)


cdef inline bint _f32_tiles_for(Py_ssize_t d) noexcept nogil:
    """Whether float32 kNN of width d forms pass 1's products by the tiles."""
    return _F32_TILES != 0 and d <= _f32_tiles_max_d


def f32_tiles_mode():
    """The mode last given to set_f32_tiles (or FASTZSL_TILES's)."""
    return _f32_tiles_mode


def f32_tiles_kind():
    """The float32 products' route now in use: "blas", "avx512", "avx2" or "portable" (also
    the Gaussian kernel's, gaussian_cpu)."""
    return _TILE_KINDS[_F32_TILES]


def f32_tiles_code():
    """f32_tiles_kind's code for the tiles' C functions (0: BLAS; else FZ_TILES_*): what
    gaussian_cpu passes them."""
    return _F32_TILES


def tile_mode_from_env(environ):
    """set_f32_tiles's mode from an environment mapping: FASTZSL_TILES (the products of
    float32 kNN and of both dtypes' Gaussians), or where it is unset or empty its first
    name FASTZSL_F32_TILES, else "auto"; case and surrounding blanks ignored."""
    for name in ("FASTZSL_TILES", "FASTZSL_F32_TILES"):
        value = environ.get(name, "").strip().lower()
        if value:
            return value
    return "auto"


set_f32_tiles(tile_mode_from_env(os.environ))


# whether fz_f32_dots may take its AVX2 kernel on this CPU
cdef bint _CPU_HAS_AVX2 = (fz_tiles_cpu_kernels() & (1 << FZ_TILES_AVX2)) != 0


def dot_products(const float[:, ::1] Q, const float[:, ::1] R, kernel):
    """Q @ R.T by fz_f32_dots (the split path's products for a few float32 queries):
    ``kernel`` "avx2" (only where the CPU has it) or "portable". For tests."""
    if kernel not in ("avx2", "portable"):
        raise ValueError(f"kernel must be 'avx2' or 'portable', not {kernel!r}")
    if kernel == "avx2" and not _CPU_HAS_AVX2:
        raise ValueError("this CPU (or this build) has no AVX2 with FMA")
    if Q.shape[1] != R.shape[1]:
        raise ValueError("Q and R need the same number of columns")
    out = np.zeros((Q.shape[0], R.shape[0]), dtype=np.float32)
    cdef float[:, ::1] ov = out
    if Q.shape[0] and R.shape[0]:
        fz_f32_dots(kernel == "avx2", &Q[0, 0], Q.shape[0], &R[0, 0], R.shape[0], Q.shape[1],
                    &ov[0, 0], R.shape[0])
    return out


def tile_products(const cython.floating[:, ::1] A, const cython.floating[:, ::1] R,
                  kernel):
    """A @ R.T in the input dtype by the tiles of knn_f32_tiles.h (float32: pass 1's, float64:
    the Gaussian kernel's), R packed in panels, by the micro-kernel ``kernel``: "avx512",
    "avx2" (only where the CPU has it) or "portable". For tests."""
    if kernel not in ("avx512", "avx2", "portable"):
        raise ValueError(f"kernel must be 'avx512', 'avx2' or 'portable', not {kernel!r}")
    cdef int code = _TILE_CODES[kernel] if kernel == "portable" else _tile_kernel(kernel)
    if A.shape[1] != R.shape[1]:
        raise ValueError("A and R need the same number of columns")
    dtype = np.float32 if cython.floating is float else np.float64
    cdef Py_ssize_t nr = FZ_F32_NR if cython.floating is float else FZ_F64_NR
    cdef Py_ssize_t na = A.shape[0], n = R.shape[0], d = A.shape[1]
    cdef Py_ssize_t n_panels = (n + nr - 1) // nr
    packed = np.empty(max(1, n_panels * nr * d), dtype=dtype)
    out = np.empty((na, n_panels * nr), dtype=dtype)
    cdef cython.floating[::1] pk = packed
    cdef cython.floating[:, ::1] ov = out
    if na and n and d:
        pack_panels(code, &R[0, 0], n, d, NULL, &pk[0])
        tile_abt(code, &A[0, 0], na, d, &pk[0], n, &ov[0, 0], n_panels * nr)
    elif na and n:
        out[:] = 0
    return out[:, :n]


# Pass-2 margin: SAFETY times twice the proven error bound of one candidate (docstring).
cdef double SAFETY = 2.0
# Norm sums above these could overflow the gemm / v_j in the input dtype: use the direct kernel.
cdef double NORM_LIMIT_F32 = 1e37
cdef double NORM_LIMIT_F64 = 1e300


cdef inline uint32_t _row_mask(const cython.floating* p, const cython.floating* rn,
                               cython.floating thr, Py_ssize_t n) noexcept nogil:
    if cython.floating is float:
        return fz_row_mask_f(p, rn, thr, n)
    else:
        return fz_row_mask_d(p, rn, thr, n)


cdef inline uint32_t _col_mask(const cython.floating* g, cython.floating ra,
                               const cython.floating* lim, Py_ssize_t n) noexcept nogil:
    if cython.floating is float:
        return fz_col_mask_f(g, ra, lim, n)
    else:
        return fz_col_mask_d(g, ra, lim, n)


cdef inline void _list_replace_max(cython.floating* lv, int64_t* li, Py_ssize_t L,
                                   cython.floating v, int64_t j) noexcept nogil:
    """Pass 1: a list of L (value, index) pairs sorted largest first; (v, j), smaller than
    lv[0], replaces the largest. (Measured faster here than a binary heap.) It reads only
    the entries it moves: the self-join's column scans, whose lists are out of L1 (one per
    query of a tile), take it; a row scan's list stays in cache (_list_replace_max_hot)."""
    cdef Py_ssize_t pos = 0
    while pos + 1 < L and lv[pos + 1] > v:
        lv[pos] = lv[pos + 1]
        li[pos] = li[pos + 1]
        pos += 1
    lv[pos] = v
    li[pos] = j


cdef inline void _list_replace_max_hot(cython.floating* lv, int64_t* li, Py_ssize_t L,
                                       cython.floating v, int64_t j) noexcept nogil:
    """_list_replace_max for a list in cache: the entries after lv[0] larger than v are a
    prefix, counted in one vector pass over the list and moved up by one, with no branch on
    where v lands (the shift loop mispredicts its exit about once an insertion). Measured
    on Zen 3 against _list_replace_max: row scans 0.60x-0.85x the time at k = 100-300,
    0.9x-1.0x at k = 5-20; the self-join's column scans 1.05x-1.09x (k = 20)."""
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t t
    for t in range(1, L):
        pos += lv[t] > v
    memmove(lv, lv + 1, pos * sizeof(cython.floating))
    memmove(li, li + 1, pos * sizeof(int64_t))
    lv[pos] = v
    li[pos] = j


cdef inline void _insert_lex(double* bd, int64_t* bi, Py_ssize_t k, double s,
                             int64_t j) noexcept nogil:
    """Pass 2: keep the k lexicographically smallest (distance, index), in any visiting order."""
    cdef Py_ssize_t pos = k - 1
    if not (s < bd[pos] or (s == bd[pos] and j < bi[pos])):
        return
    while pos > 0 and (bd[pos - 1] > s or (bd[pos - 1] == s and bi[pos - 1] > j)):
        bd[pos] = bd[pos - 1]
        bi[pos] = bi[pos - 1]
        pos -= 1
    bd[pos] = s
    bi[pos] = j


cdef void _scan_row(const cython.floating* p, const cython.floating* rn, Py_ssize_t n,
                    Py_ssize_t first, Py_ssize_t skip, cython.floating* lv, int64_t* li,
                    Py_ssize_t L) noexcept nogil:
    """Pass 1 for one query against candidates first..first+n-1 (p: its dot products, rn:
    their norms); ``skip`` is the query's own index (or -1)."""
    cdef cython.floating last = lv[0]
    cdef cython.floating v
    cdef Py_ssize_t j0, j, m
    cdef uint32_t mask
    j0 = 0
    while j0 < n:
        m = n - j0 if n - j0 < FZ_KNN_CHUNK else FZ_KNN_CHUNK
        mask = _row_mask(p + j0, rn + j0, last, m)
        while mask:
            j = j0 + fz_lowest_bit(mask)
            mask &= mask - 1
            v = rn[j] - (p[j] + p[j])
            if v < last and first + j != skip:
                _list_replace_max_hot(lv, li, L, v, first + j)
                last = lv[0]
        j0 += FZ_KNN_CHUNK


cdef void _scan_row_masked(const float* p, const uint32_t* masks, const float* rn,
                           Py_ssize_t n, Py_ssize_t first, Py_ssize_t skip, float* lv,
                           int64_t* li, Py_ssize_t L) noexcept nogil:
    """_scan_row from the f32 tiles' masks (one per panel of 32 candidates, taken against
    the list's threshold when the tile started: a superset of the entries _scan_row's
    masks pass, each re-tested against the threshold now)."""
    cdef float last = lv[0]
    cdef float v
    cdef Py_ssize_t pnl = 0, j
    cdef Py_ssize_t n_panels = (n + FZ_F32_NR - 1) // FZ_F32_NR
    cdef uint32_t mask
    while pnl < n_panels:
        # after the first tiles almost every mask is 0: eight at a time, one branch
        if pnl + 8 <= n_panels and (masks[pnl] | masks[pnl + 1] | masks[pnl + 2]
                                    | masks[pnl + 3] | masks[pnl + 4] | masks[pnl + 5]
                                    | masks[pnl + 6] | masks[pnl + 7]) == 0:
            pnl += 8
            continue
        mask = masks[pnl]
        if (pnl + 1) * FZ_F32_NR > n:  # the rows past the tile's end
            mask &= (<uint32_t>1 << (n - pnl * FZ_F32_NR)) - 1
        while mask:
            j = pnl * FZ_F32_NR + fz_lowest_bit(mask)
            mask &= mask - 1
            v = rn[j] - (p[j] + p[j])
            if v < last and first + j != skip:
                _list_replace_max_hot(lv, li, L, v, first + j)
                last = lv[0]
        pnl += 1


cdef void _scan_columns(const cython.floating* g, Py_ssize_t ni, Py_ssize_t nj,
                        Py_ssize_t ldg, Py_ssize_t i0, Py_ssize_t j0,
                        const cython.floating* rn, cython.floating* lv, int64_t* li,
                        Py_ssize_t L, cython.floating* lim) noexcept nogil:
    """Pass 1 for queries j0..j0+nj-1 against candidates i0..i0+ni-1, from the tile
    g[ni, nj] of their dot products (rows: candidates, ldg apart). ``lim``: nj scratch
    entries."""
    cdef Py_ssize_t i, c, c0, m
    cdef cython.floating ra, v
    cdef const cython.floating* row
    cdef uint32_t mask
    for c in range(nj):
        lim[c] = lv[(j0 + c) * L]
    for i in range(ni):
        ra = rn[i0 + i]
        row = g + i * ldg
        c0 = 0
        while c0 < nj:
            m = nj - c0 if nj - c0 < FZ_KNN_CHUNK else FZ_KNN_CHUNK
            mask = _col_mask(row + c0, ra, lim + c0, m)
            while mask:
                c = c0 + fz_lowest_bit(mask)
                mask &= mask - 1
                v = ra - (row[c] + row[c])
                if v < lim[c]:
                    _list_replace_max(lv + (j0 + c) * L, li + (j0 + c) * L, L, v, i0 + i)
                    lim[c] = lv[(j0 + c) * L]
            c0 += FZ_KNN_CHUNK


cdef inline void _sqdists(const cython.floating* qrow, const cython.floating* rbase,
                          Py_ssize_t d, const int64_t* cand, Py_ssize_t nc,
                          double* out) noexcept nogil:
    """_sqdist of qrow to rows cand[0..nc-1], four at a time (independent sums run in
    parallel in the pipeline; each is the same sequence of operations as _sqdist)."""
    cdef Py_ssize_t c = 0
    cdef Py_ssize_t t
    cdef double x, e0, e1, e2, e3, s0, s1, s2, s3
    cdef const cython.floating* b0
    cdef const cython.floating* b1
    cdef const cython.floating* b2
    cdef const cython.floating* b3
    while c + 4 <= nc:
        b0 = rbase + cand[c] * d
        b1 = rbase + cand[c + 1] * d
        b2 = rbase + cand[c + 2] * d
        b3 = rbase + cand[c + 3] * d
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for t in range(d):
            x = <double>qrow[t]
            e0 = x - <double>b0[t]
            e1 = x - <double>b1[t]
            e2 = x - <double>b2[t]
            e3 = x - <double>b3[t]
            s0 += e0 * e0
            s1 += e1 * e1
            s2 += e2 * e2
            s3 += e3 * e3
        out[c] = s0
        out[c + 1] = s1
        out[c + 2] = s2
        out[c + 3] = s3
        c += 4
    while c < nc:
        out[c] = _sqdist(qrow, rbase + cand[c] * d, d)
        c += 1


cdef inline double _margin(double T, double qn, double rmax, Py_ssize_t d, double eps,
                           double tiny) noexcept nogil:
    """M = 2 SAFETY b + the rounding of T + M (module docstring); eps, tiny of the input dtype."""
    cdef double u = 0.5 * eps
    cdef double u2 = 0.5 * DBL_EPSILON
    cdef double b = (((d + 3) * u + (3 * d + 4) * u2) * (qn + rmax) * (1 + 2 * (d + 2) * u)
                     + (2 * d + 4) * tiny)
    return 2 * SAFETY * b + 4 * u2 * (fabs(T) + qn + rmax)


cdef Py_ssize_t _pass2_candidates(const cython.floating* lv, const int64_t* li, Py_ssize_t L,
                                   Py_ssize_t n_lists, Py_ssize_t stride, Py_ssize_t k,
                                   double qn, double rmax, Py_ssize_t d, double eps,
                                   double tiny, double widen, int64_t* cand, double* cand_v,
                                   double* limit) noexcept nogil:
    """Pass 2, first step, for one query's n_lists lists (list l at lv/li + l stride, L
    entries each, largest first, index -1 = empty; several when threads split the
    reference): sorts the kept candidates of all of them into cand/cand_v and sets limit =
    T + M + widen, T the k-th smallest of them (widen: 0, or what the float32 screen of
    float64 rows adds, _screen32_block). Returns how many are within the limit, or -1 when a
    list overflowed (it is full and its largest entry is itself within the limit, so a
    candidate it dropped may belong to the answer; a list whose largest entry is above the
    limit dropped only candidates above it)."""
    cdef Py_ssize_t c, nc, pos, l
    cdef double T, x
    nc = 0
    # Backwards: each list is sorted largest first, so its entries arrive smallest first
    # and the insertion sort moves nothing within a list (O(L), not O(L^2)).
    for c in range(n_lists * L - 1, -1, -1):
        l = c // L
        if li[l * stride + c % L] < 0:
            continue
        x = lv[l * stride + c % L]
        pos = nc
        while pos > 0 and cand_v[pos - 1] > x:
            cand_v[pos] = cand_v[pos - 1]
            cand[pos] = cand[pos - 1]
            pos -= 1
        cand_v[pos] = x
        cand[pos] = li[l * stride + c % L]
        nc += 1
    # T: the k-th smallest kept value (+inf when fewer than k candidates exist).
    T = cand_v[k - 1] if nc >= k else INFINITY
    limit[0] = T + _margin(T, qn, rmax, d, eps, tiny) + widen if T < INFINITY else INFINITY
    for l in range(n_lists):
        # Full (the largest slot, filled last, holds a candidate) and within the limit.
        if li[l * stride] >= 0 and lv[l * stride] <= limit[0]:
            return -1
    while nc > 0 and cand_v[nc - 1] > limit[0]:
        nc -= 1
    return nc


cdef inline void _clear_best(double* bd, int64_t* bi, Py_ssize_t k) noexcept nogil:
    """An empty k-best list: every slot (+inf, -1)."""
    cdef Py_ssize_t c
    for c in range(k):
        bd[c] = INFINITY
        bi[c] = -1


cdef inline void _write_answer(const double* bd, const int64_t* bi, Py_ssize_t k,
                               cython.floating* Dout, int64_t* Iout) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(k):
        Dout[c] = <cython.floating>bd[c]
        Iout[c] = bi[c]


cdef void _rerank(const cython.floating* qrow, const cython.floating* rbase, Py_ssize_t d,
                  Py_ssize_t k, const int64_t* cand, Py_ssize_t nc, double* dist, double* bd,
                  int64_t* bi, cython.floating* Dout, int64_t* Iout) noexcept nogil:
    """Pass 2, last step: the k lexicographically smallest (exact distance, index) among
    candidates cand[0..nc-1], written to Dout/Iout. Scratch: dist[nc], bd/bi[k]."""
    cdef Py_ssize_t c
    _clear_best(bd, bi, k)
    _sqdists(qrow, rbase, d, cand, nc, dist)
    for c in range(nc):
        _insert_lex(bd, bi, k, dist[c], cand[c])
    _write_answer(bd, bi, k, Dout, Iout)


cdef inline cython.floating _at_least(cython.floating dummy, double x) noexcept nogil:
    """The smallest value of the input dtype >= x (+inf above its range)."""
    cdef float f
    if cython.floating is float:
        if x > FLT_MAX:
            return INFINITY
        f = <float>x
        if <double>f < x:
            f = nextafterf(f, INFINITY)
        return f
    else:
        return x


cdef void _rescan(const cython.floating* qbase, const int64_t* ids, const double* limits,
                  Py_ssize_t nsub, Py_ssize_t self_offset, const cython.floating* rbase,
                  const cython.floating* rn_w, Py_ssize_t n_r, Py_ssize_t d, Py_ssize_t k,
                  Py_ssize_t cap, cython.floating* qsub, cython.floating* buf, int64_t* cand,
                  Py_ssize_t* ncand, double* dist, double* bd, int64_t* bi,
                  cython.floating* Dout, int64_t* Iout) noexcept nogil:
    """Pass 2 of queries ids[0..nsub-1] (<= RESCAN_GROUP) whose lists overflowed: one more
    gemm over all reference tiles collects every candidate with v <= the query's limit (any
    gemm's v is within b, so the module docstring's argument holds for them), then _rerank;
    a query with more than ``cap`` such candidates takes the direct scan. Scratch: qsub[nsub
    d], buf[nsub RESCAN_TILE], cand[nsub cap], ncand[nsub], dist[cap], bd/bi[k]."""
    cdef Py_ssize_t s, r0, r1, nr, j0, j, m, skip, qi
    cdef cython.floating thr, v
    cdef const cython.floating* p
    cdef uint32_t mask
    for s in range(nsub):
        memcpy(qsub + s * d, qbase + ids[s] * d, d * sizeof(cython.floating))
        ncand[s] = 0
    r0 = 0
    while r0 < n_r:
        r1 = r0 + RESCAN_TILE
        if r1 > n_r:
            r1 = n_r
        nr = r1 - r0
        gemm_abt(qsub, rbase + r0 * d, <int>nsub, <int>nr, <int>d, buf)
        for s in range(nsub):
            if ncand[s] > cap:
                continue
            thr = _at_least(<cython.floating>0, limits[s])
            skip = ids[s] + self_offset if self_offset >= 0 else -1
            p = buf + s * nr
            j0 = 0
            while j0 < nr and ncand[s] <= cap:
                m = nr - j0 if nr - j0 < FZ_KNN_CHUNK else FZ_KNN_CHUNK
                mask = _row_mask(p + j0, rn_w + r0 + j0, thr, m)
                while mask:
                    j = j0 + fz_lowest_bit(mask)
                    mask &= mask - 1
                    v = rn_w[r0 + j] - (p[j] + p[j])
                    if <double>v <= limits[s] and r0 + j != skip:
                        if ncand[s] == cap:
                            ncand[s] = cap + 1  # too many near-ties: direct scan below
                            break
                        cand[s * cap + ncand[s]] = r0 + j
                        ncand[s] += 1
                j0 += FZ_KNN_CHUNK
        r0 = r1
    for s in range(nsub):
        qi = ids[s]
        if ncand[s] > cap:
            _clear_best(bd, bi, k)
            skip = qi + self_offset if self_offset >= 0 else -1
            _direct_scan(qbase + qi * d, rbase, 0, n_r, d, k, skip, bd, bi)
            _write_answer(bd, bi, k, Dout + qi * k, Iout + qi * k)
        else:
            _rerank(qbase + qi * d, rbase, d, k, cand + s * cap, ncand[s], dist, bd, bi,
                    Dout + qi * k, Iout + qi * k)


cdef struct Pass2Scratch:
    # Per-thread buffers of pass 2 (see _pass2_scratch_new).
    int64_t* cand      # [max(L, cap)]: one query's sorted candidates
    double* cand_v     # [max(L, cap)]: their values, then their exact distances
    double* bd         # [k]
    int64_t* bi        # [k]
    int64_t* ids       # [RESCAN_GROUP]: overflowed queries waiting for _rescan
    double* limits     # [RESCAN_GROUP]
    Py_ssize_t n_ids
    void* qsub         # floating[RESCAN_GROUP d]
    void* buf          # floating[RESCAN_GROUP RESCAN_TILE]
    int64_t* gcand     # [RESCAN_GROUP cap]
    Py_ssize_t* ncand  # [RESCAN_GROUP]
    Py_ssize_t cap


cdef inline Py_ssize_t _rescan_cap(Py_ssize_t L) noexcept nogil:
    return RESCAN_CAP if RESCAN_CAP > 2 * L else 2 * L


cdef bint _pass2_scratch_new(Pass2Scratch* sc, Py_ssize_t k, Py_ssize_t L, Py_ssize_t d,
                             size_t itemsize) noexcept nogil:
    """Allocates every buffer; False (buffers freed) when one could not be allocated."""
    sc.cap = _rescan_cap(L)
    sc.n_ids = 0
    sc.cand = <int64_t*>malloc(sc.cap * sizeof(int64_t))
    sc.cand_v = <double*>malloc(sc.cap * sizeof(double))
    sc.bd = <double*>malloc(k * sizeof(double))
    sc.bi = <int64_t*>malloc(k * sizeof(int64_t))
    sc.ids = <int64_t*>malloc(RESCAN_GROUP * sizeof(int64_t))
    sc.limits = <double*>malloc(RESCAN_GROUP * sizeof(double))
    sc.qsub = malloc(RESCAN_GROUP * d * itemsize)
    sc.buf = malloc(RESCAN_GROUP * RESCAN_TILE * itemsize)
    sc.gcand = <int64_t*>malloc(RESCAN_GROUP * sc.cap * sizeof(int64_t))
    sc.ncand = <Py_ssize_t*>malloc(RESCAN_GROUP * sizeof(Py_ssize_t))
    if (sc.cand == NULL or sc.cand_v == NULL or sc.bd == NULL or sc.bi == NULL
            or sc.ids == NULL or sc.limits == NULL or sc.qsub == NULL or sc.buf == NULL
            or sc.gcand == NULL or sc.ncand == NULL):
        _pass2_scratch_free(sc)
        return False
    return True


cdef void _pass2_scratch_free(Pass2Scratch* sc) noexcept nogil:
    free(sc.cand)
    free(sc.cand_v)
    free(sc.bd)
    free(sc.bi)
    free(sc.ids)
    free(sc.limits)
    free(sc.qsub)
    free(sc.buf)
    free(sc.gcand)
    free(sc.ncand)
    sc.cand = NULL
    sc.cand_v = NULL
    sc.bd = NULL
    sc.bi = NULL
    sc.ids = NULL
    sc.limits = NULL
    sc.qsub = NULL
    sc.buf = NULL
    sc.gcand = NULL
    sc.ncand = NULL


cdef Pass2Scratch* _pass2_scratch_alloc(Py_ssize_t k, Py_ssize_t L, Py_ssize_t d,
                                        size_t itemsize) noexcept nogil:
    """A thread's Pass2Scratch with every buffer (_pass2_scratch_new), or NULL; a pointer
    assigned inside a parallel block is private to its thread."""
    cdef Pass2Scratch* sc = <Pass2Scratch*>malloc(sizeof(Pass2Scratch))
    if sc != NULL and not _pass2_scratch_new(sc, k, L, d, itemsize):
        free(sc)
        sc = NULL
    return sc


cdef void _pass2_scratch_release(Pass2Scratch* sc) noexcept nogil:
    """Frees what _pass2_scratch_alloc made (NULL: nothing)."""
    if sc != NULL:
        _pass2_scratch_free(sc)
        free(sc)


cdef struct Pass1Scratch:
    # A thread's buffers of pass 1 for a block of up to qb queries (_pass1_scratch_alloc).
    void* lv           # floating[qb L]: the lists' values
    int64_t* li        # [qb L]: their references
    void* buf          # floating[qb tile_padded]: a tile of dot products
    float* packed      # [tile_padded d]: the f32 tiles' panels, or the float64 screen's
    #                    rounded rows for BLAS; NULL on BLAS otherwise
    float* rn_tile     # [tile_padded]: the tile's norms, zero past it (f32 tiles only)
    float* thr         # [qb]: the lists' thresholds at the tile's start (f32 tiles only)
    uint32_t* masks    # [qb tile_padded / FZ_F32_NR] (f32 tiles only)
    float* q32         # [qb d]: the float64 screen's queries rounded (else NULL)
    double* lv64       # [L]: the float64 screen's list in double (else NULL)


cdef void _pass1_scratch_release(Pass1Scratch* s) noexcept nogil:
    """Frees what _pass1_scratch_alloc made (NULL: nothing)."""
    if s == NULL:
        return
    free(s.lv)
    free(s.li)
    free(s.buf)
    free(s.packed)
    free(s.rn_tile)
    free(s.thr)
    free(s.masks)
    free(s.q32)
    free(s.lv64)
    free(s)


cdef Pass1Scratch* _pass1_scratch_alloc(Py_ssize_t qb, Py_ssize_t L, Py_ssize_t tile_padded,
                                        Py_ssize_t d, size_t itemsize, bint tiles,
                                        bint screen) noexcept nogil:
    """A thread's pass-1 buffers (Pass1Scratch) for blocks of qb queries, lists of L and
    tiles of tile_padded references, values of itemsize bytes; with ``tiles`` those of the
    f32 tiles, with ``screen`` the float64 screen's (packed also on BLAS, q32, lv64). NULL
    when one could not be allocated."""
    cdef Pass1Scratch* s = <Pass1Scratch*>calloc(1, sizeof(Pass1Scratch))
    if s == NULL:
        return NULL
    s.lv = malloc(qb * L * itemsize)
    s.li = <int64_t*>malloc(qb * L * sizeof(int64_t))
    s.buf = malloc(qb * tile_padded * itemsize)
    if tiles or screen:
        s.packed = <float*>malloc(tile_padded * d * sizeof(float))
    if tiles:
        s.rn_tile = <float*>calloc(tile_padded, sizeof(float))
        s.thr = <float*>malloc(qb * sizeof(float))
        s.masks = <uint32_t*>malloc(qb * (tile_padded // FZ_F32_NR) * sizeof(uint32_t))
    if screen:
        s.q32 = <float*>malloc(qb * d * sizeof(float))
        s.lv64 = <double*>malloc(L * sizeof(double))
    if (s.lv == NULL or s.li == NULL or s.buf == NULL
            or ((tiles or screen) and s.packed == NULL)
            or (tiles and (s.rn_tile == NULL or s.thr == NULL or s.masks == NULL))
            or (screen and (s.q32 == NULL or s.lv64 == NULL))):
        _pass1_scratch_release(s)
        return NULL
    return s


cdef void _pass2_flush(Pass2Scratch* sc, const cython.floating* qbase,
                       Py_ssize_t self_offset, const cython.floating* rbase,
                       const cython.floating* rn_w, Py_ssize_t n_r, Py_ssize_t d, Py_ssize_t k,
                       cython.floating* Dout, int64_t* Iout) noexcept nogil:
    """Rescans the overflowed queries waiting in sc."""
    if sc.n_ids > 0:
        _rescan(qbase, sc.ids, sc.limits, sc.n_ids, self_offset, rbase, rn_w, n_r, d, k,
                sc.cap, <cython.floating*>sc.qsub, <cython.floating*>sc.buf, sc.gcand,
                sc.ncand, sc.cand_v, sc.bd, sc.bi, Dout, Iout)
        sc.n_ids = 0


cdef void _pass2(Pass2Scratch* sc, Py_ssize_t qi, const cython.floating* qbase,
                 Py_ssize_t self_offset, const cython.floating* rbase,
                 const cython.floating* rn_w, Py_ssize_t n_r, Py_ssize_t d, Py_ssize_t k,
                 Py_ssize_t L, double qn, double rmax, double eps, double tiny,
                 const cython.floating* lv, const int64_t* li, Py_ssize_t n_lists,
                 Py_ssize_t stride, cython.floating* Dout, int64_t* Iout) noexcept nogil:
    """Pass 2 for query qi from its n_lists lists (at lv/li + l stride; see
    _pass2_candidates): answered now, or queued for a rescan (the caller flushes the queue
    with _pass2_flush when it is done)."""
    cdef double limit
    cdef Py_ssize_t nc = _pass2_candidates(lv, li, L, n_lists, stride, k, qn, rmax, d, eps,
                                           tiny, 0.0, sc.cand, sc.cand_v, &limit)
    if nc >= 0:
        _rerank(qbase + qi * d, rbase, d, k, sc.cand, nc, sc.cand_v, sc.bd, sc.bi,
                Dout + qi * k, Iout + qi * k)
        return
    sc.ids[sc.n_ids] = qi
    sc.limits[sc.n_ids] = limit
    sc.n_ids += 1
    if sc.n_ids == RESCAN_GROUP:
        _pass2_flush(sc, qbase, self_offset, rbase, rn_w, n_r, d, k, Dout, Iout)


cdef inline void _dtype_limits(cython.floating dummy, double* eps, double* tiny,
                               double* norm_limit) noexcept nogil:
    if cython.floating is float:
        eps[0] = FLT_EPSILON
        tiny[0] = FLT_MIN
        norm_limit[0] = NORM_LIMIT_F32
    else:
        eps[0] = DBL_EPSILON
        tiny[0] = DBL_MIN
        norm_limit[0] = NORM_LIMIT_F64


cdef inline double _norm(const cython.floating* a, Py_ssize_t d) noexcept nogil:
    cdef double s = 0.0
    cdef double x
    cdef Py_ssize_t t
    for t in range(d):
        x = <double>a[t]
        s += x * x
    return s


cdef bint _norms(const cython.floating* X, Py_ssize_t n, Py_ssize_t d, double* out,
                 cython.floating* out_w, double* vmax) noexcept nogil:
    """Squared norms in double (and in the input dtype when out_w); False if not finite."""
    cdef Py_ssize_t i
    if n < NORMS_PARALLEL_MIN:  # a parallel region costs more than a few norms
        for i in range(n):
            out[i] = _norm(X + i * d, d)
            if out_w != NULL:
                out_w[i] = <cython.floating>out[i]
    else:
        for i in prange(n, schedule="static"):
            out[i] = _norm(X + i * d, d)
            if out_w != NULL:
                out_w[i] = <cython.floating>out[i]
    return _largest_norm(out, n, vmax)


cdef bint _largest_norm(const double* norms, Py_ssize_t n, double* vmax) noexcept nogil:
    """vmax = the largest of n norms; False if one is not finite."""
    cdef Py_ssize_t i
    cdef double m = 0.0
    for i in range(n):
        if not (norms[i] <= m):  # larger, or NaN: either ends the search if not finite
            m = norms[i]         # (a NaN met later would be replaced by the next finite norm)
            if not (m < INFINITY):
                break
    vmax[0] = m
    return m < INFINITY


cdef inline Py_ssize_t _dot_tile(const cython.floating* a, Py_ssize_t na,
                                 const cython.floating* b, const double* b64, Py_ssize_t nb,
                                 Py_ssize_t d, bint tiles, float* packed, const float* rn,
                                 const float* thr, uint32_t* masks,
                                 cython.floating* out) noexcept nogil:
    """out = a[na, d] @ b[nb, d]^T, pass 1's tile of dot products: by the f32 tiles
    (float32 with ``tiles``; ``packed``: room for nb rows rounded up to whole panels; with
    ``masks`` also their masks against rn / thr, see knn_f32_tiles.h) or one BLAS gemm.
    ``b64`` (float32 only, b then unused): float64 rows, rounded to float32 as the tiles
    pack them, or into ``packed`` (nb d floats) for the gemm. Returns the row stride of out
    (nb, or nb rounded up to whole panels)."""
    cdef Py_ssize_t n_panels, c
    if cython.floating is float:
        if tiles:
            n_panels = (nb + FZ_F32_NR - 1) // FZ_F32_NR
            if b64 != NULL:
                fz_f32_pack_panels_rounded(_F32_TILES, b64, nb, d, packed)
            else:
                fz_f32_pack_panels(_F32_TILES, b, nb, d, NULL, packed)
            fz_f32_tile(_F32_TILES, a, na, d, packed, nb, out,
                        n_panels * FZ_F32_NR, rn, thr, masks)
            return n_panels * FZ_F32_NR
        if b64 != NULL:
            for c in range(nb * d):
                packed[c] = <float>b64[c]
            b = packed
    gemm_abt(a, b, <int>na, <int>nb, <int>d, out)
    return nb


cdef void _pass1_block(const cython.floating* a, Py_ssize_t q0, Py_ssize_t nq,
                       const cython.floating* rbase, const double* rbase64,
                       const cython.floating* rn_w, Py_ssize_t n_r, Py_ssize_t d, Py_ssize_t L,
                       Py_ssize_t self_offset, Py_ssize_t tile, bint tiles,
                       Pass1Scratch* s) noexcept nogil:
    """Pass 1 of queries q0..q0+nq-1 (rows a[nq, d]): their lists s.lv / s.li (L entries
    each) against every reference tile of at most ``tile`` rows, the products by the f32
    tiles (``tiles``, float32 only) or BLAS; scratch ``s`` (Pass1Scratch). ``rbase64``
    (float32 only, rbase then unused): the reference as float64 rows, each tile rounded to
    float32 on its way to the products."""
    cdef Py_ssize_t r0, r1, nr, row, qi, c, skip, ldc
    cdef cython.floating* lv = <cython.floating*>s.lv
    cdef int64_t* li = s.li
    cdef cython.floating* buf = <cython.floating*>s.buf
    cdef float* thr = s.thr
    cdef uint32_t* masks = s.masks
    for c in range(nq * L):
        lv[c] = INFINITY
        li[c] = -1
    # The first tile only as long as a list, in whole panels: the lists start empty, so
    # every candidate of the first tile is tested against them one by one (a full tile of
    # a few thousand references, where the queries are few, cost more than its products).
    # After it the f32 tiles' masks filter by the lists' thresholds as they were when the
    # tile began: after r0 references about L / r0 of the next tile's candidates pass
    # them, so the tiles grow with r0 (each as long as all before it) up to ``tile``, and
    # each tests about L candidates one by one per query.
    nr = (L + FZ_F32_NR - 1) // FZ_F32_NR * FZ_F32_NR
    r0 = 0
    while r0 < n_r:
        if r0 > 0:
            nr = r0 if cython.floating is float and tiles else tile
        if nr > tile:
            nr = tile
        r1 = r0 + nr
        if r1 > n_r:
            r1 = n_r
        nr = r1 - r0
        # the f32 tiles' masks are taken against each list's threshold now
        if cython.floating is float and tiles:
            for row in range(nq):
                thr[row] = lv[row * L]
            memcpy(s.rn_tile, rn_w + r0, nr * sizeof(float))
        ldc = _dot_tile(a, nq, rbase + r0 * d if rbase64 == NULL else rbase,
                        rbase64 + r0 * d if rbase64 != NULL else NULL, nr, d, tiles, s.packed,
                        s.rn_tile, thr, masks, buf)
        for row in range(nq):
            qi = q0 + row
            skip = qi + self_offset if self_offset >= 0 else -1
            if cython.floating is float:
                if tiles:
                    _scan_row_masked(buf + row * ldc, masks + row * (ldc // FZ_F32_NR),
                                     rn_w + r0, nr, r0, skip, lv + row * L, li + row * L, L)
                    continue
            _scan_row(buf + row * ldc, rn_w + r0, nr, r0, skip, lv + row * L, li + row * L,
                      L)
        r0 = r1


cdef void _gemm_block(const cython.floating* qbase, const cython.floating* rbase,
                      const double* qn, const cython.floating* rn_w, double rmax,
                      Py_ssize_t q0, Py_ssize_t q1, Py_ssize_t n_r, Py_ssize_t d,
                      Py_ssize_t k, Py_ssize_t self_offset, Py_ssize_t tile, bint tiles,
                      Pass1Scratch* s, Pass2Scratch* sc, cython.floating* Dout,
                      int64_t* Iout) noexcept nogil:
    """The k best of queries q0..q1-1, written to rows q0..q1-1 of Dout / Iout (pass 1:
    see _pass1_block)."""
    cdef Py_ssize_t L = _list_len(k, d)
    cdef Py_ssize_t row
    cdef double eps, tiny, limit
    cdef const cython.floating* lv = <cython.floating*>s.lv
    cdef const int64_t* li = s.li
    _dtype_limits(<cython.floating>0, &eps, &tiny, &limit)
    _pass1_block(qbase + q0 * d, q0, q1 - q0, rbase, NULL, rn_w, n_r, d, L, self_offset, tile,
                 tiles, s)
    for row in range(q1 - q0):
        _pass2(sc, q0 + row, qbase, self_offset, rbase, rn_w, n_r, d, k, L, qn[q0 + row], rmax,
               eps, tiny, lv + row * L, li + row * L, 1, 0, Dout, Iout)
    _pass2_flush(sc, qbase, self_offset, rbase, rn_w, n_r, d, k, Dout, Iout)


cdef void _query_blocks(Py_ssize_t n_q, Py_ssize_t n_r, Py_ssize_t L, size_t itemsize,
                        int n_threads, Py_ssize_t* qb_out, Py_ssize_t* tile_out) noexcept nogil:
    """The query-block path's block size (queries) and reference tile (rows) for dot
    products and lists of ``itemsize`` bytes."""
    cdef Py_ssize_t qb, n_blocks, per_block, tile
    qb = LIST_BYTES // (L * (itemsize + sizeof(int64_t)))
    if qb > QUERY_BLOCK_GEMM:
        qb = QUERY_BLOCK_GEMM
    n_blocks = n_q // (n_threads * BLOCK_MIN_QUERIES)
    if n_blocks > BLOCKS_PER_THREAD:
        n_blocks = BLOCKS_PER_THREAD
    if n_blocks < 1:
        n_blocks = 1
    n_blocks = n_blocks * n_threads
    per_block = (n_q + n_blocks - 1) // n_blocks
    if per_block < 8:  # at least 8 queries for the gemm
        per_block = 8
    if qb > per_block:
        qb = per_block
    if qb < 1:
        qb = 1
    # Reference tiles fill GEMM_TILE_ELEMS dot products (float64: half as many).
    tile = GEMM_TILE_ELEMS // qb
    if itemsize == sizeof(double):
        tile = (tile + 1) // 2
    if tile > n_r:  # the per-thread buffers: no larger than the reference needs
        tile = n_r
    qb_out[0] = qb
    tile_out[0] = tile


cdef int _knn_twopass_impl(const cython.floating[:, ::1] queries,
                        const cython.floating[:, ::1] reference,
                        Py_ssize_t k, Py_ssize_t self_offset,
                        const cython.floating* rn_cached, double rmax_cached,
                        cython.floating[:, ::1] D, int64_t[:, ::1] I) noexcept:
    """Fills D and I; returns 0, -1 when a buffer could not be allocated, or 1 when the norms
    are too large for the gemm (nothing written: use the direct kernel). ``rn_cached``: the
    reference norms in the input dtype from reference_norms (their largest, in double,
    ``rmax_cached``), or NULL to compute them here. Few queries take the split path
    (knn_split.pxi), the others run query blocks in parallel."""
    cdef Py_ssize_t n_q = queries.shape[0]
    cdef Py_ssize_t d = queries.shape[1]
    cdef Py_ssize_t n_r = reference.shape[0]
    cdef Py_ssize_t L = _list_len(k, d)
    cdef Py_ssize_t tile
    cdef Py_ssize_t qb, n_blocks, b, q0, q1
    cdef double qmax, rmax, eps, tiny, limit
    cdef double* qn = NULL
    cdef double* rn64 = NULL
    cdef cython.floating* rn_own = NULL
    cdef const cython.floating* rn_w = rn_cached
    cdef Py_ssize_t tile_padded
    cdef bint tiles
    cdef Pass1Scratch* s1
    cdef Pass2Scratch* sc
    cdef const cython.floating* qbase
    cdef const cython.floating* rbase
    cdef int failed = 0
    cdef int* failed_p = &failed
    cdef int rc = 0
    cdef int n_threads = omp_get_max_threads()

    if n_q == 0 or k <= 0:
        return 0
    _dtype_limits(<cython.floating>0, &eps, &tiny, &limit)
    qbase = &queries[0, 0]
    rbase = &reference[0, 0]
    qn = <double*>malloc(n_q * sizeof(double))
    if rn_cached == NULL:
        rn64 = <double*>malloc(n_r * sizeof(double))
        rn_own = <cython.floating*>malloc(n_r * sizeof(cython.floating))
        rn_w = rn_own
    if qn == NULL or (rn_cached == NULL and (rn64 == NULL or rn_own == NULL)):
        rc = -1
    else:
        with nogil:
            if rn_cached == NULL:
                if not _norms(rbase, n_r, d, rn64, rn_own, &rmax):
                    rc = 1
            else:
                rmax = rmax_cached
            if rc == 0 and not (_norms(qbase, n_q, d, qn, <cython.floating*>NULL, &qmax)
                                and qmax + rmax <= limit):
                rc = 1
    if rc == 0 and _use_split(n_q, n_r, L, n_threads):
        with nogil:
            rc = _knn_split(qbase, n_q, rbase, n_r, d, k, self_offset, qn, rn_w, rmax,
                            n_threads, &D[0, 0], &I[0, 0])
    elif rc == 0:
        _query_blocks(n_q, n_r, L, sizeof(cython.floating), n_threads, &qb, &tile)
        tiles = cython.floating is float and _f32_tiles_for(d)
        tile_padded = (tile + FZ_F32_NR - 1) // FZ_F32_NR * FZ_F32_NR if tiles else tile
        n_blocks = (n_q + qb - 1) // qb
        n_threads = team_size(n_threads, n_blocks)
        s1 = NULL
        sc = NULL
        with nogil, parallel(num_threads=n_threads):
            s1 = _pass1_scratch_alloc(qb, L, tile_padded, d, sizeof(cython.floating), tiles, 0)
            sc = _pass2_scratch_alloc(k, L, d, sizeof(cython.floating))
            for b in prange(n_blocks, schedule="dynamic"):
                if s1 == NULL or sc == NULL:
                    failed_p[0] = 1
                    continue
                q0 = b * qb
                q1 = q0 + qb
                if q1 > n_q:
                    q1 = n_q
                _gemm_block(qbase, rbase, qn, rn_w, rmax, q0, q1, n_r, d, k, self_offset,
                            tile, tiles, s1, sc, &D[0, 0], &I[0, 0])
            _pass1_scratch_release(s1)
            _pass2_scratch_release(sc)
        if failed:
            rc = -1
    free(qn)
    free(rn64)
    free(rn_own)
    return rc


def _rounded_rows_impl(const double[:, ::1] X, float[:, ::1] out, float[::1] rn_w):
    """out = fl32(X) and rn_w its reference norms (_norms of out, row by row as each is
    written); returns their largest in double, or None when one is not finite."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], i, t
    cdef double rmax
    cdef bint ok
    rn64 = np.empty(n, dtype=np.float64)
    cdef double[::1] rn = rn64
    if n == 0:
        return 0.0
    with nogil:
        for i in prange(n, schedule="static"):
            for t in range(d):
                out[i, t] = <float>X[i, t]  # beyond float32's range: inf (refused below)
            rn[i] = _norm(&out[i, 0], d)
            rn_w[i] = <float>rn[i]
        ok = _largest_norm(&rn[0], n, &rmax)
    return rmax if ok else None


def _reference_norms_typed(const cython.floating[:, ::1] reference,
                           cython.floating[::1] rn_w):
    """Fills rn_w (the reference norms in the input dtype); returns their largest in double,
    or None when one is not finite."""
    cdef double rmax
    cdef bint ok
    cdef Py_ssize_t n_r = reference.shape[0]
    rn64 = np.empty(n_r, dtype=np.float64)
    cdef double[::1] rn = rn64
    if n_r == 0:
        return 0.0
    with nogil:
        ok = _norms(&reference[0, 0], n_r, reference.shape[1], &rn[0], &rn_w[0], &rmax)
    return rmax if ok else None
