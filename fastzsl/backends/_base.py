"""The kernel contract every backend implements.

Kernels trust their inputs: the public functions (``fastzsl.knn``, ``loop_fit``,
``loop_score``, ``gaussian_loglik``) validate once and pass C-contiguous arrays of one
float dtype (float32 or float64); one exception, ``gaussian_checks_finite``. Every
backend returns the same shapes and dtypes as the NumPy reference in
:mod:`fastzsl.backends.numpy_`, which documents the exact semantics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class KernelSet:
    """The operations of one backend.

    knn(queries, reference, k, self_offset) -> (D, I)
        Exact squared Euclidean k nearest neighbours, blocked so that no
        n_queries x n_reference matrix is held. D has the input dtype, I is int64; rows are
        sorted by distance, ties broken by the lower reference index. With
        ``self_offset >= 0`` query row i is reference row ``self_offset + i`` and is left
        out of its own list (the offset lets a caller search the reference in chunks);
        ``self_offset = -1`` excludes nothing.
    loop_fit(D, I, extent) -> (pdist, plof, nplof, probabilities)
        LoOP of a reference set from its own kNN graph (self excluded). float64 outputs.
    loop_score(D, I, ref_pdist, nplof, extent, ev_override) -> probabilities
        LoOP of new points from their neighbours in the reference set. ``ev_override`` is
        NaN for the paper's definition, or a number that replaces every point's expected
        neighbour pdist (PyNomaly ``stream()`` compatibility). float64 output.
    gaussian_loglik(F, means, variances, log_weights, thresholds, full)
        -> (L or None, row_max, row_argmax, row_logsumexp, all_below)
        Isotropic Gaussian log-likelihoods L[i, c] and their fused row reductions.
    knn_self(X, k, on_progress) -> (D, I) or None
        Optional. The self-join ``knn(X, X, k, 0)`` in one call, for backends with a faster
        way to do it (each pair of points once); ``on_progress(fraction_done)`` is called
        along the way. It may decline (None) and the caller then uses ``knn``.
    gaussian_checks_finite : bool
        Whether ``gaussian_loglik`` raises :func:`fastzsl._validation.check_finite`'s error
        for a NaN or infinity in F itself (the cython GEMM form meets them in its row norms
        at no cost, its direct route in its values), so that the public function need not
        read F once more to check.
    self_join(X, k) -> a join or None
        Optional. The same self-join in pieces, with the candidate lists of only two row
        ranges in memory at a time (``fastzsl.fit_file``): the object has ``new_lists``,
        ``pair`` and ``finish`` as ``knn_cpu.SelfJoin`` documents. None where it does not
        apply.
    unit_rows(X) -> (U, zero)
        Optional. X's rows divided by their norms (in float64), in X's dtype, and a boolean
        mask of the rows of zeros (left as zeros): the cosine metric's transform
        (``fastzsl.neighbors._metrics``, whose NumPy reference it matches within the
        rounding of the norms' sums).
    """

    name: str
    device: str
    knn: Callable
    loop_fit: Callable
    loop_score: Callable
    gaussian_loglik: Callable
    gaussian_checks_finite: bool = False
    knn_self: Optional[Callable] = None
    self_join: Optional[Callable] = None
    knn_prepare: Optional[Callable] = None
    rerank: Optional[Callable] = None
    unit_rows: Optional[Callable] = None
