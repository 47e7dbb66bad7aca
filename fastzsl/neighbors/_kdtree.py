"""Exact kNN through scipy's cKDTree and an exact re-rank (:class:`KDTreeSearch`)."""
from __future__ import annotations

import numpy as np

from .._threads import openmp_threads
from ..backends import resolve
from ._search import _search_in_chunks


class KDTreeSearch:
    r"""Exact kNN through scipy's ``cKDTree``: the brute-force kernels' answer, bit for bit.

    The kernels return, per query, the k lexicographically smallest pairs (e_j, j), where
    e_j is the float64 sum of (double(q_t) - double(r_jt))^2 over t = 0..d-1 in order,
    rounded to the input dtype only on output. cKDTree ranks by its own float64 distances
    (another summation, a square root, pruning by incrementally updated box distances), so
    its order can differ from that one at near-ties. This class uses it only for candidates:

    1. ``cKDTree.query(q, m)`` returns m candidates (m = k + 1 + TREE_EXTRA, the 1 for
       ``exclude_self``; at most n_reference), the largest at tree distance t_m.
    2. Every candidate gets its exact e_j, computed exactly as the kernels do (the Cython
       kernels' own ``_sqdist`` through the backend's ``KernelSet.rerank``),
       the query's own row is dropped under ``exclude_self``, and the k lexicographically
       smallest (e_j, j) are kept; e_(k) is the k-th of them.
    3. The query is accepted when m = n_reference (every row was a candidate) or
       e_(k) < t_m^2 (1 - TREE_SLACK) - TREE_TINY. Otherwise it is searched again with
       twice as many candidates (up to all rows).

    Why an accepted answer is the brute-force one. Write E_j for the exact real squared
    distance. Every row j not returned has a tree distance >= t_m (cKDTree returns the m
    nearest by its own distances); its own rounding, from the distance and from the
    pruning bounds, is a relative error of at most a few hundred units of double roundoff
    (2^-53) for the dimensions it is used in, far below TREE_SLACK = 2^-30, so
    E_j >= t_m^2 (1 - TREE_SLACK / 2) - TREE_TINY / 2 (TREE_TINY covers gradual underflow).
    The kernels' e_j is within (d + 2) 2^-53 E_j of E_j, so e_j > e_(k) for every row not
    returned. Hence all rows with e_j <= e_(k) were candidates, and the k lexicographically
    smallest pairs among the candidates are those among all rows: the same distances and
    the same indices, including near-ties that cKDTree ordered differently (they are
    re-ranked by e_j) and exact ties at the k-th distance (all of them are candidates, so
    the lower indices win, as in the kernels). With m = n_reference every row is a
    candidate and the answer holds by definition. ``exclude_self`` drops the
    query's own row by index, as the kernels do (a duplicate of it stays, at distance 0).

    Runs ``cKDTree.query`` on the OpenMP thread count in force (``n_jobs``, an outer
    threadpoolctl limit, or all cores).
    """

    def __init__(self, reference, rerank=None):
        from scipy.spatial import cKDTree

        self.reference = reference
        self.tree = cKDTree(reference)
        self._rerank = rerank  # None: the fastest backend's (looked up per search)

    def search_all(self, Q, k, exclude_self, progress=False):
        """:meth:`ExactIndex.search` of Q (the reference rows themselves with
        ``exclude_self``), in chunks. The reference's own rows are searched in the tree's
        order (neighbouring queries visit the same nodes: measured 1.3x faster at 100k
        points, d = 4) and the results put back in row order."""
        if not exclude_self:
            return _search_in_chunks(lambda chunk, _: self.search(chunk, k), Q, k, Q.dtype,
                                     progress, TREE_CHUNK)
        order = self.tree.indices
        D_sorted, I_sorted = _search_in_chunks(
            lambda chunk, offset: self.search(chunk, k, order[offset:offset + len(chunk)]),
            Q[order], k, Q.dtype, progress, TREE_CHUNK)
        D = np.empty_like(D_sorted)
        I = np.empty_like(I_sorted)
        D[order] = D_sorted
        I[order] = I_sorted
        return D, I

    def search(self, Q, k, self_rows=None):
        """(D, I) of the k nearest rows for each row of Q (dtype of the reference), leaving
        out row ``self_rows[i]`` of query i where given."""
        n = self.reference.shape[0]
        D = np.empty((Q.shape[0], k), dtype=self.reference.dtype)
        I = np.empty((Q.shape[0], k), dtype=np.int64)
        rows = np.arange(Q.shape[0])
        m = min(n, k + (self_rows is not None) + TREE_EXTRA)
        workers = openmp_threads()
        # every backend's re-rank sums as the kernels do; the NumPy reference always has one
        rerank = getattr(self, "_rerank", None) or resolve("auto").rerank or \
            resolve("numpy").rerank
        while rows.size:
            Qr = Q[rows]
            dist, cand = self.tree.query(Qr, k=[*range(1, m + 1)], workers=workers)
            skip = None if self_rows is None else self_rows[rows]
            bd, bi = rerank(Qr, self.reference, cand, k, skip)
            if m == n:
                done = np.ones(rows.size, dtype=bool)
            else:
                bound = dist[:, -1] ** 2 * (1 - TREE_SLACK) - TREE_TINY
                done = bd[:, k - 1] < bound
            D[rows[done]] = bd[done]
            I[rows[done]] = bi[done]
            rows = rows[~done]
            m = min(n, 2 * m)
        return D, I


# KDTreeSearch: extra candidates beyond k, and the acceptance margin (its docstring).
TREE_EXTRA = 1


TREE_SLACK = 2.0 ** -30


TREE_TINY = 1e-290


# Queries per KDTreeSearch call: fewer hand-overs between cKDTree's threads and OpenMP's.
TREE_CHUNK = 65536
