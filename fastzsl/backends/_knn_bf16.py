r"""Exact float32 kNN past the float32 GEMM roofline (the cython backend): a bfloat16 screen,
certified per query, then the exact re-rank. CPUs with AVX512_BF16 (AMD Zen 4, Intel since
Cooper Lake) multiply bfloat16 pairs at twice the float32 FMA rate.

1. Screen (``knn_cpu.bf16_screen``): the rows rounded to bfloat16, :math:`q'`, :math:`r'_j`
   (round to nearest even, magnitudes below FLT_MIN to 0); dot products :math:`P'_j` of the
   rounded rows in float32 (every product of two bfloat16 values is exact in float32, so only
   the float32 sums round); each query keeps the L smallest :math:`v'_j = R'_j - 2P'_j`,
   :math:`R'_j = \lVert r'_j\rVert^2` (double, rounded to float32), and T is the k-th.
2. Certificate. With :math:`Q' = \lVert q'\rVert^2`, the float32 kernel's bound (knn_cpu's
   docstring) gives :math:`|v'_j - (E'_j - Q')| \le b`, :math:`E'_j = \lVert q' - r'_j\rVert^2`
   exactly, for :math:`b = ((d + 3)u + (3d + 4)u')(Q' + R'_{max})(1 + 2(d + 2)u) + (2d + 4)
   t` (u = 2^-24, u' = 2^-53, t = FLT_MIN: the hardware flushes subnormal results to 0, an
   error below t per operation). The rounding moves a distance's square root by at most
   :math:`\varepsilon = \lVert q - q'\rVert + \max_j\lVert r_j - r'_j\rVert` (the measured
   rounding errors, not a worst case), and the kernels' double distance e is within
   :math:`\eta = 2(d + 2)u'(Q + R_{max})` of the exact E. The k listed rows with
   :math:`v' \le T` have :math:`E' \le U' = T + Q' + b`, so the k-th smallest e is at most
   :math:`U = U' + 2\varepsilon\sqrt{U'} + \varepsilon^2 + \eta`; a member j of the answer
   has :math:`e_j \le U`, :math:`E_j \le U + \eta`, :math:`\sqrt{E'_j} \le \sqrt{U + \eta} +
   \varepsilon`, so :math:`v'_j \le (\sqrt{U + \eta} + \varepsilon)^2 - Q' + b`, the limit.
   b, ε and η enter doubled (SAFETY = 2), and the limit is padded by
   :math:`8u'(|\mathrm{limit}| + Q' + U)` for forming it in double. The window is thus a
   relative width of about :math:`4\varepsilon / \sqrt{T}` of the k-th distance: the rows'
   rounding against the distance, not against the norms. A list drops only rows whose v' is
   at least its largest entry, so where that entry is above the limit, every member of the
   answer is listed.
3. Re-rank: the listed rows within the limit get the kernels' own distances
   (``knn_cpu.rerank``) and the k lexicographically smallest (distance, index) pairs are the
   answer, bit for bit the float32 kernel's. Queries that fail the certificate (rows far
   from the origin against the k-th distance, where bfloat16's 8 bits cannot tell
   neighbours apart) run the float32 kernel.

Where the rounding is too coarse for the data (rows far from the origin against the
distances between neighbours), most queries would fail and the screen would be wasted work.
So :func:`knn` first screens a pilot chunk of queries with the longest lists
(``list_len_max``): where fewer than ``MIN_CERTIFIED`` of them certify, or where the lists
they need would cost more to keep than the screen saves (``UPKEEP_PER_SAVED_PRODUCT``), the
float32 kernel answers every query (the trial costs a few percent); else the others are
screened with lists 25% longer than the 95th percentile of the pilot's windows.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

U32 = 2.0**-24
U64 = 2.0**-53
FLT_MIN = float(np.finfo(np.float32).tiny)
SAFETY = 2.0
# Below this many dimensions the dot products are too cheap for the screen to pay.
MIN_DIM = 32
# Norm sums above this could overflow the float32 dot products: no screen.
NORM_LIMIT = 1e37
# Queries screened, certified and re-ranked together (their lists: CHUNK x L entries, fewer
# queries where those would pass CHUNK_BYTES).
CHUNK = 8192
CHUNK_BYTES = 64 << 20
# The pilot: its queries, and the share of them that must certify for the screen to run on
# the others (screening costs about half the float32 kernel, each failed query the whole of
# it again).
FIRST_CHUNK = 64
MIN_CERTIFIED = 0.8
# A list of L kept over n_r rows takes about L (1 + ln(n_r / L)) insertions per query; the
# screen halves the cost of the n_r d products. Where insertions exceed this share of the
# products the screen ran slower than the float32 kernel (the LoOP reference of fastzsl
# train, d = 50, 38k rows, L = 105: 0.85x with sorted lists, 0.89x with reservoirs; ratio
# 3.8e-4) and where below it faster (standard normal rows, d = 50 / 128 / 512: 1.1e-4 /
# 5e-5 / 3e-5, 1.4x-1.7x).
UPKEEP_PER_SAVED_PRODUCT = 2e-4


def list_len_max(k, d):
    """The longest list a screen keeps. The certificate's window is a relative width of the
    k-th distance, and in more dimensions more rows crowd into it (standard normal rows,
    k = 20, 1,000 queries against 50,000: every list of k + 52 certified at d = 128, 36% at
    d = 512, all of them with k + 130), so it grows with d sqrt(k) like the float32
    kernel's; beyond it the list's upkeep costs more than the screen saves."""
    return 2 * k + 32 + int(d * np.sqrt(k) / 8)


def mode(knn_cpu):
    """How float32 kNN screens, from ``FASTZSL_BF16``: "auto" (the default: the AVX512_BF16
    tiles where the CPU has them, else no screen), "off", or "emulate" (the portable tiles
    on any CPU: the same answers, slowly; for tests). Returns "hw", "emulate" or None."""
    setting = os.environ.get("FASTZSL_BF16", "auto").strip().lower()
    if setting == "off":
        return None
    if setting == "emulate":
        return "emulate"
    if setting != "auto":
        raise ValueError(f"FASTZSL_BF16 must be auto, off or emulate, not {setting!r}")
    return "hw" if _hw_available(knn_cpu) else None


@functools.lru_cache(maxsize=None)
def _hw_available(knn_cpu):
    return knn_cpu.bf16_hw_available()


@dataclass(frozen=True)
class Bf16Prepared:
    """What the screen reuses across searches of one float32 reference."""

    packed: np.ndarray         # knn_cpu.bf16_pack(reference)[0]
    rounded_norms: np.ndarray  # R'_j as float32
    rounded_norm_max: float    # R'_max
    error_max: float           # max_j ||r_j - r'_j||
    norm_max: float            # max_j ||r_j||


class Prepared:
    """What ``cython_.prepare`` keeps for a float32 reference: the float32 kernel's norms,
    and the screen's view of the reference (:class:`Bf16Prepared`), made by the first search
    that screens (one of more than ``knn_cpu.split_max_queries`` queries: an index searched
    only a few queries at a time never makes it) and dropped where a pilot rules the screen
    out."""

    def __init__(self, prepared32):
        self.prepared32 = prepared32
        self._view = None  # a Bf16Prepared; False where the screen cannot apply or pay

    def view(self, knn_cpu, reference):
        if self._view is None:
            self._view = prepare(knn_cpu, reference) or False
        return self._view or None

    def has_view(self):
        """Whether a search has made the screen's view (later searches reuse it)."""
        return bool(self._view)

    def does_not_pay(self):
        """A pilot failed too often: later searches of this reference skip the screen (the
        rounding's error against the k-th distance is a property of the data)."""
        self._view = False

    def pays(self):
        """Whether no pilot has ruled the screen out for this reference yet."""
        return self._view is not False


