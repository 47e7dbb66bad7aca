# The self-join of knn_self (part of knn_cpu.pyx, included there after knn_twopass.pxi, whose
# pass-1 scans, pass 2 and norms it runs on pairs of row blocks; the module docstring
# describes the schedule).

cdef enum:
    # Square tiles of SELF_BLOCK x SELF_BLOCK rows.
    SELF_BLOCK = 256

# knn_self keeps a list of k + LIST_EXTRA candidates for each of the n points at once (336 MB
# for 1M points, k = 20, float32); above this many bytes it declines (returns None) and the
# caller searches in query chunks with knn instead, which needs memory only per thread.
SELF_JOIN_MAX_BYTES = 512 * 2**20


cdef int _self_rounds(const cython.floating* X, Py_ssize_t n, Py_ssize_t d,
                      const cython.floating* rn_w, const Py_ssize_t* round_start,
                      const Py_ssize_t* pair_a, const Py_ssize_t* pair_b, Py_ssize_t r0,
                      Py_ssize_t r1, Py_ssize_t L, cython.floating* lv,
                      int64_t* li) noexcept nogil:
    """Pass 1 of the self-join over rounds r0..r1-1 of block pairs (a <= b). The pairs of a
    round share no block, so its pairs run in parallel with one list per point; rounds are
    separated by the barrier that ends each prange. Returns 0, or -1 when a buffer could not
    be allocated."""
    cdef Py_ssize_t r, p, a0, b0, na, nb, i, q
    cdef cython.floating* buf = NULL
    cdef cython.floating* lim = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed
    r = r0  # (the parallel block copies it in)
    with parallel():
        buf = <cython.floating*>malloc(SELF_BLOCK * SELF_BLOCK * sizeof(cython.floating))
        lim = <cython.floating*>malloc(SELF_BLOCK * sizeof(cython.floating))
        for r in range(r0, r1):
            for p in prange(round_start[r], round_start[r + 1], schedule="dynamic"):
                if buf == NULL or lim == NULL:
                    failed_p[0] = 1
                    continue
                a0 = pair_a[p] * SELF_BLOCK
                b0 = pair_b[p] * SELF_BLOCK
                na = n - a0
                if na > SELF_BLOCK:
                    na = SELF_BLOCK
                nb = n - b0
                if nb > SELF_BLOCK:
                    nb = SELF_BLOCK
                gemm_abt(X + a0 * d, X + b0 * d, <int>na, <int>nb, <int>d, buf)
                # Rows: block a's points against block b (a diagonal tile covers both ways).
                for i in range(na):
                    q = a0 + i
                    _scan_row(buf + i * nb, rn_w + b0, nb, b0, q, lv + q * L, li + q * L, L)
                if a0 != b0:
                    _scan_columns(buf, na, nb, a0, b0, rn_w, lv, li, L, lim)
        free(buf)
        free(lim)
    return -1 if failed else 0


cdef int _self_finish(const cython.floating* X, Py_ssize_t n, Py_ssize_t d, Py_ssize_t k,
                      const double* qn, const cython.floating* rn_w, double rmax,
                      Py_ssize_t L, const cython.floating* lv, const int64_t* li,
                      Py_ssize_t row0, Py_ssize_t n_rows,
                      cython.floating* Dout, int64_t* Iout) noexcept nogil:
    """Pass 2 of the self-join for rows row0 .. row0 + n_rows - 1, each from its list, into
    Dout / Iout of n_rows rows (the rows are queries offset by row0 into X itself)."""
    cdef Py_ssize_t q
    cdef double eps, tiny, limit
    cdef Pass2Scratch* sc = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed
    _dtype_limits(<cython.floating>0, &eps, &tiny, &limit)
    with parallel():
        sc = <Pass2Scratch*>malloc(sizeof(Pass2Scratch))
        if sc != NULL and not _pass2_scratch_new(sc, k, L, d, sizeof(cython.floating)):
            free(sc)
            sc = NULL
        for q in prange(n_rows, schedule="static"):
            if sc == NULL:
                failed_p[0] = 1
                continue
            _pass2(sc, q, X + row0 * d, row0, X, rn_w, n, d, k, L, qn[row0 + q], rmax, eps,
                   tiny, lv + (row0 + q) * L, li + (row0 + q) * L, 1, 0, Dout, Iout)
        if sc != NULL:
            # What this thread queued (the static schedule gave each thread its own share).
            _pass2_flush(sc, X + row0 * d, row0, X, rn_w, n, d, k, Dout, Iout)
            _pass2_scratch_free(sc)
            free(sc)
    return -1 if failed else 0


