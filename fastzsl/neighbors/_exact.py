"""The exact index: a backend's brute-force kernels, or the k-d tree (:class:`ExactIndex`)."""
from __future__ import annotations

import numpy as np

from .._array import on_device, to_host
from .._progress import bar as progress_bar
from .._validation import as_float_matrix, check_k, check_option
from ..backends import resolve
from ._kdtree import KDTreeSearch
from ._methods import EXACT_METHODS, resolve_method
from ._metrics import METRICS, _identity, check_metric
from ._search import SEARCH_CHUNK, _check_queries, _own_copy, _search_in_chunks


class ExactIndex:
    """Exact index: a backend's brute-force kernel, or a k-d tree with an exact re-rank.

    Parameters
    ----------
    reference : array-like of shape (n_reference, d)
        float32 or float64 (other numeric dtypes are converted, see ``fastzsl`` docs).
        The index keeps its own read-only copy (as faiss indexes do), so the norms and the
        tree it derives from the rows stay true whatever the caller does to its array.
        A CuPy reference searched by the cupy backend stays on its device (a copy there;
        CuPy has no read-only flag), and so do the results for CuPy queries.
    backend : str, default="auto"
        A name from :func:`fastzsl.available_backends`; ``"auto"`` picks ``"cupy"`` for
        a CuPy reference.
    method : {"auto", "exact", "kdtree"}, default="auto"
        ``"exact"``: the backend's brute-force kernel; ``"kdtree"``: :class:`KDTreeSearch`
        (identical results); ``"auto"``: see :func:`resolve_method`. The choice is in
        ``self.method``.
    metric : {"sqeuclidean", "euclidean", "cosine"}, default="sqeuclidean"
        The distance ``search`` returns (see :data:`METRICS`). Under ``"cosine"`` the index
        also keeps the unit-length rows it searches (``reference`` stays the rows given).
    copy : bool, default=True
        Keep a copy of the reference. False: search the caller's array itself (read-only
        through the index), which must then not change while the index is in use;
        :func:`fastzsl.knn` builds its one-call index so (copying a large reference costs
        a single search noticeably).
    """

    def __init__(self, reference, *, backend="auto", method="auto", metric="sqeuclidean",
                 copy=True):
        self.metric = check_metric(metric).name
        X = as_float_matrix(reference, "reference", keep_device=True)
        self.kernels = resolve(backend, X)
        # What a kernel reuses across searches of this reference (knn_prepare, if it has
        # one: the Cython kernels' reference norms, the cupy backend's uploaded reference),
        # made on the first search.
        self._prepared = None  # (what knn_prepare made,) once made: a tuple survives pickling
        self.method = resolve_method(method, X.shape[1], X.shape[0], backend,
                                     device_input=on_device(X))
        self.reference = _own_copy(X if self._on_gpu else to_host(X), copy)
        # the rows the kernels search: the reference itself unless the metric transforms it
        # (into a new array: nobody else holds it)
        rows = METRICS[self.metric].rows
        self._rows = (self.reference if rows is _identity else
                      _own_copy(rows(self.reference, "reference", self.kernels), copy=False))
        check_option(self.method, EXACT_METHODS, "ExactIndex method")
        if self.method == "kdtree":
            self._tree = KDTreeSearch(self._rows)

    @property
    def ntotal(self) -> int:
        return self.reference.shape[0]

    @property
    def d(self) -> int:
        return self.reference.shape[1]

    @property
    def _on_gpu(self) -> bool:
        """Whether searches run on a GPU, where a CuPy reference and queries stay."""
        return self.method == "exact" and self.kernels.device == "cuda"

    def search(self, queries, k, *, exclude_self=False, progress=False, squared=False):
        """The k nearest reference rows of each query.

        Parameters
        ----------
        queries : array-like of shape (n_queries, d)
        k : int
            1 <= k <= ntotal (ntotal - 1 with ``exclude_self``).
        exclude_self : bool, default=False
            Query row i is reference row i and is left out of its own neighbours (by index:
            a duplicate of it still counts, at distance 0). Needs n_queries == ntotal.
        progress : bool, default=False
            Show a progress bar (queries are searched in chunks of SEARCH_CHUNK rows).
        squared : bool, default=False
            Return the squares of the metric's distances (what LoOP averages).

        Returns
        -------
        D : ndarray of shape (n_queries, k)
            The metric's distances (squared Euclidean by default), ascending, in the
            reference's dtype (CuPy for CuPy queries on the cupy backend).
        I : ndarray of shape (n_queries, k), int64
            Reference row indices; equal distances list the lower index first.
        """
        Q = _check_queries(queries, self, exclude_self, keep_device=self._on_gpu)
        k = check_k(k, self.ntotal, exclude_self=exclude_self)
        metric = METRICS[self.metric]
        Q = metric.rows(Q, "queries", self.kernels)
        D, I = self._search_rows(Q, k, exclude_self, progress)
        return (metric.squared(D) if squared else metric.distance(D)), I

    def _search_rows(self, Q, k, exclude_self, progress):
        """Squared Euclidean kNN of the (transformed) queries among self._rows."""
        if self.method == "kdtree":
            return self._tree.search_all(Q, k, exclude_self, progress)
        if exclude_self and self.kernels.knn_self is not None and _same_rows(Q, self._rows):
            result = _self_join(self.kernels.knn_self, Q, k, progress)
            if result is not None:
                return result

        knn_kernel = self._knn_kernel()

        def search_chunk(chunk, offset):
            return knn_kernel(chunk, self._rows, k, offset if exclude_self else -1)

        return _search_in_chunks(search_chunk, Q, k, Q.dtype, progress)

    def __setstate__(self, state):
        # indexes pickled before metrics searched their reference itself
        state.setdefault("metric", "sqeuclidean")
        state.setdefault("_rows", state["reference"])
        self.__dict__.update(state)

    def _knn_kernel(self):
        """The backend's knn, with what it prepared for this reference bound in."""
        knn_kernel = self.kernels.knn
        prepare = getattr(self.kernels, "knn_prepare", None)
        if prepare is None:
            return knn_kernel
        if self._prepared is None:
            self._prepared = (prepare(self._rows),)
        prepared = self._prepared[0]
        return lambda Q, R, k, self_offset: knn_kernel(Q, R, k, self_offset, prepared)


def _same_rows(Q, reference):
    return Q is reference or (Q.shape == reference.shape and np.array_equal(Q, reference))


def _self_join(knn_self, X, k, progress):
    """A backend's one-call self-join (None if it declines), with a progress bar on request
    for a join long enough to watch (more points than one search chunk)."""
    bar = None

    def advance(fraction):
        nonlocal bar
        if bar is None:
            bar = progress_bar(X.shape[0], f"kNN k={k} (self-join)", unit="point")
        bar.update(round(fraction * X.shape[0]) - bar.n)

    try:
        watch = progress and X.shape[0] > SEARCH_CHUNK
        return knn_self(X, k, advance if watch else None)
    finally:
        if bar is not None:
            bar.close()
