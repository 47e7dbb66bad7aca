"""The NumPy reference backend: readable, vectorised, float64 accumulation.

This is the oracle every other backend is tested against, so it favours the definition
over speed: distances are sums of squared differences (duplicates give exactly 0), and
sorting is stable so ties go to the lower reference index.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf, logsumexp

from ._base import KernelSet

# Rows per block are chosen so one block of pairwise differences stays near this size.
_BLOCK_BYTES = 32 * 2**20


def _rows_per_block(n_other: int, d: int) -> int:
    return max(1, _BLOCK_BYTES // max(1, n_other * d * 8))


def knn(queries, reference, k, self_offset):
    n_q = queries.shape[0]
    D = np.empty((n_q, k), dtype=queries.dtype)
    I = np.empty((n_q, k), dtype=np.int64)
    ref64 = reference.astype(np.float64)
    step = _rows_per_block(reference.shape[0], reference.shape[1])
    for start in range(0, n_q, step):
        stop = min(start + step, n_q)
        diff = queries[start:stop, None, :].astype(np.float64) - ref64[None, :, :]
        d2 = np.einsum("qrd,qrd->qr", diff, diff)
        if self_offset >= 0:
            rows = np.arange(stop - start)
            d2[rows, rows + start + self_offset] = np.inf
        order = np.argsort(d2, axis=1, kind="stable")[:, :k]
        D[start:stop] = np.take_along_axis(d2, order, axis=1)
        I[start:stop] = order
    return D, I


def rerank(Q, reference, cand, k, self_rows):
    """The k lexicographically smallest (e_j, j) over each query's candidates ``cand[i]``:
    e_j summed in float64 in dimension order, as the kernels sum (``self_rows[i]`` left out
    of query i's list where given)."""
    e = np.zeros(cand.shape, dtype=np.float64)
    for t in range(Q.shape[1]):
        diff = Q[:, t, None].astype(np.float64) - reference[cand, t].astype(np.float64)
        e += diff * diff
    if self_rows is not None:
        e[cand == self_rows[:, None]] = np.inf
    order = np.lexsort((cand, e), axis=-1)[:, :k]
    return np.take_along_axis(e, order, axis=1), np.take_along_axis(cand, order, axis=1)


def probabilistic_distance(D, extent):
    """pdist = extent * sqrt(mean squared distance to the k neighbours)."""
    return extent * np.sqrt(D.astype(np.float64).mean(axis=1))


def plof_from(pdist, ev):
    """PLOF = pdist / ev - 1, with 0/0 -> 0 and x/0 -> +inf for x > 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        plof = pdist / ev - 1.0
    zero_ev = ev == 0
    plof[zero_ev] = np.where(pdist[zero_ev] > 0, np.inf, 0.0)
    return plof


def nplof_from(plof, extent):
    """nPLOF = extent * sqrt(mean PLOF^2) over the finite PLOFs (0 when there are none)."""
    finite = plof[np.isfinite(plof)]
    if finite.size == 0:
        return 0.0
    return float(extent * np.sqrt(np.mean(finite**2)))


def probability_from(plof, nplof):
    """LoOP = max(0, erf(PLOF / (nPLOF sqrt 2))); where nPLOF = 0 every PLOF > 0 gives 1.
    ``nplof`` is one number, or one per point (PyNomaly's per-cluster nPLOF)."""
    nplof = np.asarray(nplof, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = plof / (nplof * np.sqrt(2.0))
    ratio = np.where(nplof > 0, ratio, np.where(plof > 0, np.inf, 0.0))
    return np.maximum(0.0, erf(ratio))


def loop_fit(D, I, extent):
    pdist = probabilistic_distance(D, extent)
    plof = plof_from(pdist, pdist[I].mean(axis=1))
    nplof = nplof_from(plof, extent)
    return pdist, plof, nplof, probability_from(plof, nplof)


def loop_score(D, I, ref_pdist, nplof, extent, ev_override):
    pdist = probabilistic_distance(D, extent)
    if np.isnan(ev_override):
        ev = ref_pdist[I].mean(axis=1)
    else:
        ev = np.full_like(pdist, ev_override)
    return probability_from(plof_from(pdist, ev), nplof)


def gaussian_loglik(F, means, variances, log_weights, thresholds, full):
    n, d = F.shape
    n_classes = means.shape[0]
    var = variances.astype(np.float64)
    log_norm = -0.5 * d * np.log(2.0 * np.pi * var)
    means64 = means.astype(np.float64)
    L_all = np.empty((n, n_classes), dtype=F.dtype) if full else None
    row_max = np.empty(n, dtype=F.dtype)
    row_argmax = np.empty(n, dtype=np.int64)
    row_lse = np.empty(n, dtype=F.dtype)
    all_below = np.empty(n, dtype=bool)
    step = _rows_per_block(n_classes, d)
    for start in range(0, n, step):
        stop = min(start + step, n)
        diff = F[start:stop, None, :].astype(np.float64) - means64[None, :, :]
        sq = np.einsum("ncd,ncd->nc", diff, diff)
        L = -sq / (2.0 * var) + log_norm
        if full:
            L_all[start:stop] = L
        row_argmax[start:stop] = np.argmax(L, axis=1)
        row_max[start:stop] = L.max(axis=1)
        row_lse[start:stop] = logsumexp(L + log_weights, axis=1)
        all_below[start:stop] = np.all(L < thresholds, axis=1)
    return L_all, row_max, row_argmax, row_lse, all_below


KERNELS = KernelSet(
    name="numpy",
    device="cpu",
    knn=knn,
    loop_fit=loop_fit,
    loop_score=loop_score,
    gaussian_loglik=gaussian_loglik,
    rerank=rerank,
)


def is_available():
    return True, ""