def prepare(knn_cpu, reference):
    """The screen's view of a float32 reference (finite, C-contiguous, norms within the
    float32 kernels' limit), or None where the screen cannot apply."""
    if reference.shape[1] < MIN_DIM or reference.shape[0] == 0:
        return None
    packed, (rounded_sq, error, sq) = knn_cpu.bf16_pack(reference)
    rounded_norms = rounded_sq.astype(np.float32)
    if not (np.isfinite(rounded_norms).all() and rounded_sq.max() <= NORM_LIMIT):
        return None
    return Bf16Prepared(packed=packed, rounded_norms=rounded_norms,
                        rounded_norm_max=float(rounded_sq.max()),
                        error_max=float(error.max()), norm_max=float(np.sqrt(sq.max())))


def limits(T, k, d, query_stats, rounded_norm_max, error_max, norm_max):
    """Per query, the largest screened value a member of its float32 answer can have
    (module docstring, step 2), given T, the k-th smallest screened value."""
    q_rounded_sq, q_error, q_sq = query_stats
    b = SAFETY * ((((d + 3) * U32 + (3 * d + 4) * U64) * (q_rounded_sq + rounded_norm_max)
                   * (1 + 2 * (d + 2) * U32) + (2 * d + 4) * FLT_MIN))
    eps = SAFETY * (q_error + error_max)
    eta = SAFETY * 2 * (d + 2) * U64 * (q_sq + norm_max**2)
    # E' of the k listed best, then their kernel distances e: the k-th e is at most upper.
    listed = np.maximum(T + q_rounded_sq + b, 0.0)
    upper = listed + 2 * eps * np.sqrt(listed) + eps * eps + eta
    # A member of the answer: E <= upper + eta, so sqrt(E') <= sqrt(E) + eps.
    limit = (np.sqrt(upper + eta) + eps) ** 2 - q_rounded_sq + b
    return limit + 8 * U64 * (np.abs(limit) + q_rounded_sq + upper)


