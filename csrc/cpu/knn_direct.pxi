# The direct kernel (part of knn_cpu.pyx, included there): per query, the reference rows in
# ascending index, exact squared distances in double, a sorted k-best list. It answers
# knn_direct; its _sqdist and _direct_scan also serve the two-pass kernels (knn_twopass.pxi: the
# exact re-rank and the rescan's fallback).

cdef enum:
    # Blocks of QUERY_BLOCK queries against tiles of REFERENCE_TILE reference rows.
    QUERY_BLOCK = 32
    REFERENCE_TILE = 512


cdef inline double _sqdist(const cython.floating* a, const cython.floating* b,
                           Py_ssize_t d) noexcept nogil:
    cdef double s = 0.0
    cdef double diff
    cdef Py_ssize_t t
    for t in range(d):
        diff = <double>a[t] - <double>b[t]
        s += diff * diff
    return s


cdef inline void _insert_sorted(double* best_d, int64_t* best_i, Py_ssize_t k,
                                double dist, int64_t idx) noexcept nogil:
    # Shift worse entries right; equal distances keep the earlier (lower) index first.
    cdef Py_ssize_t pos = k - 1
    while pos > 0 and best_d[pos - 1] > dist:
        best_d[pos] = best_d[pos - 1]
        best_i[pos] = best_i[pos - 1]
        pos -= 1
    best_d[pos] = dist
    best_i[pos] = idx


cdef inline void _direct_scan(const cython.floating* qrow, const cython.floating* rbase,
                              Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t d, Py_ssize_t k,
                              Py_ssize_t skip, double* bd, int64_t* bi) noexcept nogil:
    """The direct kernel's step: reference rows r0..r1-1, in ascending index, into one
    query's sorted k-best list bd/bi (``skip``: the query's own row, or -1)."""
    cdef double worst = bd[k - 1]
    cdef double s
    cdef Py_ssize_t j
    for j in range(r0, r1):
        if j == skip:
            continue
        s = _sqdist(qrow, rbase + j * d, d)
        if s < worst:
            _insert_sorted(bd, bi, k, s, j)
            worst = bd[k - 1]


cdef int _knn_direct_impl(const cython.floating[:, ::1] queries,
                          const cython.floating[:, ::1] reference,
                          Py_ssize_t k, Py_ssize_t self_offset,
                          cython.floating[:, ::1] D, int64_t[:, ::1] I) noexcept:
    """Fills D and I; returns 0, or -1 when a per-thread buffer could not be allocated."""
    cdef Py_ssize_t n_q = queries.shape[0]
    cdef Py_ssize_t d = queries.shape[1]
    cdef Py_ssize_t n_r = reference.shape[0]
    cdef Py_ssize_t n_blocks = (n_q + QUERY_BLOCK - 1) // QUERY_BLOCK
    cdef Py_ssize_t b, q0, q1, qi, row, r0, r1, c, self_index
    cdef double* best_d
    cdef int64_t* best_i
    cdef double* bd
    cdef int64_t* bi
    cdef const cython.floating* qrow
    cdef const cython.floating* rbase
    cdef int failed = 0
    cdef int* failed_p = &failed  # written through a pointer: a plain name would be thread-private
    cdef int n_threads

    if n_q == 0 or k <= 0:
        return 0
    rbase = &reference[0, 0] if n_r > 0 else NULL
    n_threads = team_size(omp_get_max_threads(), n_blocks)
    best_d = NULL  # set per thread below; initialised so the firstprivate copies are defined
    best_i = NULL

    with nogil, parallel(num_threads=n_threads):
        # One pair of buffers per thread, reused by every block that thread runs. Every
        # thread still enters the prange (a worksharing loop must be met by the whole team).
        best_d = <double*>malloc(QUERY_BLOCK * k * sizeof(double))
        best_i = <int64_t*>malloc(QUERY_BLOCK * k * sizeof(int64_t))
        for b in prange(n_blocks, schedule="dynamic"):
            if best_d == NULL or best_i == NULL:
                failed_p[0] = 1  # same value from any thread: benign
                continue
            q0 = b * QUERY_BLOCK
            q1 = q0 + QUERY_BLOCK
            if q1 > n_q:
                q1 = n_q
            for c in range((q1 - q0) * k):
                best_d[c] = INFINITY
                best_i[c] = -1
            r0 = 0
            while r0 < n_r:
                r1 = r0 + REFERENCE_TILE
                if r1 > n_r:
                    r1 = n_r
                for qi in range(q0, q1):
                    row = qi - q0
                    bd = best_d + row * k
                    bi = best_i + row * k
                    qrow = &queries[qi, 0]
                    self_index = qi + self_offset if self_offset >= 0 else -1
                    _direct_scan(qrow, rbase, r0, r1, d, k, self_index, bd, bi)
                r0 = r1
            for row in range(q1 - q0):
                for c in range(k):
                    D[q0 + row, c] = <cython.floating>best_d[row * k + c]
                    I[q0 + row, c] = best_i[row * k + c]
        free(best_d)
        free(best_i)
    return -1 if failed else 0
