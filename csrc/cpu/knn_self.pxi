# The self-join (part of knn_cpu.pyx, included there after knn_twopass.pxi, whose pass-1
# scans, pass 2 and norms it runs on pairs of row blocks; the module docstring describes the
# schedule). ``SelfJoin`` runs it in pieces, a pair of row ranges at a time, so that only
# those ranges' candidate lists need to be in memory (fastzsl.fit_file keeps the rest on
# disk); ``knn_self`` is the whole join in one piece.

cdef enum:
    # Square tiles of SELF_BLOCK x SELF_BLOCK rows.
    SELF_BLOCK = 256

# knn_self keeps a list of k + LIST_EXTRA candidates for each of the n points at once (336 MB
# for 1M points, k = 20, float32); above this many bytes it declines (returns None) and the
# caller searches in query chunks with knn instead, which needs memory only per thread.
SELF_JOIN_MAX_BYTES = 512 * 2**20


# The block pairs of a pass, in rounds whose pairs share no block, are computed rather than
# listed (7.6M pairs for one range of 1M rows). Two ranges of n_a and n_b blocks: a cyclic
# shift per round. One range against itself: round 0 is the diagonal, then the circle
# method (block 0 fixed, the others rotating), with a dummy block m - 1 when n_a is odd.
# (Values, not pointers: inside a prange Cython makes private only what is assigned.)

cdef inline Py_ssize_t _n_rounds(bint same, Py_ssize_t n_a, Py_ssize_t n_b) noexcept nogil:
    if same:
        return n_a + n_a % 2  # the diagonal, then n_a - 1 (n_a when odd) rotations
    return n_a if n_a > n_b else n_b


cdef inline Py_ssize_t _n_pairs(bint same, Py_ssize_t n_a, Py_ssize_t n_b,
                                Py_ssize_t r) noexcept nogil:
    """Pairs in round r (in a circle round, the dummy block's among them)."""
    if same:
        return n_a if r == 0 else (n_a + n_a % 2) // 2
    return n_b if n_a > n_b else n_a


cdef inline Py_ssize_t _circle(Py_ssize_t m, Py_ssize_t r, Py_ssize_t i) noexcept nogil:
    """The block at position i of circle-method round r >= 1 of m blocks."""
    return 0 if i == 0 else 1 + (r - 2 + i) % (m - 1)


cdef int _pair_rounds_pass1(const cython.floating* X, Py_ssize_t d,
                            const cython.floating* rn_w, Py_ssize_t a_start,
                            Py_ssize_t a_stop, Py_ssize_t b_start, Py_ssize_t b_stop,
                            Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t L,
                            cython.floating* lv_a, int64_t* li_a,
                            cython.floating* lv_b, int64_t* li_b) noexcept nogil:
    """Pass 1 over rounds r0..r1-1 of the block pairs between rows a_start..a_stop-1 (a
    tile's rows; their lists lv_a / li_a start at row a_start) and b_start..b_stop-1 (its
    columns; lists lv_b / li_b). For one range against itself lv_b is lv_a, the pairs have
    a <= b, and a diagonal tile serves both ways from its rows. The pairs of a round share
    no block, so they run in parallel with one list per point; rounds are separated by the
    barrier that ends each prange. Returns 0, or -1 when a buffer could not be allocated."""
    cdef bint same = a_start == b_start
    cdef Py_ssize_t n_a = (a_stop - a_start + SELF_BLOCK - 1) // SELF_BLOCK
    cdef Py_ssize_t n_b = (b_stop - b_start + SELF_BLOCK - 1) // SELF_BLOCK
    cdef Py_ssize_t m = n_a + n_a % 2
    cdef Py_ssize_t r, p, block_a, block_b, a0, b0, na, nb, i, q, ldb
    cdef cython.floating* buf = NULL
    cdef float* packed = NULL
    cdef bint tiles = cython.floating is float and _f32_tiles_for(d)
    cdef cython.floating* lim = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed
    r = r0  # (the parallel block copies it in)
    with parallel():
        buf = <cython.floating*>malloc(SELF_BLOCK * SELF_BLOCK * sizeof(cython.floating))
        lim = <cython.floating*>malloc(SELF_BLOCK * sizeof(cython.floating))
        # SELF_BLOCK is whole panels of the f32 tiles
        packed = <float*>malloc(SELF_BLOCK * d * sizeof(float)) if tiles else NULL
        for r in range(r0, r1):
            for p in prange(_n_pairs(same, n_a, n_b, r), schedule="dynamic"):
                if buf == NULL or lim == NULL or (tiles and packed == NULL):
                    failed_p[0] = 1
                    continue
                if not same:
                    block_a = p if n_a <= n_b else (p + r) % n_a
                    block_b = (p + r) % n_b if n_a <= n_b else p
                elif r == 0:
                    block_a = p
                    block_b = p
                else:
                    block_a = _circle(m, r, p)
                    block_b = _circle(m, r, m - 1 - p)
                    if block_a > block_b:
                        block_a, block_b = block_b, block_a
                    if block_b >= n_a:  # the dummy block's pair
                        continue
                a0 = a_start + block_a * SELF_BLOCK
                b0 = b_start + block_b * SELF_BLOCK
                na = a_stop - a0
                if na > SELF_BLOCK:
                    na = SELF_BLOCK
                nb = b_stop - b0
                if nb > SELF_BLOCK:
                    nb = SELF_BLOCK
                ldb = _dot_tile(X + a0 * d, na, X + b0 * d, NULL, nb, d, tiles, packed, NULL,
                                NULL, NULL, buf)
                # Rows: block a's points against block b.
                for i in range(na):
                    q = a0 + i
                    _scan_row(buf + i * ldb, rn_w + b0, nb, b0, q, lv_a + (q - a_start) * L,
                              li_a + (q - a_start) * L, L)
                if a0 != b0:  # columns: block b's points against block a
                    _scan_columns(buf, na, nb, ldb, a0, 0, rn_w, lv_b + (b0 - b_start) * L,
                                  li_b + (b0 - b_start) * L, L, lim)
        free(buf)
        free(lim)
        free(packed)
    return -1 if failed else 0


