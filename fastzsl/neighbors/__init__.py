"""k-nearest-neighbour search: FAISS-like index objects and the ``knn`` function.

Two kinds of index share one interface (``ntotal``, ``d``, ``search(queries, k)``):

- :class:`ExactIndex` keeps the reference matrix and answers exactly (squared Euclidean
  distances as sums of squared differences, so duplicates are exactly 0 apart; ties go to
  the lower index; deterministic), by one of two methods with identical results:
  ``"exact"``, a backend's blocked brute-force kernel, or ``"kdtree"``, scipy's
  ``cKDTree`` for candidates and an exact re-rank (:class:`KDTreeSearch`), which wins on
  low-dimensional data. ``"auto"`` picks between them (:func:`resolve_method`).
- :class:`FaissIndex` wraps faiss ``IndexFlatL2`` (``method="faiss"``: exact up to float32
  rounding of the ||q||^2 - 2 q.r + ||r||^2 expansion) or ``IndexIVFFlat``
  (``method="ivf"``: approximate, tuned by ``nlist`` and ``nprobe``).

Metrics (:data:`METRICS`, scikit-learn's names) are transforms at the kNN boundary, as in
faiss and pynndescent: the kernels and their proofs only know squared Euclidean distances.
``"sqeuclidean"`` (the default) is the kernels' own; ``"euclidean"`` takes the square root
after the search; ``"cosine"`` (1 - cos) normalises the rows first (in float64, then the
input dtype) and halves the squared distances after (||a - b||^2 = 2 - 2 cos for unit
rows); a zero row has no direction, and is refused with an error naming it. The neighbours
are the kernels' exact answer for the transformed rows (ties to the lower index).
"""
from __future__ import annotations

import logging

from .._array import like, on_device
from ..backends import resolve, thread_limits
from ._exact import ExactIndex
from ._faiss import FaissIndex
from ._kdtree import TREE_CHUNK, TREE_EXTRA, TREE_SLACK, TREE_TINY, KDTreeSearch
from ._methods import (EXACT_METHODS, FAISS_METHODS, KDTREE_MAX_DIM, KDTREE_MIN_N, METHODS,
                       check_method, resolve_method)
from ._metrics import METRICS, Metric, check_metric
from ._search import SEARCH_CHUNK

__all__ = ["EXACT_METHODS", "ExactIndex", "FAISS_METHODS", "FaissIndex", "KDTREE_MAX_DIM",
           "KDTREE_MIN_N", "KDTreeSearch", "METHODS", "METRICS", "Metric", "SEARCH_CHUNK",
           "TREE_CHUNK", "TREE_EXTRA", "TREE_SLACK", "TREE_TINY", "check_method",
           "check_metric", "estimator_index", "knn", "make_index", "resolve_method"]

logger = logging.getLogger(__name__)


def make_index(reference, *, method="auto", backend="auto", nlist=None, nprobe=None,
               metric="sqeuclidean", copy=True):
    """Build the index for ``method`` (see :data:`METHODS`) over ``reference``: an
    :class:`ExactIndex` for "auto", "exact" and "kdtree", else a :class:`FaissIndex`;
    ``metric``: see :data:`METRICS`; ``copy=False``: an exact index searches ``reference``
    itself (for an index used within one call)."""
    check_metric(metric)
    check_method(method)
    if method in EXACT_METHODS:
        return ExactIndex(reference, backend=backend, method=method, metric=metric,
                          copy=copy)
    if backend not in ("auto", None):
        raise ValueError(
            f"backend={backend!r} applies to method='exact'; method={method!r} runs on faiss")
    return FaissIndex(reference, method=method, nlist=nlist, nprobe=nprobe, metric=metric)


def estimator_index(X, *, backend, knn, knn_params=None, metric="sqeuclidean"):
    """``(backend name, kNN method, index)`` for an estimator's reference set X: the names
    resolved ("auto" chosen) and the index built (with ``metric``). The backend runs exact
    kNN itself; the tree and faiss bring their own kernels."""
    backend_name = resolve(backend, X).name
    method = resolve_method(knn, X.shape[1], X.shape[0], backend, device_input=on_device(X))
    index = make_index(X, method=method, backend=backend_name if method == "exact" else "auto",
                       metric=metric, **(knn_params or {}))
    return backend_name, method, index


def knn(queries, reference, k, *, exclude_self=False, backend="auto", method="auto",
        nlist=None, nprobe=None, progress=False, n_jobs=None, metric="sqeuclidean"):
    """k nearest neighbours of each query row among the reference rows.

    Parameters
    ----------
    queries : array-like of shape (n_queries, d)
        NumPy, torch or CuPy array; the results come back in the same kind. CuPy queries
        and reference stay on their device with the cupy backend (which ``"auto"`` picks
        for a CuPy reference).
    reference : array-like of shape (n_reference, d)
    k : int
        Neighbours per query, 1 <= k <= n_reference (n_reference - 1 with ``exclude_self``).
    exclude_self : bool, default=False
        ``queries`` are the reference rows; row i is left out of its own neighbours.
    backend : str, default="auto"
        Kernel set for ``method="exact"``; see :func:`fastzsl.available_backends`.
    method : {"auto", "exact", "kdtree", "faiss", "ivf"}, default="auto"
        ``"exact"``: fastzsl's blocked brute force (exact, ties to the lower index).
        ``"kdtree"``: scipy's cKDTree plus an exact re-rank, the same results
        (:class:`KDTreeSearch`). ``"auto"``: ``"kdtree"`` on low-dimensional data when no
        backend is named, else ``"exact"`` (:func:`resolve_method`).
        ``"faiss"``: faiss ``IndexFlatL2``. ``"ivf"``: faiss ``IndexIVFFlat`` (approximate).
    nlist, nprobe : int, optional
        IVF parameters (see :class:`FaissIndex`).
    progress : bool, default=False
        Show a progress bar over the queries.
    n_jobs : int, optional
        Threads for this call (OpenMP, BLAS, Numba, faiss), restored afterwards: None
        leaves the current settings (all cores, or an outer ``threadpoolctl`` limit), -1
        uses all cores.
    metric : {"sqeuclidean", "euclidean", "cosine"}, default="sqeuclidean"
        The distance (scikit-learn's names; see :data:`METRICS`): squared Euclidean,
        Euclidean, or cosine distance 1 - cos (rows of zeros are refused).

    Returns
    -------
    D : array of shape (n_queries, k)
        The metric's distances in ascending order, in the input float dtype.
    I : array of shape (n_queries, k), int64
        Indices into ``reference``.

    Examples
    --------
    >>> import numpy as np, fastzsl
    >>> X = np.array([[0.0], [1.0], [3.0]])
    >>> D, I = fastzsl.knn(X, X, 1, exclude_self=True, backend="numpy")
    >>> D.ravel().tolist(), I.ravel().tolist()
    ([1.0, 1.0, 4.0], [1, 0, 1])
    """
    kernels = resolve(backend if method in EXACT_METHODS else "auto", reference)
    with thread_limits(n_jobs, backend=kernels, knn=method):
        index = make_index(reference, method=method, backend=backend, nlist=nlist,
                           nprobe=nprobe, metric=metric, copy=False)  # lives for this call
        D, I = index.search(queries, k, exclude_self=exclude_self, progress=progress)
    return like(D, queries), like(I, queries)
