# The BF16 screen of float32 kNN (part of knn_cpu.pyx, included after knn_twopass.pxi; the
# certificate and the exact re-rank around it are fastzsl/backends/_knn_bf16.py). Pass 1 of
# the two-pass kernel on bfloat16-rounded rows: BF16 dot-product tiles (knn_bf16.h) scanned
# into lists of the L smallest v'_j = R'_j - 2 P'_j (_scan_row_reservoir), R'_j the
# rounded row's squared norm. Nothing here decides an answer: the caller certifies each
# query's list and re-ranks it exactly.

cdef extern from "knn_bf16.h" nogil:
    enum:
        FZ_BF16_NR
        FZ_BF16_MR
    void fz_bf16_round(const float* x, Py_ssize_t d, uint32_t* words, float* rounded)
    void fz_bf16_pack_panel(const float* x, Py_ssize_t n, Py_ssize_t d, Py_ssize_t p,
                            uint32_t* row, float* rounded, uint32_t* packed, double* stats)
    void fz_bf16_row_stats(const float* x, const float* xr, Py_ssize_t d, double* rounded_sq,
                           double* error, double* sq)
    void fz_bf16_tile(int hw, const uint32_t* A, Py_ssize_t na, const uint32_t* B,
                      Py_ssize_t n_panels, Py_ssize_t dp2, float* C, Py_ssize_t ldc,
                      const float* rn, const float* thr, uint32_t* masks)
    int fz_bf16_hw_available()

cdef enum:
    # Query blocks of BF16_QUERY_BLOCK rows (a multiple of FZ_BF16_MR) against reference
    # tiles of BF16_TILE rows (a multiple of FZ_BF16_NR): a 1 MiB float32 tile of dot
    # products per thread; the tile's packed rows (BF16_TILE x d x 2 bytes) stay in L2.
    BF16_QUERY_BLOCK = 1020
    BF16_TILE = 256


def bf16_hw_available():
    """Whether this CPU runs the AVX512_BF16 tiles (else only the portable emulation)."""
    return bool(fz_bf16_hw_available())


def bf16_row_stats(const float[:, ::1] X):
    """Per row of X, in double: (||x'||^2, ||x - x'||, ||x||^2) with x' the row rounded to
    bfloat16 as the screen rounds it; shape (3, n)."""
    cdef Py_ssize_t n = X.shape[0]
    cdef Py_ssize_t d = X.shape[1]
    cdef Py_ssize_t dp2 = (d + 1) // 2
    out = np.empty((3, n), dtype=np.float64)
    cdef double[:, ::1] o = out
    cdef Py_ssize_t i
    cdef uint32_t* words = NULL
    cdef float* rounded = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed
    if n == 0:
        return out
    with nogil, parallel():
        words = <uint32_t*>malloc((dp2 + 1) * sizeof(uint32_t))
        rounded = <float*>malloc((d + 1) * sizeof(float))
        for i in prange(n, schedule="static"):
            if words == NULL or rounded == NULL:
                failed_p[0] = 1
                continue
            fz_bf16_round(&X[i, 0], d, words, rounded)
            fz_bf16_row_stats(&X[i, 0], rounded, d, &o[0, i], &o[1, i], &o[2, i])
        free(words)
        free(rounded)
    if failed:
        raise MemoryError("knn_cpu.bf16_row_stats: could not allocate the per-thread buffers")
    return out


def bf16_pack(const float[:, ::1] reference):
    """The reference rounded to bfloat16 and packed in panels for the screen's tiles
    (uint32 words; knn_bf16.h), and its rows' ``bf16_row_stats``, in one pass."""
    cdef Py_ssize_t n = reference.shape[0]
    cdef Py_ssize_t d = reference.shape[1]
    cdef Py_ssize_t dp2 = (d + 1) // 2
    cdef Py_ssize_t n_panels = (n + FZ_BF16_NR - 1) // FZ_BF16_NR
    packed = np.empty(max(n_panels, 1) * dp2 * FZ_BF16_NR, dtype=np.uint32)
    stats = np.empty((3, n), dtype=np.float64)
    cdef uint32_t[::1] pk = packed
    cdef double[:, ::1] st = stats
    cdef Py_ssize_t p
    cdef uint32_t* row = NULL
    cdef float* rounded = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed
    if n == 0 or dp2 == 0:
        return packed, stats
    with nogil, parallel():
        row = <uint32_t*>malloc(dp2 * sizeof(uint32_t))
        rounded = <float*>malloc(d * sizeof(float))
        for p in prange(n_panels, schedule="static"):
            if row == NULL or rounded == NULL:
                failed_p[0] = 1
                continue
            fz_bf16_pack_panel(&reference[0, 0], n, d, p, row, rounded, &pk[0], &st[0, 0])
        free(row)
        free(rounded)
    if failed:
        raise MemoryError("knn_cpu.bf16_pack: could not allocate the per-thread buffers")
    return packed, stats


