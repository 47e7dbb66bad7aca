r"""Exact float64 kNN at float32 speed (the cython backend): a float32 screen of the
inputs rounded to float32, certified per query, then the exact float64 re-rank.

1. Screen: the float32 two-pass kernel (``knn_cpu.knn``, itself exact for its inputs) finds,
   for the rounded rows :math:`q' = \mathrm{fl}_{32}(q)`, :math:`r'_j = \mathrm{fl}_{32}(r_j)`,
   the :math:`k' = k + \max(\mathrm{EXTRA}, k / 4)` lexicographically smallest
   :math:`(e'_j, j)`, :math:`e'_j` the double sum of squared differences of the rounded rows,
   returned rounded to float32 (:math:`D'`).
2. Certificate. Rounding moves each component by at most :math:`u|x| + t` (u = 2^-24,
   t = 2^-150 where the value is subnormal), so :math:`\lVert (q' - r') - (q - r)\rVert
   \le \varepsilon = u(\lVert q\rVert + \lVert r\rVert) + 2\sqrt d\,t` and
   :math:`|E' - E| \le \delta = \varepsilon (2(\lVert q\rVert + \lVert r\rVert) + \varepsilon)`
   for the exact squared distances E, E' (as :math:`\lVert a\rVert \le \lVert q\rVert +
   \lVert r\rVert`); with :math:`\lVert r\rVert` a bound on the reference's largest norm,
   one δ per query serves every row. The kernel's sums are within :math:`(d + 2)u'`
   relative of E' and :math:`D'` within u of them, so a relative 2u covers both
   (d < 2^28). A row left off the list has :math:`E \ge D'_{(k')}(1 - 2u) - \delta`, and
   the k-th smallest exact distance is at most :math:`D'_{(k)}(1 + 2u) + \delta` (the k
   listed best bound it). Where
   :math:`D'_{(k')}(1 - 2u) - \delta > D'_{(k)}(1 + 2u) + \delta` (with a pad for forming
   the comparison in double), every row that can be in the float64 answer is listed,
   exact ties at the k-th distance included.
3. Re-rank: the listed rows get the kernels' own float64 distances (``knn_cpu.rerank``:
   the same sums as the float64 kernels) and the k lexicographically smallest pairs are the
   answer, bit for bit the float64 kernel's. Queries that fail the certificate (near-ties
   across the list's end, rows that float32 rounding merges) run the float64 kernel; so do
   inputs that are not finite in float32 (beyond its range), which keeps the float64
   kernel's behaviour there.

A search of the query-block path (more than 256 queries) runs steps 1-3 as one kernel
instead, ``knn_cpu.knn_screen32`` (csrc/cpu/knn_screen32.pxi proves it): the float32
kernel's pass 1 on each reference tile rounded on its way to the products, then the
float64 kernel's re-rank of every listed candidate within pass 2's margin widened by the
rounding's δ. No float32 copy of the reference is made (on a VM
that hands freed memory back to its host, the copy's fresh pages alone cost 0.1x-0.3x of
the search at d = 128), and the lists need no extra candidates. The copy is made by the
first search of a few queries (the split path), and a :class:`ScreenPrepared` keeps it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNIT_ROUNDOFF_32 = 2.0**-24
UNIT_ROUNDOFF_64 = 2.0**-53
SUBNORMAL_HALF_32 = 2.0**-150  # half the smallest float32 subnormal: rounding's absolute error
# Extra screened candidates per query beyond k (at least; k / 4 for larger k).
EXTRA = 8
# Queries that fail the certificate in one call: searched one by one (float64 kernel) up to
# this many, else the whole call runs the float64 kernel.
FALLBACK_ONE_BY_ONE = 32


@dataclass
class ScreenPrepared:
    """What the screen reuses across searches of one float64 reference."""

    reference32: np.ndarray | None  # fl32(reference): made by the first search that needs
    #                                 it (rows32); None before, or where not finite
    prepared32: tuple | None  # knn_cpu.rounded_norms(reference), None when not finite
    prepared64: tuple | None  # knn_cpu.reference_norms(reference) for the fallback, or None:
    #                           the fallback computes them (indexes pickled before kept them)
    norm_max: float           # at least the largest ||r_j|| of the float64 rows

    def rows32(self, knn_cpu, reference):
        """fl32(reference), made once (half the reference's memory again)."""
        if self.reference32 is None:
            self.reference32 = knn_cpu.rounded_rows(reference)[0]
        return self.reference32


def prepare(knn_cpu, reference):
    """``knn.prepare``: the reference norms for float32, a :class:`ScreenPrepared` for
    float64: the norms of its rows rounded to float32, its float32 copy only once a search
    needs it (a few queries, or the BF16 screen; searches of many run the screen in one
    kernel, which rounds the reference tile by tile). The float64 norms are not computed
    (a pass over twice the float32 rows' bytes, on every one-call search): the
    certificate's largest norm is bounded from the float32 rows' instead, and the float64
    fallback computes its own."""
    reference = np.ascontiguousarray(reference)
    if reference.dtype != np.float64:
        return knn_cpu.reference_norms(reference)
    prepared32 = knn_cpu.rounded_norms(reference)
    if prepared32 is None:
        return ScreenPrepared(None, None, None, np.inf)
    d = reference.shape[1]
    # ||r|| <= ||fl32(r)|| + ||r - fl32(r)|| <= ||fl32(r)|| + u ||r|| + sqrt(d) t; the float32
    # rows' squared norms are double sums, within (d + 2) u' of their exact values.
    norm32 = np.sqrt(prepared32[1] * (1 + (d + 2) * UNIT_ROUNDOFF_64))
    norm_max = (norm32 + np.sqrt(d) * SUBNORMAL_HALF_32) / (1 - UNIT_ROUNDOFF_32)
    return ScreenPrepared(None, prepared32, None, float(norm_max))


def knn(knn_cpu, queries, reference, k, self_offset, prepared=None, search32=None):
    """Exact kNN of float64 queries through the float32 screen (module docstring): the
    float64 kernel's (D, I) bit for bit. ``prepared``: :func:`prepare` of this reference
    (its ``prepared32`` as ``search32`` takes it); ``search32(Q, R, k, self_offset,
    prepared32)``: the float32 search, any with ``knn_cpu.knn``'s answers, or None: then
    ``knn_cpu.knn``, and searches of shapes that ``knn_cpu.screen32_applies`` to run the
    screen in one kernel instead (``knn_cpu.knn_screen32``)."""
    queries = np.ascontiguousarray(queries, dtype=np.float64)
    reference = np.ascontiguousarray(reference, dtype=np.float64)
    n_q, d = queries.shape
    n_r = reference.shape[0]
    if not isinstance(prepared, ScreenPrepared):
        prepared = prepare(knn_cpu, reference)
    if prepared.prepared32 is None:  # beyond float32's range: the float64 kernel
        return knn_cpu.knn(queries, reference, k, self_offset, prepared.prepared64)
    if search32 is None and knn_cpu.screen32_applies(n_q, n_r, k, d):
        # an index prepared while the BF16 screen ran holds its norms inside its Prepared
        norms32 = getattr(prepared.prepared32, "prepared32", prepared.prepared32)
        answer = knn_cpu.knn_screen32(queries, reference, k, self_offset, norms32)
        if answer is not None:  # else norms too large for float32 products
            D, I, failed = answer
            return _answer_failed(knn_cpu, queries, reference, k, self_offset, D, I, failed,
                                  prepared.prepared64)
    n_own = 1 if self_offset >= 0 else 0
    k_list = min(k + max(EXTRA, k // 4), n_r - n_own)
    with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below
        q32 = queries.astype(np.float32)
    if n_q == 0 or d == 0 or k_list <= k or not np.isfinite(q32).all():
        return knn_cpu.knn(queries, reference, k, self_offset, prepared.prepared64)
    reference32 = prepared.rows32(knn_cpu, reference)
    D32, I32 = (search32 or knn_cpu.knn)(q32, reference32, k_list, self_offset,
                                         prepared.prepared32)
    rows = np.arange(n_q)
    own = rows + self_offset if self_offset >= 0 else np.full(n_q, -1)
    has_own = (own >= 0) & (own < n_r)
    # every row was listed: nothing left to certify
    all_listed = k_list == n_r - has_own
    qnorm = np.sqrt(np.einsum("ij,ij->i", queries, queries))
    scale = qnorm + prepared.norm_max
    eps = UNIT_ROUNDOFF_32 * scale + 2.0 * np.sqrt(d) * SUBNORMAL_HALF_32
    delta = eps * (2.0 * scale + eps)
    last = D32[:, k_list - 1].astype(np.float64)
    kth = D32[:, k - 1].astype(np.float64)
    pad = 8 * UNIT_ROUNDOFF_64 * (last + kth + 2 * delta)
    certified = all_listed | (last * (1 - 2 * UNIT_ROUNDOFF_32) - delta
                              > kth * (1 + 2 * UNIT_ROUNDOFF_32) + delta + pad)
    D, I = knn_cpu.rerank(queries, reference, I32, k, np.where(has_own, own, -1))
    return _answer_failed(knn_cpu, queries, reference, k, self_offset, D, I, ~certified,
                          prepared.prepared64)


def _answer_failed(knn_cpu, queries, reference, k, self_offset, D, I, failed, prepared64):
    """(D, I) with the rows where ``failed`` (bool) answered by the float64 kernel: one by
    one up to FALLBACK_ONE_BY_ONE of them, else the whole call."""
    rows = np.flatnonzero(failed)
    if rows.size > FALLBACK_ONE_BY_ONE:
        return knn_cpu.knn(queries, reference, k, self_offset, prepared64)
    for i in rows:
        D[i], I[i] = (a[0] for a in knn_cpu.knn(
            queries[i:i + 1], reference, k, i + self_offset if self_offset >= 0 else -1,
            prepared64))
    return D, I