cdef int _self_finish(const cython.floating* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                      const double* qn, const cython.floating* rn_w, double rmax,
                      Py_ssize_t L, const cython.floating* lv, const int64_t* li,
                      Py_ssize_t row0, Py_ssize_t n_rows,
                      cython.floating* Dout, int64_t* Iout) noexcept nogil:
    """Pass 2 of the self-join for rows row0 .. row0 + n_rows - 1, each from its list (lv /
    li start at row row0), into Dout / Iout of n_rows rows (the rows are queries offset by
    row0 into X itself)."""
    cdef Py_ssize_t q
    cdef double eps, tiny, limit
    cdef Pass2Scratch* sc = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed
    _dtype_limits(<cython.floating>0, &eps, &tiny, &limit)
    with parallel():
        sc = _pass2_scratch_alloc(k, L, d, sizeof(cython.floating))
        for q in prange(n_rows, schedule="static"):
            if sc == NULL:
                failed_p[0] = 1
                continue
            _pass2(sc, q, X + row0 * d, row0, X, rn_w, n, d, k, L, qn[row0 + q], rmax, eps,
                   tiny, lv + q * L, li + q * L, 1, 0, Dout, Iout)
        if sc != NULL:
            # What this thread queued (the static schedule gave each thread its own share).
            _pass2_flush(sc, X + row0 * d, row0, X, rn_w, n, d, k, Dout, Iout)
        _pass2_scratch_release(sc)
    return -1 if failed else 0


def _self_norms_typed(const cython.floating[:, ::1] X):
    """(the rows' squared norms in double, in the input dtype, their largest), or None when
    a norm is not finite or twice the largest would overflow the gemm's dtype."""
    cdef Py_ssize_t n = X.shape[0]
    cdef double rmax, eps, tiny, limit
    cdef bint ok
    _dtype_limits(<cython.floating>0, &eps, &tiny, &limit)
    qn_arr = np.empty(n, dtype=np.float64)
    rn_arr = np.empty(n, dtype=np.float32 if cython.floating is float else np.float64)
    cdef double[::1] qn = qn_arr
    cdef cython.floating[::1] rn_w = rn_arr
    with nogil:
        ok = _norms(&X[0, 0], n, X.shape[1], &qn[0], &rn_w[0], &rmax) and 2 * rmax <= limit
    return (qn_arr, rn_arr, rmax) if ok else None


def _self_pair_typed(const cython.floating[:, ::1] X, const cython.floating[::1] rn_w,
                     Py_ssize_t a_start, Py_ssize_t a_stop, Py_ssize_t b_start,
                     Py_ssize_t b_stop, cython.floating[:, ::1] lv_a, int64_t[:, ::1] li_a,
                     cython.floating[:, ::1] lv_b, int64_t[:, ::1] li_b, on_progress):
    cdef Py_ssize_t n_a = (a_stop - a_start + SELF_BLOCK - 1) // SELF_BLOCK
    cdef Py_ssize_t n_b = (b_stop - b_start + SELF_BLOCK - 1) // SELF_BLOCK
    cdef Py_ssize_t L = lv_a.shape[1]
    cdef Py_ssize_t r0, r1, step
    cdef Py_ssize_t n_rounds = _n_rounds(a_start == b_start, n_a, n_b)
    cdef int rc = 0
    step = max(1, n_rounds // 100)  # about 100 progress updates
    r0 = 0
    with blas_single_threaded():
        while r0 < n_rounds and rc == 0:
            r1 = min(r0 + step, n_rounds)
            with nogil:
                rc = _pair_rounds_pass1(&X[0, 0], X.shape[1], &rn_w[0], a_start, a_stop,
                                        b_start, b_stop, r0, r1, L, &lv_a[0, 0], &li_a[0, 0],
                                        &lv_b[0, 0], &li_b[0, 0])
            if on_progress is not None:
                on_progress(float(r1) / n_rounds)
            r0 = r1
    if rc != 0:
        raise MemoryError("knn_cpu.SelfJoin: could not allocate the per-thread kNN buffers")


def _self_finish_typed(const cython.floating[:, ::1] X, const double[::1] qn,
                       const cython.floating[::1] rn_w, double rmax, Py_ssize_t k,
                       Py_ssize_t start, Py_ssize_t stop, const cython.floating[:, ::1] lv,
                       const int64_t[:, ::1] li):
    D = np.empty((stop - start, k), dtype=np.float32 if cython.floating is float
                 else np.float64)
    I = np.empty((stop - start, k), dtype=np.int64)
    cdef cython.floating[:, ::1] Dv = D
    cdef int64_t[:, ::1] Iv = I
    cdef int rc
    with nogil:
        rc = _self_finish(&X[0, 0], X.shape[0], X.shape[1], k, &qn[0], &rn_w[0], rmax,
                          lv.shape[1], &lv[0, 0], &li[0, 0], start, stop - start, &Dv[0, 0],
                          &Iv[0, 0])
    if rc != 0:
        raise MemoryError("knn_cpu.SelfJoin: could not allocate the per-thread kNN buffers")
    return D, I