cdef inline void _sift_down(float* hv, int64_t* hi, Py_ssize_t n, Py_ssize_t pos, float v,
                            int64_t j) noexcept nogil:
    """Places (v, j) at ``pos`` of the max-heap hv[0..n-1] and sifts it down."""
    cdef Py_ssize_t child
    while True:
        child = 2 * pos + 1
        if child >= n:
            break
        if child + 1 < n and hv[child + 1] > hv[child]:
            child += 1
        if not hv[child] > v:
            break
        hv[pos] = hv[child]
        hi[pos] = hi[child]
        pos = child
    hv[pos] = v
    hi[pos] = j


cdef void _select_smallest(float* v, int64_t* ix, Py_ssize_t n, Py_ssize_t m) noexcept nogil:
    """Reorders the n pairs so that v[m - 1] is the m-th smallest value, none before it
    larger and none after it smaller (Wirth's selection)."""
    cdef Py_ssize_t lo = 0
    cdef Py_ssize_t hi = n - 1
    cdef Py_ssize_t a, b
    cdef float x, tv
    cdef int64_t ti
    while lo < hi:
        x = v[m - 1]
        a = lo
        b = hi
        while True:
            while v[a] < x:
                a += 1
            while x < v[b]:
                b -= 1
            if a <= b:
                tv = v[a]
                v[a] = v[b]
                v[b] = tv
                ti = ix[a]
                ix[a] = ix[b]
                ix[b] = ti
                a += 1
                b -= 1
            if a > b:
                break
        if b < m - 1:
            lo = a
        if m - 1 < a:
            hi = b


cdef inline void _reservoir_take(float v, int64_t j, float* rv, int64_t* ri, Py_ssize_t L,
                                 Py_ssize_t* c, float* thr) noexcept nogil:
    """Appends (v, j) to a reservoir of 2 L; a full one keeps its L smallest and ``thr``
    becomes their largest. So, as in a list, a row left out has v at least the final
    list's largest, at O(1) a row instead of a sorted list's O(L) shifts."""
    rv[c[0]] = v
    ri[c[0]] = j
    c[0] += 1
    if c[0] == 2 * L:
        _select_smallest(rv, ri, c[0], L)
        c[0] = L
        thr[0] = rv[L - 1]


cdef void _scan_row_reservoir(const float* p, const uint32_t* masks, const float* rn,
                              Py_ssize_t n, Py_ssize_t first, Py_ssize_t skip, float* rv,
                              int64_t* ri, Py_ssize_t L, Py_ssize_t* count,
                              float* last) noexcept nogil:
    """_scan_row for the screen's longer lists (the certificate's window), from the tile's
    masks (one per panel of 32 rows, taken against ``last`` when the tile started): rows
    with v below ``last`` go to the query's reservoir (_reservoir_take)."""
    cdef float thr = last[0]
    cdef float v
    cdef Py_ssize_t c = count[0]
    cdef Py_ssize_t pnl, j
    cdef Py_ssize_t n_panels = (n + FZ_BF16_NR - 1) // FZ_BF16_NR
    cdef uint32_t mask
    for pnl in range(n_panels):
        mask = masks[pnl]
        if (pnl + 1) * FZ_BF16_NR > n:  # the rows past the tile's end
            mask &= (<uint32_t>1 << (n - pnl * FZ_BF16_NR)) - 1
        while mask:
            j = pnl * FZ_BF16_NR + fz_lowest_bit(mask)
            mask &= mask - 1
            v = rn[j] - (p[j] + p[j])
            if v < thr and first + j != skip:
                _reservoir_take(v, first + j, rv, ri, L, &c, &thr)
    count[0] = c
    last[0] = thr