def screen_chunk(knn_cpu, queries, reference, k, L, self_offset, view, hw):
    """(D, I, certified, need) of one chunk of float32 queries through the screen with lists
    of L: rows of D, I where certified is False are not answers; need: how many listed rows
    each query's window holds (inf where the window may reach beyond its list)."""
    n_q, d = queries.shape
    n_r = reference.shape[0]
    n_rows = n_r - (1 if self_offset >= 0 and self_offset + n_q <= n_r else 0)
    L = min(L, n_rows)
    V, cand = knn_cpu.bf16_screen(queries, view.packed, view.rounded_norms, L, self_offset,
                                  hw == "hw")
    stats = knn_cpu.bf16_row_stats(queries)
    # Rows whose norms could overflow the float32 products, or whose list is short (values
    # not finite): the float32 kernel.
    usable = (stats[0] + view.rounded_norm_max <= NORM_LIMIT) & (cand[:, 0] >= 0)
    with np.errstate(invalid="ignore", over="ignore"):
        limit = limits(V[:, -k].astype(np.float64), k, d, stats, view.rounded_norm_max,
                       view.error_max, view.norm_max)
        # the list's largest entry above the limit, or a list of every row
        certified = usable & ((V[:, 0] > limit) | (L == n_rows))
        # only the candidates within the limit can be in the answer: re-rank those
        within = V <= limit[:, None]
    need = np.where(certified, within.sum(1), np.inf)
    cand[~within | ~certified[:, None]] = -1
    own = (np.arange(n_q) + self_offset if self_offset >= 0 else np.full(n_q, -1))
    D, I = knn_cpu.rerank(queries, reference, cand, k, np.where(own < n_r, own, -1))
    return D.astype(np.float32), I, certified, need


def knn(knn_cpu, queries, reference, k, self_offset, prepared32, make_view, hw):
    """Exact float32 kNN through the BF16 screen: ``knn_cpu.knn``'s (D, I) bit for bit.
    ``prepared32``: ``knn_cpu.reference_norms(reference)``; ``make_view()``: the reference's
    :class:`Bf16Prepared` (or None); ``hw``: "hw" or "emulate" (:func:`mode`). Returns None,
    having done nothing, where the screen does not apply (the caller runs the float32
    kernel), else (D, I, pays): pays is False where the pilot ruled the screen out and the
    float32 kernel answered every query."""
    n_q, d = queries.shape
    n_r = reference.shape[0]
    if prepared32 is None or n_q == 0 or d < MIN_DIM or n_r <= k + 1:
        return None
    view = make_view()
    if view is None:
        return None
    D = np.empty((n_q, k), dtype=np.float32)
    I = np.empty((n_q, k), dtype=np.int64)
    # The pilot: lists of list_len_max; the windows they measure set the others' lists.
    first = min(FIRST_CHUNK, n_q)
    D[:first], I[:first], ok, need = screen_chunk(
        knn_cpu, queries[:first], reference, k, list_len_max(k, d), self_offset, view, hw)
    L = _paying_list_len(ok, need, k, d, n_r)
    if L is None:
        D[:], I[:] = knn_cpu.knn(queries, reference, k, self_offset, prepared32)
        return D, I, False
    failed = [np.flatnonzero(~ok)]
    chunk = max(FIRST_CHUNK, min(CHUNK, CHUNK_BYTES // (12 * L)))  # float32 + int64 a slot
    for start in range(first, n_q, chunk):
        stop = min(n_q, start + chunk)
        offset = self_offset + start if self_offset >= 0 else -1
        D[start:stop], I[start:stop], ok, _ = screen_chunk(
            knn_cpu, queries[start:stop], reference, k, L, offset, view, hw)
        failed.append(start + np.flatnonzero(~ok))
    failed = np.concatenate(failed)
    if failed.size:
        D[failed], I[failed] = _float32_rows(knn_cpu, queries, reference, k, self_offset,
                                             failed, prepared32)
    return D, I, True


def _paying_list_len(ok, need, k, d, n_r):
    """The others' list length from the pilot (which certified ``ok`` with windows of
    ``need`` rows): 25% above the windows' 95th percentile; None where the screen would
    not pay: too few certified (the rounding is too coarse for this data), or the lists'
    upkeep would cost more than the halved products save."""
    if ok.mean() < MIN_CERTIFIED:
        return None
    longest = list_len_max(k, d)
    L = int(min(longest, np.ceil(1.25 * np.percentile(np.minimum(need, longest), 95)) + 8))
    if L * (1 + np.log(max(n_r / L, 1.0))) > UPKEEP_PER_SAVED_PRODUCT * n_r * d:
        return None
    return L


def _float32_rows(knn_cpu, queries, reference, k, self_offset, rows, prepared32):
    """The float32 kernel's answers for queries ``rows``: one call; with a self offset, k + 1
    neighbours without it and each query's own row dropped (the k lexicographically smallest
    of the others: the same pairs)."""
    if self_offset < 0:
        return knn_cpu.knn(queries[rows], reference, k, -1, prepared32)
    own = rows + self_offset
    D, I = knn_cpu.knn(queries[rows], reference, k + 1, -1, prepared32)
    keep = I != own[:, None]
    # Rows whose own row was not among the k + 1: keep the first k.
    keep[keep.all(axis=1), k] = False
    return D[keep].reshape(len(rows), k), I[keep].reshape(len(rows), k)
