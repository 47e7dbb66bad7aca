# The split path of knn for few queries (part of knn_cpu.pyx, included there after
# knn_twopass.pxi, whose pass-1 scan and pass 2 it runs). With fewer query blocks than
# threads, the query-block path would leave threads idle (one query: one thread for the
# whole reference); with a few hundred queries, each of its small blocks would pack and
# scan the whole reference again. Here the reference is split instead, and every tile meets
# all the queries in one product.
#
# Every thread keeps its own pass-1 lists (L = _list_len(k, d) per query) over the reference
# tiles it takes (gemm of all queries against the tile; gemv for one query: another
# summation order of the same dot products, within the bound b of the module docstring,
# which holds for any order). Pass 2 (_pass2 with one list per
# thread) merges them: T is the k-th smallest v kept by any thread, and a thread's list can
# only have dropped a member of the answer if it is full and its largest entry is within
# T + M (the module docstring's argument, applied to each list: a list drops only
# candidates whose v is >= its final largest entry), in which case the query is rescanned.
# Otherwise every member of the answer is among the kept candidates within T + M, which are
# re-ranked exactly in (distance, index) order: the answer of the direct kernel, bit for
# bit, whichever thread saw which tile.

cdef inline void _gemv_bq(const cython.floating* b, const cython.floating* q, int nb, int d,
                         cython.floating* out) noexcept nogil:
    """Row-major out[nb] = b[nb, d] @ q[d]: one query's dot products with a tile (a gemm of
    one row would pack, i.e. copy, the whole tile first). Column-major, b is d x nb (ld d)
    and this is b^T q."""
    cdef char tr = b'T'
    cdef int one = 1
    cdef float one_f = 1.0
    cdef float zero_f = 0.0
    cdef double one_d = 1.0
    cdef double zero_d = 0.0
    if cython.floating is float:
        sgemv(&tr, &d, &nb, &one_f, <float*>b, &d, <float*>q, &one, &zero_f, out, &one)
    else:
        dgemv(&tr, &d, &nb, &one_d, <double*>b, &d, <double*>q, &one, &zero_d, out, &one)


cdef enum:
    # The split path: at most SPLIT_MAX_QUERIES queries or fewer 8-query blocks than
    # threads, and at least two tiles of SPLIT_MIN_TILE rows; about SPLIT_TILES_PER_THREAD
    # tiles per thread (dynamic schedule: a thread that the OS holds back leaves its share
    # to the others). SPLIT_MAX_QUERIES was chosen on blobs (20k-100k references, d =
    # 32-128, k = 20, 2 threads): the split path took 0.26x-0.71x the query-block path's
    # time up to 256 queries, 0.67x-0.90x at 384-512, about 1x at 1024 (its pass 2 runs on
    # one thread) and up to 1.7x at 4096. The query blocks of at least BLOCK_MIN_QUERIES
    # (knn_twopass.pxi), added after, narrowed that lead at 64-256 queries (0.7x-1.3x on
    # the blobs by d); on the trained run's LoOP reference (48k x 50) the split path still
    # took 0.79x-0.90x at 40-150 queries and 1.08x at 256 (docs/benchmarks.md).
    SPLIT_QUERIES_PER_BLOCK = 8
    SPLIT_MAX_QUERIES = 256
    SPLIT_MIN_TILE = 1024
    SPLIT_TILES_PER_THREAD = 4
    # Float32 tiles of 2 to SPLIT_DOTS_MAX_QUERIES queries take fz_f32_dots (the rows read in
    # place) where the f32 tiles run (AVX2 with FMA): packing the tile for BLAS cost twice
    # its kernel's time there. Chosen on uniform rows (24k references, one thread, AMD EPYC
    # Zen 3): the products 0.19x-0.32x sgemm's time at 2-4 queries, 0.43x-0.83x at 10 (d =
    # 128 / 50 / 16), 0.81x at 16, 1.18x at 32 (d = 50); whole searches of standard normal
    # rows (48k references, k = 20, 2 threads): 0.27x / 0.62x / 0.76x / 0.85x the time at
    # 2 / 8 / 12 / 16 queries (d = 50), 0.70x at d = 24-32, 0.98x at d = 16.
    SPLIT_DOTS_MAX_QUERIES = 16


# (for Python: cython_.knn keeps one-shot searches of this many queries off the BF16 screen)
split_max_queries = SPLIT_MAX_QUERIES