cdef void _reservoir_to_list(float* rv, int64_t* ri, Py_ssize_t c, Py_ssize_t L,
                             float* lv, int64_t* li) noexcept nogil:
    """The reservoir's L smallest as a list: largest first, (+inf, -1) in front where it
    holds fewer (heapsort of the kept ones, then reversed into place)."""
    cdef Py_ssize_t t, end, kept
    cdef float v
    cdef int64_t j
    if c > L:
        _select_smallest(rv, ri, c, L)
    kept = c if c < L else L
    for t in range(kept // 2 - 1, -1, -1):  # max-heap of the kept entries
        _sift_down(rv, ri, kept, t, rv[t], ri[t])
    end = kept - 1
    while end > 0:  # heapsort: ascending
        v = rv[end]
        j = ri[end]
        rv[end] = rv[0]
        ri[end] = ri[0]
        _sift_down(rv, ri, end, 0, v, j)
        end -= 1
    for t in range(L - kept):
        lv[t] = INFINITY
        li[t] = -1
    for t in range(kept):
        lv[L - 1 - t] = rv[t]
        li[L - 1 - t] = ri[t]


cdef void _bf16_block(const float* qbase, Py_ssize_t q0, Py_ssize_t q1, Py_ssize_t d,
                      const uint32_t* packed, const float* rn, Py_ssize_t n_r,
                      Py_ssize_t L, Py_ssize_t self_offset, int hw, uint32_t* A, float* buf,
                      float* rv, int64_t* ri, Py_ssize_t* counts, float* lasts,
                      float* rn_tile, uint32_t* masks, float* Vout,
                      int64_t* Iout) noexcept nogil:
    """Pass 1 of queries q0..q1-1 against every reference tile: their lists in rows q0..q1-1
    of Vout/Iout (L each, largest first, (+inf, -1) where empty). Scratch: reservoirs
    rv/ri of 2 L per query, counts and lasts of one per query (rounded up to micro-tiles),
    rn_tile of BF16_TILE, masks of one per query and panel of a tile."""
    cdef Py_ssize_t dp2 = (d + 1) // 2
    cdef Py_ssize_t nq = q1 - q0
    cdef Py_ssize_t na = (nq + FZ_BF16_MR - 1) // FZ_BF16_MR * FZ_BF16_MR
    cdef Py_ssize_t row, r0, nr, skip, c
    cdef Py_ssize_t n_panels
    for row in range(nq):
        fz_bf16_round(qbase + (q0 + row) * d, d, A + row * dp2, NULL)
        counts[row] = 0
        lasts[row] = INFINITY
    for row in range(nq, na):  # the micro-tiles' padding rows
        lasts[row] = INFINITY
    for c in range((na - nq) * dp2):
        A[nq * dp2 + c] = 0
    r0 = 0
    while r0 < n_r:
        nr = n_r - r0 if n_r - r0 < BF16_TILE else BF16_TILE
        n_panels = (nr + FZ_BF16_NR - 1) // FZ_BF16_NR
        memcpy(rn_tile, rn + r0, nr * sizeof(float))  # whole panels: the masks drop the rest
        fz_bf16_tile(hw, A, na, packed + r0 * dp2, n_panels, dp2, buf, BF16_TILE, rn_tile,
                     lasts, masks)
        for row in range(nq):
            skip = q0 + row + self_offset if self_offset >= 0 else -1
            _scan_row_reservoir(buf + row * BF16_TILE, masks + row * n_panels, rn + r0, nr,
                                r0, skip, rv + row * 2 * L, ri + row * 2 * L, L,
                                &counts[row], &lasts[row])
        r0 += nr
    for row in range(nq):
        _reservoir_to_list(rv + row * 2 * L, ri + row * 2 * L, counts[row], L,
                           Vout + (q0 + row) * L, Iout + (q0 + row) * L)


def bf16_screen(const float[:, ::1] queries, const uint32_t[::1] packed,
                const float[::1] rn, Py_ssize_t L, Py_ssize_t self_offset, bint hw):
    """Each query's L smallest (v'_j, j) over the n_r = len(rn) packed reference rows
    (``bf16_pack``), leaving out row i + self_offset when self_offset >= 0: (V float32,
    I int64), shape (n_q, L), each row largest first, (+inf, -1) where fewer rows exist.
    ``rn``: R'_j, the rounded rows' squared norms (double sums rounded to float32).
    ``hw``: the AVX512_BF16 tiles (only where ``bf16_hw_available()``), else the emulation."""
    cdef Py_ssize_t n_q = queries.shape[0]
    cdef Py_ssize_t d = queries.shape[1]
    cdef Py_ssize_t n_r = rn.shape[0]
    cdef Py_ssize_t dp2 = (d + 1) // 2
    cdef Py_ssize_t n_blocks = (n_q + BF16_QUERY_BLOCK - 1) // BF16_QUERY_BLOCK
    cdef Py_ssize_t qb = BF16_QUERY_BLOCK
    cdef Py_ssize_t b, q0, q1
    cdef int use_hw = 1 if hw else 0
    cdef int n_threads = omp_get_max_threads()
    cdef uint32_t* A
    cdef float* buf
    cdef float* rv
    cdef int64_t* ri
    cdef Py_ssize_t* counts
    cdef float* lasts
    cdef float* rn_tile
    cdef uint32_t* masks
    cdef int failed = 0
    cdef int* failed_p = &failed
    if hw and not fz_bf16_hw_available():
        raise RuntimeError("knn_cpu.bf16_screen: this CPU has no AVX512_BF16")
    if packed.shape[0] < ((n_r + FZ_BF16_NR - 1) // FZ_BF16_NR) * dp2 * FZ_BF16_NR:
        raise ValueError("knn_cpu.bf16_screen: packed holds fewer rows than rn")
    V = np.full((n_q, L), np.inf, dtype=np.float32)
    I = np.full((n_q, L), -1, dtype=np.int64)
    cdef float[:, ::1] Vv = V
    cdef int64_t[:, ::1] Iv = I
    if n_q == 0 or n_r == 0 or L <= 0 or d == 0:
        return V, I
    # Blocks of at most BF16_QUERY_BLOCK queries (a multiple of MR), fewer where a thread's
    # lists would pass LIST_BYTES (long lists), as many per thread (5,000 queries on 2
    # threads in blocks of 1,020 would leave one thread 3 blocks, the other 2).
    if qb * 2 * L * (sizeof(float) + sizeof(int64_t)) > LIST_BYTES:
        qb = LIST_BYTES // (2 * L * (sizeof(float) + sizeof(int64_t)))
        qb = qb // FZ_BF16_MR * FZ_BF16_MR if qb >= FZ_BF16_MR else FZ_BF16_MR
    n_blocks = (n_q + n_threads * qb - 1) // (n_threads * qb) * n_threads
    qb = (n_q + n_blocks - 1) // n_blocks
    qb = (qb + FZ_BF16_MR - 1) // FZ_BF16_MR * FZ_BF16_MR
    n_blocks = (n_q + qb - 1) // qb
    n_threads = team_size(n_threads, n_blocks)
    with nogil, parallel(num_threads=n_threads):
        A = <uint32_t*>malloc(qb * dp2 * sizeof(uint32_t))
        buf = <float*>malloc(qb * BF16_TILE * sizeof(float))
        rv = <float*>malloc(qb * 2 * L * sizeof(float))
        ri = <int64_t*>malloc(qb * 2 * L * sizeof(int64_t))
        counts = <Py_ssize_t*>malloc(qb * sizeof(Py_ssize_t))
        lasts = <float*>malloc(qb * sizeof(float))
        rn_tile = <float*>calloc(BF16_TILE, sizeof(float))
        masks = <uint32_t*>malloc(qb * (BF16_TILE // FZ_BF16_NR) * sizeof(uint32_t))
        for b in prange(n_blocks, schedule="dynamic"):
            if (A == NULL or buf == NULL or rv == NULL or ri == NULL or counts == NULL
                    or lasts == NULL or rn_tile == NULL or masks == NULL):
                failed_p[0] = 1
                continue
            q0 = b * qb
            q1 = q0 + qb if q0 + qb < n_q else n_q
            _bf16_block(&queries[0, 0], q0, q1, d, &packed[0], &rn[0], n_r, L,
                        self_offset, use_hw, A, buf, rv, ri, counts, lasts, rn_tile, masks,
                        &Vv[0, 0], &Iv[0, 0])
        free(A)
        free(buf)
        free(rv)
        free(ri)
        free(counts)
        free(lasts)
        free(rn_tile)
        free(masks)
    if failed:
        raise MemoryError("knn_cpu.bf16_screen: could not allocate the per-thread buffers")
    return V, I
