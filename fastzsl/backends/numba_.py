"""Numba backend: parallel loops over query blocks, float64 accumulation.

The kNN kernel tiles queries x reference rows so one reference tile stays in cache while
a block of queries streams over it; each query keeps a sorted list of its k best
(distance, index) pairs, so a candidate usually costs one compare against the worst.
``knn`` runs that direct kernel (``_knn``) behind a BLAS prefilter (``_knn_gemm``): most
candidates are rejected on a GEMM-expanded distance with a rounding margin, and the rest are
re-ranked by the same direct difference sum, so the results are those of ``_knn`` exactly.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .._threads import blas_single_threaded
from ._base import KernelSet
from ._gaussian_gemm import LSE_CUT, class_terms

QUERY_BLOCK = 32
REFERENCE_TILE = 512


@numba.njit(cache=True, inline="always")
def _sqdist(queries, qi, reference, j):
    """Exact squared distance: double sum of squared differences, t in order (the value
    every kNN path of this backend reports, bit for bit)."""
    s = 0.0
    for t in range(queries.shape[1]):
        diff = np.float64(queries[qi, t]) - np.float64(reference[j, t])
        s += diff * diff
    return s


@numba.njit(cache=True, inline="always")
def _insert_sorted(best_d, best_i, row, dist, idx, k):
    # Shift worse entries right; equal distances keep the earlier (lower) index first.
    pos = k - 1
    while pos > 0 and best_d[row, pos - 1] > dist:
        best_d[row, pos] = best_d[row, pos - 1]
        best_i[row, pos] = best_i[row, pos - 1]
        pos -= 1
    best_d[row, pos] = dist
    best_i[row, pos] = idx


@numba.njit(parallel=True, cache=True)
def _knn(queries, reference, k, self_offset, D, I):
    n_q, d = queries.shape
    n_r = reference.shape[0]
    n_blocks = (n_q + QUERY_BLOCK - 1) // QUERY_BLOCK
    for b in numba.prange(n_blocks):
        q0 = b * QUERY_BLOCK
        q1 = min(q0 + QUERY_BLOCK, n_q)
        best_d = np.full((q1 - q0, k), np.inf)
        best_i = np.full((q1 - q0, k), -1, dtype=np.int64)
        for r0 in range(0, n_r, REFERENCE_TILE):
            r1 = min(r0 + REFERENCE_TILE, n_r)
            for qi in range(q0, q1):
                row = qi - q0
                self_index = qi + self_offset if self_offset >= 0 else -1
                worst = best_d[row, k - 1]
                for j in range(r0, r1):
                    if j == self_index:
                        continue
                    s = _sqdist(queries, qi, reference, j)
                    if s < worst:
                        _insert_sorted(best_d, best_i, row, s, j, k)
                        worst = best_d[row, k - 1]
        for row in range(q1 - q0):
            for c in range(k):
                D[q0 + row, c] = best_d[row, c]
                I[q0 + row, c] = best_i[row, c]


# GEMM prefilter + exact re-rank: np.dot gives q . r_j for a block of queries x a tile of
# references in the input precision, v_j = ||r_j||^2 - 2 q . r_j, and only candidates with
# v_j <= worst - ||q||^2 + m are re-ranked by the direct difference sum above, in ascending j,
# so the results equal those of ``_knn`` bit for bit. Why m is safe: csrc/cpu/knn_cpu.pyx's
# docstring bounds |v_j - (e_j - ||q||^2)| by b (e_j the re-ranked distance); a candidate
# with e_j < worst therefore has v_j < worst - ||q||^2 + b, and
# m = 8 (d + 2) (eps (||q||^2 + Rmax + worst) + tiny) >= 4 b plus the rounding of the
# threshold. (The cython kernel defers the re-rank to a second pass instead, which re-ranks
# fewer candidates; this simpler scheme is kept here.)
GEMM_QUERY_BLOCK = 128
GEMM_TILE_ELEMS = 131072  # dot products per block x tile (512 KiB in float32)
GEMM_BEST_BYTES = 16 * 2**20  # cap on the per-block k-best lists (large k: fewer queries)
MARGIN_C = 8.0
SCAN_CHUNK = 32
_NORM_LIMIT = {np.dtype(np.float32): 1e37, np.dtype(np.float64): 1e300}


@numba.njit(parallel=True, cache=True)
def _sqnorms(X, out):
    n, d = X.shape
    for i in numba.prange(n):
        s = 0.0
        for t in range(d):
            x = np.float64(X[i, t])
            s += x * x
        out[i] = s


@numba.njit(cache=True, inline="always")
def _threshold(worst, qn, rmax, scale, eps, tiny):
    # worst = +inf gives +inf: every candidate passes until k are known.
    return worst - qn + scale * (eps * (qn + rmax + worst) + tiny)


@numba.njit(cache=True, inline="always")
def _next_candidate(P, row, rn, r0, thr, start, n):
    # First j in [start, n) with rn[r0 + j] - 2 P[row, j] <= thr (computed in double), or n.
    j = start
    while j < n and j % SCAN_CHUNK != 0:
        if np.float64(rn[r0 + j]) - 2.0 * np.float64(P[row, j]) <= thr:
            return j
        j += 1
    while j + SCAN_CHUNK <= n:
        hit = False
        for t in range(SCAN_CHUNK):
            hit |= np.float64(rn[r0 + j + t]) - 2.0 * np.float64(P[row, j + t]) <= thr
        if hit:
            break
        j += SCAN_CHUNK
    while j < n:
        if np.float64(rn[r0 + j]) - 2.0 * np.float64(P[row, j]) <= thr:
            return j
        j += 1
    return n


@numba.njit(parallel=True, cache=True)
def _knn_gemm(queries, reference, k, self_offset, qn, rn, tile_rmax, qb, tile, eps, tiny, D, I):
    n_q, d = queries.shape
    n_r = reference.shape[0]
    n_blocks = (n_q + qb - 1) // qb
    scale = MARGIN_C * (d + 2)
    for b in numba.prange(n_blocks):
        q0 = b * qb
        q1 = min(q0 + qb, n_q)
        best_d = np.full((q1 - q0, k), np.inf)
        best_i = np.full((q1 - q0, k), -1, dtype=np.int64)
        Qb = queries[q0:q1]
        for r0 in range(0, n_r, tile):
            r1 = min(r0 + tile, n_r)
            nr = r1 - r0
            P = np.dot(Qb, reference[r0:r1].T)
            rmax = tile_rmax[r0 // tile]
            for row in range(q1 - q0):
                qi = q0 + row
                self_index = qi + self_offset if self_offset >= 0 else -1
                worst = best_d[row, k - 1]
                thr = _threshold(worst, qn[qi], rmax, scale, eps, tiny)
                j = _next_candidate(P, row, rn, r0, thr, 0, nr)
                while j < nr:
                    jj = r0 + j
                    if jj != self_index:
                        s = _sqdist(queries, qi, reference, jj)
                        if s < worst:
                            _insert_sorted(best_d, best_i, row, s, jj, k)
                            worst = best_d[row, k - 1]
                            thr = _threshold(worst, qn[qi], rmax, scale, eps, tiny)
                    j = _next_candidate(P, row, rn, r0, thr, j + 1, nr)
        for row in range(q1 - q0):
            for c in range(k):
                D[q0 + row, c] = best_d[row, c]
                I[q0 + row, c] = best_i[row, c]


def knn(queries, reference, k, self_offset):
    D = np.empty((queries.shape[0], k), dtype=queries.dtype)
    I = np.empty((queries.shape[0], k), dtype=np.int64)
    n_q, d = queries.shape
    n_r = reference.shape[0]
    if n_q == 0 or k <= 0:
        return D, I
    if n_r > 0 and d > 0:
        dtype = queries.dtype
        qn = np.empty(n_q)
        rn64 = np.empty(n_r)
        _sqnorms(queries, qn)
        _sqnorms(reference, rn64)
        tile = GEMM_TILE_ELEMS // GEMM_QUERY_BLOCK // (dtype.itemsize // 4)
        n_tiles = (n_r + tile - 1) // tile
        padded = np.zeros(n_tiles * tile)
        padded[:n_r] = rn64
        tile_rmax = padded.reshape(n_tiles, tile).max(axis=1)
        limit = _NORM_LIMIT[dtype]
        if np.isfinite(qn.max()) and np.isfinite(tile_rmax.max()) \
                and qn.max() + tile_rmax.max() <= limit:
            info = np.finfo(dtype)
            # Small query sets: still give every thread a few blocks (min 8 queries each).
            per_block = max(8, -(-n_q // (4 * numba.get_num_threads())))
            qb = int(max(1, min(GEMM_QUERY_BLOCK, GEMM_BEST_BYTES // (16 * k), per_block)))
            with blas_single_threaded():
                _knn_gemm(queries, reference, k, self_offset, qn, rn64.astype(dtype),
                          tile_rmax, qb, tile, float(info.eps), float(info.tiny), D, I)
            return D, I
    _knn(queries, reference, k, self_offset, D, I)
    return D, I


@numba.njit(parallel=True, cache=True)
def _pdist(D, extent, out):
    n, k = D.shape
    for i in numba.prange(n):
        s = 0.0
        for c in range(k):
            s += np.float64(D[i, c])
        out[i] = extent * math.sqrt(s / k)


@numba.njit(cache=True)
def _plof(pdist, ev):
    # 0/0 -> 0 (as dense as the neighbours); x/0 -> +inf (infinitely sparser).
    if ev > 0.0:
        return pdist / ev - 1.0
    return math.inf if pdist > 0.0 else 0.0


@numba.njit(cache=True)
def _probability(plof, nplof):
    if nplof > 0.0:
        ratio = plof / (nplof * math.sqrt(2.0))
    else:
        ratio = math.inf if plof > 0.0 else 0.0
    return max(0.0, math.erf(ratio))


@numba.njit(parallel=True, cache=True)
def _plof_rows(pdist, I, ref_pdist, ev_override, out):
    n, k = I.shape
    use_neighbours = math.isnan(ev_override)
    for i in numba.prange(n):
        if use_neighbours:
            s = 0.0
            for c in range(k):
                s += ref_pdist[I[i, c]]
            ev = s / k
        else:
            ev = ev_override
        out[i] = _plof(pdist[i], ev)


@numba.njit(parallel=True, cache=True)
def _probability_rows(plof, nplof, out):
    for i in numba.prange(plof.shape[0]):
        out[i] = _probability(plof[i], nplof)


@numba.njit(cache=True)
def _nplof(plof, extent):
    s = 0.0
    count = 0
    for value in plof:
        if math.isfinite(value):
            s += value * value
            count += 1
    return extent * math.sqrt(s / count) if count > 0 else 0.0


def loop_fit(D, I, extent):
    n = D.shape[0]
    pdist = np.empty(n)
    _pdist(D, extent, pdist)
    plof = np.empty(n)
    _plof_rows(pdist, I, pdist, math.nan, plof)
    nplof = float(_nplof(plof, extent))
    prob = np.empty(n)
    _probability_rows(plof, nplof, prob)
    return pdist, plof, nplof, prob


def loop_score(D, I, ref_pdist, nplof, extent, ev_override):
    n = D.shape[0]
    pdist = np.empty(n)
    _pdist(D, extent, pdist)
    plof = np.empty(n)
    _plof_rows(pdist, I, ref_pdist, ev_override, plof)
    prob = np.empty(n)
    _probability_rows(plof, nplof, prob)
    return prob


@numba.njit(parallel=True, cache=True)
def _gaussian_direct(F, means, variances, log_weights, thresholds, full,
              L, row_max, row_argmax, row_lse, all_below):
    n, d = F.shape
    n_classes = means.shape[0]
    half_d = 0.5 * d
    for i in numba.prange(n):
        best = -math.inf
        best_c = 0
        lse_max = -math.inf
        lse_sum = 0.0
        below = True
        for c in range(n_classes):
            s = 0.0
            for t in range(d):
                diff = np.float64(F[i, t]) - np.float64(means[c, t])
                s += diff * diff
            var = np.float64(variances[c])
            value = -s / (2.0 * var) - half_d * math.log(2.0 * math.pi * var)
            if full:
                L[i, c] = value
            if value > best:
                best = value
                best_c = c
            if not value < thresholds[c]:
                below = False
            # Online logsumexp: rescale the running sum whenever the maximum grows.
            weighted = value + log_weights[c]
            if weighted == -math.inf:  # a zero-weight class adds nothing (and -inf - -inf is NaN)
                continue
            if weighted > lse_max:
                lse_sum = lse_sum * math.exp(lse_max - weighted) + 1.0
                lse_max = weighted
            else:
                lse_sum += math.exp(weighted - lse_max)
        row_max[i] = best
        row_argmax[i] = best_c
        row_lse[i] = lse_max + math.log(lse_sum)
        all_below[i] = below


def gaussian_loglik_direct(F, means, variances, log_weights, thresholds, full):
    """The direct-difference kernel (double sums of squared differences, online logsumexp):
    the fallback where the GEMM form does not apply, and a test oracle."""
    n, n_classes = F.shape[0], means.shape[0]
    L = np.empty((n, n_classes) if full else (0, 0), dtype=F.dtype)
    row_max = np.empty(n, dtype=F.dtype)
    row_argmax = np.empty(n, dtype=np.int64)
    row_lse = np.empty(n, dtype=F.dtype)
    all_below = np.empty(n, dtype=bool)
    _gaussian_direct(F, means, variances, log_weights, thresholds, full,
                     L, row_max, row_argmax, row_lse, all_below)
    return (L if full else None), row_max, row_argmax, row_lse, all_below


# GEMM form: the algorithm of csrc/cpu/gaussian_kernels.h (which defines the values and
# decisions) with the bound of fastzsl/backends/_gaussian_gemm.py. Tiles of rows run in
# parallel; per tile the centred rows go through one np.dot with the centred means (BLAS,
# input precision), then each row takes two passes over its classes plus scalar work on
# the few entries that may matter.
ARGMAX, LSE, THRESHOLD = 1, 2, 4
SCREEN_BLOCK = 256


@numba.njit(cache=True)
def _direct(F, i, means, c, var, ln):
    s = 0.0
    for t in range(F.shape[1]):
        diff = np.float64(F[i, t]) - np.float64(means[c, t])
        s += diff * diff
    return -s / (2.0 * var) - ln


@numba.njit(cache=True, fastmath={"nnan", "nsz"})
def _block_max(a, lo, hi):
    """max(a[lo:hi]) (-inf when empty); NaN-free inputs, so LLVM may vectorise it."""
    top = -math.inf
    for c in range(lo, hi):
        top = max(top, a[c])
    return top


@numba.njit(cache=True)
def _screen(L, bmax, z0, thr, wcut, lw, uniform, finite_thr, m):
    """m_c = (L_c + beta_max) - min(z0, threshold_c, wcut - lw_c) (the varying terms only
    where they vary), one loop per case so that each vectorises."""
    C = L.shape[0]
    if uniform and not finite_thr:
        for c in range(C):
            m[c] = (L[c] + bmax) - z0
    elif uniform:
        for c in range(C):
            m[c] = (L[c] + bmax) - min(z0, thr[c])
    elif not finite_thr:
        for c in range(C):
            m[c] = (L[c] + bmax) - min(z0, wcut - lw[c])
    else:
        for c in range(C):
            m[c] = (L[c] + bmax) - min(min(z0, thr[c]), wcut - lw[c])


@numba.njit(cache=True)
def _gauss_row(p, fn, F, i, means, h, k, kh, km, var, ln, lw, thr, acc, exact, kh_max,
               km_max, heavy, all_finite, lw_min, uniform, finite_thr, full, L, b, m, lst):
    """One row; returns (max, argmax, logsumexp, all_below, n_direct)."""
    C = L.shape[0]
    n_direct = 0
    # Pass A
    for c in range(C):
        L[c] = h[c] * (2.0 * np.float64(p[c]) - fn) - k[c]
    mxv = _block_max(L, 0, C)
    if full:  # the matrix holds B: fix every "need" entry
        for c in range(C):
            b[c] = kh[c] * fn + km[c]
        for c in range(C):
            if b[c] > acc * abs(L[c]):
                L[c] = _direct(F, i, means, c, var[c], ln[c])
                b[c] = 0.0
                n_direct += 1
    lo1 = mxv - (kh_max * fn + km_max)
    W = math.inf
    if heavy >= 0:
        bh = (b[heavy] if b[heavy] > 0.0 else 0.0) if full else kh[heavy] * fn + km[heavy]
        W = (L[heavy] - bh) + lw[heavy]
        if all_finite and lo1 + lw_min > W:
            W = lo1 + lw_min
    wcut = W - LSE_CUT
    bmax = kh_max * fn + km_max
    z0 = lo1
    if uniform and wcut - lw[0] < z0:
        z0 = wcut - lw[0]
    # Pass B: blocks whose screen is all negative are skipped
    _screen(L, bmax, z0, thr, wcut, lw, uniform, finite_thr, m)
    n_list = 0
    for b0 in range(0, C, SCREEN_BLOCK):
        b1 = min(b0 + SCREEN_BLOCK, C)
        if not _block_max(m, b0, b1) >= 0.0:
            continue
        for c in range(b0, b1):
            if not m[c] >= 0.0:
                continue
            bc = b[c] if full else kh[c] * fn + km[c]
            t = L[c] + bc
            flags = ((ARGMAX if t >= lo1 else 0) | (LSE if t >= wcut - lw[c] else 0)
                     | (THRESHOLD if t >= thr[c] else 0))
            if flags == 0:
                continue
            lst[n_list] = c * 8 + flags
            n_list += 1
            if not full:
                if bc > acc * abs(L[c]):
                    L[c] = _direct(F, i, means, c, var[c], ln[c])
                    n_direct += 1
                    bc = 0.0
                b[c] = bc
    # argmax over the listed candidates
    lo = -math.inf
    for j in range(n_list):
        c = lst[j] >> 3
        if (lst[j] & ARGMAX) and L[c] - b[c] > lo:
            lo = L[c] - b[c]
    n_cand = 0
    for j in range(n_list):
        c = lst[j] >> 3
        if (lst[j] & ARGMAX) and L[c] + b[c] >= lo:
            n_cand += 1
    mx = -math.inf
    am = 0
    for j in range(n_list):
        c = lst[j] >> 3
        if not (lst[j] & ARGMAX) or not L[c] + b[c] >= lo:
            continue
        if n_cand > 1 and b[c] > 0.0:
            L[c] = _direct(F, i, means, c, var[c], ln[c])
            n_direct += 1
            b[c] = 0.0
        if L[c] > mx:  # the list is in index order: the first maximum wins
            mx = L[c]
            am = c
    # all_below
    above = False
    for j in range(n_list):
        c = lst[j] >> 3
        if not (lst[j] & THRESHOLD):
            continue
        if exact and b[c] > 0.0 and abs(L[c] - thr[c]) <= b[c]:
            L[c] = _direct(F, i, means, c, var[c], ln[c])
            n_direct += 1
            b[c] = 0.0
        if not L[c] < thr[c]:
            above = True
    # logsumexp over the listed terms
    wmax = -math.inf
    for j in range(n_list):
        c = lst[j] >> 3
        if (lst[j] & LSE) and L[c] + lw[c] > wmax:
            wmax = L[c] + lw[c]
    if wmax == -math.inf:
        return mx, am, -math.inf, not above, n_direct
    total = 0.0
    err = 0.0
    for j in range(n_list):
        c = lst[j] >> 3
        x = L[c] + lw[c] - wmax
        if (lst[j] & LSE) and x >= -LSE_CUT:
            e = math.exp(x)
            total += e
            err += e * b[c]
    lse = wmax + math.log(total)
    if 2.0 * err > acc * abs(lse) * total:
        # direct values for these terms (kept in b: the row's values stay as they are)
        wmax = -math.inf
        for j in range(n_list):
            c = lst[j] >> 3
            if not (lst[j] & LSE):
                continue
            if b[c] > 0.0:
                b[c] = _direct(F, i, means, c, var[c], ln[c]) + lw[c]
                n_direct += 1
            else:
                b[c] = L[c] + lw[c]
            if b[c] > wmax:
                wmax = b[c]
        total = 0.0
        for j in range(n_list):
            c = lst[j] >> 3
            x = b[c] - wmax
            if (lst[j] & LSE) and x >= -LSE_CUT:
                total += math.exp(x)
        lse = wmax + math.log(total)
    return mx, am, lse, not above, n_direct


@numba.njit(parallel=True, cache=True)
def _gaussian_gemm(F, means, centred, center, norm_limit, h, k, kh, km, var, ln, lw, thr,
                   acc, exact, kh_max, km_max, heavy, all_finite, lw_min, uniform, finite_thr,
                   tile, full, Lout, row_max, row_argmax, row_lse, all_below, overflow):
    n, d = F.shape
    C = centred.shape[0]
    n_tiles = (n + tile - 1) // tile
    n_direct = 0
    for t in numba.prange(n_tiles):
        r0 = t * tile
        r1 = min(r0 + tile, n)
        # centred rows, padded to a full tile (the same BLAS call shape for every row)
        fc = np.zeros((tile, d), dtype=F.dtype)
        fn = np.zeros(tile)
        for row in range(r1 - r0):
            s = 0.0
            for j in range(d):
                x = F.dtype.type(np.float64(F[r0 + row, j]) - center[j])
                fc[row, j] = x
                s += np.float64(x) * np.float64(x)
            fn[row] = s
            if not s <= norm_limit:
                overflow[t] = True
        if overflow[t]:
            continue
        P = np.dot(fc, centred.T)
        L = np.empty(C)
        b = np.empty(C)
        m = np.empty(C)
        lst = np.empty(C, dtype=np.int64)
        for row in range(r1 - r0):
            i = r0 + row
            mx, am, lse, below, nd = _gauss_row(
                P[row], fn[row], F, i, means, h, k, kh, km, var, ln, lw, thr, acc, exact,
                kh_max, km_max, heavy, all_finite, lw_min, uniform, finite_thr, full, L, b, m, lst)
            row_max[i] = mx
            row_argmax[i] = am
            row_lse[i] = lse
            all_below[i] = below
            n_direct += nd
            if full:
                for c in range(C):
                    Lout[i, c] = L[c]
    return n_direct


def gaussian_loglik_gemm(F, means, variances, log_weights, thresholds, full):
    """The GEMM-form kernel: ((L or None, row_max, row_argmax, row_logsumexp, all_below),
    n_direct), or None where the GEMM form does not apply (see gaussian_cpu's twin)."""
    terms = class_terms(means, variances)
    n = F.shape[0]
    if terms is None or n == 0:
        return None
    n_classes = means.shape[0]
    L = np.empty((n, n_classes) if full else (0, 0), dtype=F.dtype)
    row_max = np.empty(n, dtype=F.dtype)
    row_argmax = np.empty(n, dtype=np.int64)
    row_lse = np.empty(n, dtype=F.dtype)
    all_below = np.empty(n, dtype=bool)
    finite = np.isfinite(log_weights)
    overflow = np.zeros((n + terms.tile - 1) // terms.tile, dtype=bool)
    with blas_single_threaded():
        n_direct = _gaussian_gemm(
            F, means, terms.centred, terms.center, terms.norm_limit, terms.h, terms.k,
            terms.kh, terms.km, np.asarray(variances, dtype=np.float64), terms.log_norm,
            log_weights, thresholds, terms.acc, F.dtype == np.float32, terms.kh.max(),
            terms.km.max(), int(np.argmax(log_weights)) if finite.any() else -1,
            bool(finite.all()), float(log_weights.min()),
            bool((log_weights == log_weights[0]).all()), bool((thresholds < np.inf).any()),
            terms.tile, bool(full), L, row_max, row_argmax, row_lse, all_below, overflow)
    if overflow.any():
        return None
    return ((L if full else None), row_max, row_argmax, row_lse, all_below), n_direct


def gaussian_loglik(F, means, variances, log_weights, thresholds, full):
    out = gaussian_loglik_gemm(F, means, variances, log_weights, thresholds, full)
    if out is None:
        return gaussian_loglik_direct(F, means, variances, log_weights, thresholds, full)
    return out[0]


KERNELS = KernelSet(
    name="numba",
    device="cpu",
    knn=knn,
    loop_fit=loop_fit,
    loop_score=loop_score,
    gaussian_loglik=gaussian_loglik,
)


def is_available():
    return True, ""
