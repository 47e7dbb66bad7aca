# The float32 screen of float64 kNN in one kernel (part of knn_cpu.pyx, included after
# knn_split.pxi): pass 1 of the float32 two-pass kernel on the float64 rows rounded to
# float32 tile by tile (as the f32 tiles pack them, or into a tile of rows for BLAS; the
# queries a block at a time), so that no float32 copy of the reference exists, and pass 2
# of the float64 kernel: the exact float64 re-rank of every listed candidate within a
# margin widened by what the rounding can move a distance.
#
# Why that is exact (the float64 kernel's answer, bit for bit). q, r_j the float64 rows,
# q' = fl32(q), r'_j = fl32(r_j); E_j, E'_j the exact squared distances of q, r_j and of
# q', r'_j; e_j the kernels' double sums for q, r_j (the answer: the k lexicographically
# smallest (e_j, j)); v'_j the pass-1 values, those of the float32 kernel on the rounded
# rows. Let S >= ||q|| + max_j ||r_j|| bound the norms of the rows and of their roundings
# (below). Rounding moves each component by at most u|x| + t (u = 2^-24, t = 2^-150 for a
# subnormal), so ||(q' - r'_j) - (q - r_j)|| <= eps = u S + 2 sqrt(d) t and
# |E'_j - E_j| <= delta = eps (2 S + eps). The module docstring's bound b, taken with the
# float32 u and tiny and with Q + R bounded by ||q||^2 + ||r||^2 <= the squares of the two
# norm bounds, covers both |v'_j - (E'_j - Q')| (pass 1's part: products, norms, v) and
# |e_j - E_j| (the re-rank's part), so |v'_j - (e_j - Q')| <= b + delta for the constant
# Q' = ||q'||^2. The module docstring's argument then runs with b + delta for b: the k-th
# smallest e is <= Q' + T + b + delta, every member j of the answer has
# v'_j <= T + 2 (b + delta), and the limit T + M + 2 SAFETY delta leaves SAFETY to spare
# (which also covers the few roundings of forming the bounds in double). A list whose
# final largest entry is within the limit may have dropped a member: that query is
# reported (``failed``) and the caller answers it by the float64 kernel.
#
# Norm bounds: s = a double sum of squares of a row x (float64) or of fl32(x) is within
# (d + 2) u' relative of the exact one, and ||x|| <= (||fl32(x)|| + sqrt(d) t) / (1 - u),
# ||fl32(x)|| <= (1 + u) ||x|| + sqrt(d) t, so (sqrt(s (1 + (d + 2) u')) + sqrt(d) t) /
# (1 - u) bounds both norms (_rounding_norm_bound).


cdef inline double _rounding_norm_bound(double s, Py_ssize_t d) noexcept nogil:
    """A bound on ||x|| and ||fl32(x)|| from s, a double sum of squares of either (above)."""
    return ((sqrt(s * (1 + (d + 2) * 0.5 * DBL_EPSILON)) + sqrt(<double>d) * SUBNORMAL_32)
            / (1 - 0.5 * FLT_EPSILON))


# Half the smallest float32 subnormal: rounding to float32's absolute error near zero.
cdef double SUBNORMAL_32 = 7.006492321624085e-46  # 2^-150


cdef void _screen32_block(const double* qbase, const double* rbase, const double* qn,
                          const float* rn32, double rnb, Py_ssize_t q0, Py_ssize_t q1,
                          Py_ssize_t n_r, Py_ssize_t d, Py_ssize_t k, Py_ssize_t self_offset,
                          Py_ssize_t tile, bint tiles, Pass1Scratch* s, Pass2Scratch* sc,
                          double* Dout, int64_t* Iout, unsigned char* failed) noexcept nogil:
    """The k best of queries q0..q1-1 (rows q0..q1-1 of Dout / Iout), or failed[qi] = 1
    where a list overflowed. rn32: the rounded reference rows' norms (float32), rnb a bound
    on every ||r_j|| and ||fl32(r_j)||; ``s``: float32 pass-1 scratch with the screen's
    buffers (_pass1_scratch_alloc)."""
    cdef Py_ssize_t L = _list_len(k, d)
    cdef Py_ssize_t nq = q1 - q0
    cdef Py_ssize_t c, row, qi, nc
    cdef double qnb, S, e, limit
    cdef float* q32 = s.q32
    cdef const float* lv = <float*>s.lv
    cdef const int64_t* li = s.li
    cdef double* lv64 = s.lv64
    for c in range(nq * d):
        q32[c] = <float>qbase[q0 * d + c]
    _pass1_block(q32, q0, nq, <const float*>NULL, rbase, rn32, n_r, d, L, self_offset, tile,
                 tiles, s)
    for row in range(nq):
        qi = q0 + row
        for c in range(L):
            lv64[c] = lv[row * L + c]
        qnb = _rounding_norm_bound(qn[qi], d)
        S = qnb + rnb
        e = 0.5 * FLT_EPSILON * S + 2 * sqrt(<double>d) * SUBNORMAL_32
        nc = _pass2_candidates(lv64, li + row * L, L, 1, 0, k, qnb * qnb, rnb * rnb, d,
                               FLT_EPSILON, FLT_MIN, 2 * SAFETY * e * (2 * S + e), sc.cand,
                               sc.cand_v, &limit)
        failed[qi] = nc < 0
        if nc >= 0:
            _rerank(qbase + qi * d, rbase, d, k, sc.cand, nc, sc.cand_v, sc.bd, sc.bi,
                    Dout + qi * k, Iout + qi * k)


