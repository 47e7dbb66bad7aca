"""LoOP (Local Outlier Probabilities) from a kNN graph, parallel over points.

Each step is one loop over the points in float64 with the edge cases of the NumPy
reference (0/0 PLOF is 0, x/0 is +inf, nPLOF over the finite PLOFs); the results equal
the reference's within the tested tolerances. The callers allocate every output before the
parallel loops, which only write their own rows.
"""
from __future__ import annotations

import math

import numba
import numpy as np


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


def _pdist_and_plof(D, I, ref_pdist, ev_override, extent):
    """(pdist, plof) of the rows of D; ``ref_pdist=None`` means the rows are the reference."""
    n = D.shape[0]
    pdist = np.empty(n)
    _pdist(D, extent, pdist)
    plof = np.empty(n)
    _plof_rows(pdist, I, pdist if ref_pdist is None else ref_pdist, ev_override, plof)
    return pdist, plof


def _probabilities(plof, nplof):
    prob = np.empty(plof.shape[0])
    _probability_rows(plof, nplof, prob)
    return prob


def loop_fit(D, I, extent):
    pdist, plof = _pdist_and_plof(D, I, None, math.nan, extent)
    nplof = float(_nplof(plof, extent))
    return pdist, plof, nplof, _probabilities(plof, nplof)


def loop_score(D, I, ref_pdist, nplof, extent, ev_override):
    _, plof = _pdist_and_plof(D, I, ref_pdist, ev_override, extent)
    return _probabilities(plof, nplof)