cdef inline bint _use_split(Py_ssize_t n_q, Py_ssize_t n_r, Py_ssize_t L,
                            int n_threads) noexcept nogil:
    return (n_threads > 1
            and (n_q <= SPLIT_MAX_QUERIES
                 or (n_q + SPLIT_QUERIES_PER_BLOCK - 1) // SPLIT_QUERIES_PER_BLOCK < n_threads)
            and n_r >= 2 * SPLIT_MIN_TILE
            and n_threads * L <= _rescan_cap(L))  # pass 2 sorts all lists in sc.cand


cdef int _knn_split(const cython.floating* qbase, Py_ssize_t n_q,
                    const cython.floating* rbase, Py_ssize_t n_r, Py_ssize_t d, Py_ssize_t k,
                    Py_ssize_t self_offset, const double* qn, const cython.floating* rn_w,
                    double rmax, int n_threads, cython.floating* Dout,
                    int64_t* Iout) noexcept nogil:
    """The k best of all n_q queries, the reference tiles split across n_threads threads.
    Returns 0, or -1 when a buffer could not be allocated."""
    cdef Py_ssize_t L = _list_len(k, d)
    cdef Py_ssize_t stride = n_q * L  # one thread's lists
    cdef Py_ssize_t tile, n_tiles, t, r0, r1, nr, row, skip, c, qi
    cdef int tid = 0  # private in the parallel block; set so gcc sees it initialised
    cdef double eps, tiny, limit
    cdef cython.floating* lv_all
    cdef int64_t* li_all
    cdef cython.floating* buf = NULL
    cdef Pass2Scratch sc
    cdef int failed = 0
    cdef int* failed_p = &failed
    # the f32 tiles' route takes fz_f32_dots for a few queries (AVX2 with FMA: both vector
    # tiles' CPUs have it)
    cdef bint dots = (n_q <= SPLIT_DOTS_MAX_QUERIES and _f32_tiles_for(d)
                      and (_F32_TILES == FZ_TILES_AVX2 or _F32_TILES == FZ_TILES_AVX512)
                      and _CPU_HAS_AVX2)
    _dtype_limits(<cython.floating>0, &eps, &tiny, &limit)
    tile = GEMM_TILE_ELEMS // n_q
    if cython.floating is double:
        tile = (tile + 1) // 2
    c = (n_r + SPLIT_TILES_PER_THREAD * n_threads - 1) // (SPLIT_TILES_PER_THREAD * n_threads)
    if tile > c:
        tile = c
    if tile < SPLIT_MIN_TILE:
        tile = SPLIT_MIN_TILE
    n_tiles = (n_r + tile - 1) // tile
    lv_all = <cython.floating*>malloc(n_threads * stride * sizeof(cython.floating))
    li_all = <int64_t*>malloc(n_threads * stride * sizeof(int64_t))
    if lv_all == NULL or li_all == NULL or not _pass2_scratch_new(&sc, k, L, d,
                                                                  sizeof(cython.floating)):
        free(lv_all)
        free(li_all)
        return -1
    for c in range(n_threads * stride):  # also the lists of threads the team may lack
        lv_all[c] = INFINITY
        li_all[c] = -1
    with parallel(num_threads=team_size(n_threads, n_tiles)):
        tid = omp_get_thread_num()
        buf = <cython.floating*>malloc(n_q * tile * sizeof(cython.floating))
        for t in prange(n_tiles, schedule="dynamic"):
            if buf == NULL:
                failed_p[0] = 1
                continue
            r0 = t * tile
            r1 = r0 + tile
            if r1 > n_r:
                r1 = n_r
            nr = r1 - r0
            if n_q == 1:
                _gemv_bq(rbase + r0 * d, qbase, <int>nr, <int>d, buf)
            elif cython.floating is float and dots:
                fz_f32_dots(1, qbase, n_q, rbase + r0 * d, nr, d, buf, nr)
            else:
                gemm_abt(qbase, rbase + r0 * d, <int>n_q, <int>nr, <int>d, buf)
            for row in range(n_q):
                skip = row + self_offset if self_offset >= 0 else -1
                _scan_row(buf + row * nr, rn_w + r0, nr, r0, skip,
                          lv_all + tid * stride + row * L, li_all + tid * stride + row * L, L)
        free(buf)
    if not failed:
        for qi in range(n_q):
            _pass2(&sc, qi, qbase, self_offset, rbase, rn_w, n_r, d, k, L, qn[qi], rmax, eps,
                   tiny, lv_all + qi * L, li_all + qi * L, n_threads, stride, Dout, Iout)
        _pass2_flush(&sc, qbase, self_offset, rbase, rn_w, n_r, d, k, Dout, Iout)
    _pass2_scratch_free(&sc)
    free(lv_all)
    free(li_all)
    return -1 if failed else 0