cdef bint _screen32_applies(Py_ssize_t n_q, Py_ssize_t n_r, Py_ssize_t k, Py_ssize_t d,
                            int n_threads) noexcept nogil:
    """Whether _knn_screen32_impl runs these shapes: the query-block path (not the split
    path of few queries)."""
    return (n_q > 0 and n_r > 0 and k > 0 and d >= MIN_GEMM_DIM
            and not _use_split(n_q, n_r, _list_len(k, d), n_threads))


cdef int _knn_screen32_impl(const double[:, ::1] queries, const double[:, ::1] reference,
                            Py_ssize_t k, Py_ssize_t self_offset, const float* rn32,
                            double rmax32, double[:, ::1] D, int64_t[:, ::1] I,
                            unsigned char[::1] failed) noexcept:
    """Fills D and I and failed (above); returns 0, -1 when a buffer could not be
    allocated, or 1 when it does not apply (nothing written): _screen32_applies is false,
    or the norms are too large for float32 products. rn32 / rmax32: knn_cpu.rounded_norms of
    the reference."""
    cdef Py_ssize_t n_q = queries.shape[0]
    cdef Py_ssize_t d = queries.shape[1]
    cdef Py_ssize_t n_r = reference.shape[0]
    cdef Py_ssize_t L = _list_len(k, d)
    cdef Py_ssize_t qb, tile, tile_padded, n_blocks, b, q0, q1
    cdef bint tiles = _f32_tiles_for(d)
    cdef double qmax, rnb, qnb
    cdef double* qn = NULL
    cdef Pass1Scratch* s1
    cdef Pass2Scratch* sc
    cdef int failed_alloc = 0
    cdef int* failed_alloc_p = &failed_alloc
    cdef int rc = 0
    cdef int n_threads = omp_get_max_threads()
    if not _screen32_applies(n_q, n_r, k, d, n_threads):
        return 1
    qn = <double*>malloc(n_q * sizeof(double))
    if qn == NULL:
        return -1
    rnb = _rounding_norm_bound(rmax32, d)
    with nogil:
        if not _norms(&queries[0, 0], n_q, d, qn, <double*>NULL, &qmax):
            rc = 1
        else:
            qnb = _rounding_norm_bound(qmax, d)
            if not qnb * qnb + rnb * rnb <= NORM_LIMIT_F32:
                rc = 1
    if rc == 0:
        _query_blocks(n_q, n_r, L, sizeof(float), n_threads, &qb, &tile)
        tile_padded = (tile + FZ_F32_NR - 1) // FZ_F32_NR * FZ_F32_NR
        n_blocks = (n_q + qb - 1) // qb
        n_threads = team_size(n_threads, n_blocks)
        s1 = NULL
        sc = NULL
        with nogil, parallel(num_threads=n_threads):
            s1 = _pass1_scratch_alloc(qb, L, tile_padded, d, sizeof(float), tiles, 1)
            sc = _pass2_scratch_alloc(k, L, d, sizeof(double))
            for b in prange(n_blocks, schedule="dynamic"):
                if s1 == NULL or sc == NULL:
                    failed_alloc_p[0] = 1
                    continue
                q0 = b * qb
                q1 = q0 + qb
                if q1 > n_q:
                    q1 = n_q
                _screen32_block(&queries[0, 0], &reference[0, 0], qn, rn32, rnb, q0, q1,
                                n_r, d, k, self_offset, tile, tiles, s1, sc, &D[0, 0],
                                &I[0, 0], &failed[0])
            _pass1_scratch_release(s1)
            _pass2_scratch_release(sc)
        if failed_alloc:
            rc = -1
    free(qn)
    return rc


def _rounded_norms_impl(const double[:, ::1] X, float[::1] rn_w):
    """rn_w = the reference norms of fl32(X) (what _rounded_rows_impl gives, bit for bit:
    each row rounded into a per-thread row, then _norm; no copy of X); returns their
    largest in double, or None when one is not finite."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], i, t
    cdef double rmax
    cdef bint ok
    cdef float* row = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed
    rn64 = np.empty(n, dtype=np.float64)
    cdef double[::1] rn = rn64
    if n == 0:
        return 0.0
    with nogil, parallel():
        row = <float*>malloc((d if d > 0 else 1) * sizeof(float))
        for i in prange(n, schedule="static"):
            if row == NULL:
                failed_p[0] = 1
                continue
            for t in range(d):
                row[t] = <float>X[i, t]  # beyond float32's range: inf (refused below)
            rn[i] = _norm(row, d)
            rn_w[i] = <float>rn[i]
        free(row)
    if failed:
        raise MemoryError("knn_cpu.rounded_norms: could not allocate a row per thread")
    with nogil:
        ok = _largest_norm(&rn[0], n, &rmax)
    return rmax if ok else None