def _pair_rounds(Py_ssize_t n_blocks):
    """Block pairs (a <= b) in rounds of disjoint pairs: the diagonal, then the circle method
    (n_blocks - 1 rounds, or n_blocks when odd). Returns (round_start, pair_a, pair_b)."""
    rounds = [[(a, a) for a in range(n_blocks)]]
    m = n_blocks + n_blocks % 2  # odd: a dummy block that sits out each round
    ring = list(range(1, m))
    for r in range(m - 1):
        order = [0] + ring[r:] + ring[:r]
        pairs = [(min(order[i], order[m - 1 - i]), max(order[i], order[m - 1 - i]))
                 for i in range(m // 2)]
        rounds.append([pair for pair in pairs if pair[1] < n_blocks])
    sizes = [len(pairs) for pairs in rounds]
    flat = [pair for pairs in rounds for pair in pairs]
    round_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
    pair_a = np.array([a for a, _ in flat], dtype=np.intp)
    pair_b = np.array([b for _, b in flat], dtype=np.intp)
    return round_start, pair_a, pair_b


def _knn_self_typed(const cython.floating[:, ::1] X, Py_ssize_t k, on_progress, resume,
                    on_rounds, ranges, on_range):
    cdef Py_ssize_t n = X.shape[0]
    cdef Py_ssize_t d = X.shape[1]
    cdef Py_ssize_t L = k + LIST_EXTRA
    cdef Py_ssize_t n_blocks = (n + SELF_BLOCK - 1) // SELF_BLOCK
    cdef double rmax, eps, tiny, limit
    cdef int rc = 0
    cdef Py_ssize_t r0, r1, n_rounds, step
    dtype = np.dtype(np.float32 if cython.floating is float else np.float64)
    if n * L * (dtype.itemsize + 8) > SELF_JOIN_MAX_BYTES:
        return None
    _dtype_limits(<cython.floating>0, &eps, &tiny, &limit)
    qn_arr = np.empty(n, dtype=np.float64)
    rn_arr = np.empty(n, dtype=dtype)
    cdef double[::1] qn = qn_arr
    cdef cython.floating[::1] rn_w = rn_arr
    with nogil:
        if not (_norms(&X[0, 0], n, d, &qn[0], &rn_w[0], &rmax) and 2 * rmax <= limit):
            rc = 1
    if rc == 1:
        return None
    start_arr, a_arr, b_arr = _pair_rounds(n_blocks)
    cdef Py_ssize_t[::1] round_start = start_arr
    cdef Py_ssize_t[::1] pair_a = a_arr
    cdef Py_ssize_t[::1] pair_b = b_arr
    n_rounds = start_arr.shape[0] - 1
    r0 = 0
    if resume is None:
        lv_arr = np.full((n, L), np.inf, dtype=dtype)
        li_arr = np.full((n, L), -1, dtype=np.int64)
    else:  # the state an earlier call passed to on_rounds
        r0, lv_arr, li_arr = resume
        if not (0 <= r0 <= n_rounds and lv_arr.shape == (n, L) and lv_arr.dtype == dtype
                and li_arr.shape == (n, L) and li_arr.dtype == np.int64
                and lv_arr.flags.c_contiguous and li_arr.flags.c_contiguous
                and lv_arr.flags.writeable and li_arr.flags.writeable):
            raise ValueError("knn_cpu.knn_self: the resumed state does not belong to this X "
                             f"and k (expected {n_rounds} rounds and ({n}, {L}) lists of "
                             f"{dtype} and int64)")
    cdef cython.floating[:, ::1] lv = lv_arr
    cdef int64_t[:, ::1] li = li_arr
    cdef cython.floating[:, ::1] Dv
    cdef int64_t[:, ::1] Iv
    cdef Py_ssize_t start, stop
    step = max(1, n_rounds // 100)  # about 100 progress updates
    with blas_single_threaded():
        while r0 < n_rounds and rc == 0:
            r1 = min(r0 + step, n_rounds)
            with nogil:
                rc = _self_rounds(&X[0, 0], n, d, &rn_w[0], &round_start[0], &pair_a[0],
                                  &pair_b[0], r0, r1, L, &lv[0, 0], &li[0, 0])
            if rc == 0 and on_rounds is not None:
                on_rounds(r1, lv_arr, li_arr)
            if on_progress is not None:
                on_progress(float(round_start[r1]) / round_start[n_rounds])
            r0 = r1
    if rc != 0:
        raise MemoryError("knn_cpu.knn_self: could not allocate the per-thread kNN buffers")
    # The answers are written a range of rows at a time, so only one range's (D, I) is
    # ever held beside the candidate lists.
    for start, stop in ((0, n),) if ranges is None else ranges:
        D = np.empty((stop - start, k), dtype=dtype)
        I = np.empty((stop - start, k), dtype=np.int64)
        Dv, Iv = D, I
        with nogil:
            rc = _self_finish(&X[0, 0], n, d, k, &qn[0], &rn_w[0], rmax, L, &lv[0, 0],
                              &li[0, 0], start, stop - start, &Dv[0, 0], &Iv[0, 0])
        if rc != 0:
            raise MemoryError("knn_cpu.knn_self: could not allocate the per-thread kNN "
                              "buffers")
        if ranges is None:
            return D, I
        on_range(start, D, I)
        D = None  # freed before the next range's are made
        I = None
        Dv = None
        Iv = None
    return True
