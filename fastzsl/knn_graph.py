"""fastzsl's exact kNN as a scikit-learn kNN graph: :class:`KNNTransformer`.

A drop-in for :class:`sklearn.neighbors.KNeighborsTransformer` (Euclidean metric), so that
any scikit-learn estimator that accepts ``metric="precomputed"`` (``LocalOutlierFactor``,
``KNeighborsClassifier``, ``DBSCAN``, ``Isomap``, ``TSNE``, ...) runs on fastzsl's kernels:

>>> from sklearn.neighbors import LocalOutlierFactor
>>> from sklearn.pipeline import make_pipeline
>>> import numpy as np, fastzsl
>>> X = np.r_[np.random.default_rng(0).normal(size=(200, 2)), [[8.0, 8.0]]]
>>> lof = make_pipeline(fastzsl.KNNTransformer(n_neighbors=10),
...                     LocalOutlierFactor(n_neighbors=10, metric="precomputed"))
>>> int(lof.fit_predict(X)[-1])
-1
"""
from __future__ import annotations

import numpy as np
import sklearn
from scipy import sparse
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._validation import as_float_matrix, check_k, check_option, check_same_width
from .backends import uses_n_jobs
from .neighbors import estimator_index

MODES = ("distance", "connectivity")


class KNNTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Transform X into the sparse graph of its k nearest neighbours, on fastzsl's kernels.

    Follows :class:`sklearn.neighbors.KNeighborsTransformer` (Euclidean metric): the
    output is the CSR matrix ``kneighbors_graph`` returns, of shape (n_queries, n_fit),
    float64, each row's entries in ascending distance order.

    Parameters
    ----------
    mode : {"distance", "connectivity"}, default="distance"
        ``"distance"``: Euclidean distances; each row holds ``n_neighbors + 1`` entries, as
        scikit-learn's: a query that is a fitted sample finds itself at distance 0 (an
        explicit zero), and a consumer fitted with ``metric="precomputed"`` drops it.
        ``"connectivity"``: ones; each row holds ``n_neighbors`` entries (itself included).
    n_neighbors : int, default=5
        Neighbours per sample in the graph (see ``mode`` for the extra one).
    backend : str, default="auto"
        Kernel set for exact kNN (``fastzsl.available_backends()``).
    knn : {"auto", "exact", "kdtree", "faiss", "ivf"}, default="auto"
        kNN method, as in :class:`fastzsl.LoOP` (``"auto"``: the exact k-d tree for
        low-dimensional data, else the backend's brute-force kernel).
    knn_params : dict, optional
        ``nlist``/``nprobe`` for ``knn="ivf"``.
    n_jobs : int, optional
        Threads for fit and transform (OpenMP, BLAS, Numba, faiss), restored after each
        call: None leaves the current settings (all cores, or an outer ``threadpoolctl``
        limit), -1 uses all cores.

    Attributes
    ----------
    index_ : ExactIndex or FaissIndex
        The fitted samples.
    backend_ : str
    knn_method_ : str
    n_samples_fit_ : int
    n_features_in_ : int

    Notes
    -----
    Ties: fastzsl lists equal distances lower index first; scikit-learn's own order on
    exact ties (duplicates) may differ, so on data with duplicates the two graphs can hold
    the same distances for different, equally near, samples.

    ``fit_transform(X)`` equals ``fit(X).transform(X)`` and is faster (one self-join, which
    uses the symmetry of the distances). Its rows always start with the sample itself
    (scikit-learn's promise: "the diagonal is always explicit"), even in a group of more
    than ``n_neighbors + 1`` duplicates, where ``transform`` lists the lowest indices.
    """

    def __init__(self, *, mode="distance", n_neighbors=5, backend="auto", knn="auto",
                 knn_params=None, n_jobs=None):
        self.mode = mode
        self.n_neighbors = n_neighbors
        self.backend = backend
        self.knn = knn
        self.knn_params = knn_params
        self.n_jobs = n_jobs

    @uses_n_jobs
    def fit(self, X, y=None):
        """Index the samples X (no search yet)."""
        self._check_params()
        X = as_float_matrix(X, "X")
        self.backend_, self.knn_method_, self.index_ = estimator_index(
            X, backend=self.backend, knn=self.knn, knn_params=self.knn_params)
        self.n_samples_fit_ = X.shape[0]
        self.n_features_in_ = X.shape[1]
        self._n_features_out = self.n_samples_fit_
        return self

    @uses_n_jobs
    def transform(self, X):
        """The kNN graph of the rows of X among the fitted samples (CSR, float64)."""
        check_is_fitted(self)
        Q = as_float_matrix(X, "X")
        check_same_width(Q, self.n_features_in_, "X", type(self).__name__)
        k = self._graph_k(Q.shape[0])
        D, I = self.index_.search(Q, k)
        return self._graph(D, I)

    @uses_n_jobs
    def fit_transform(self, X, y=None):
        """``fit(X).transform(X)``, by one self-join of X."""
        self.fit(X)
        X = self.index_.reference
        n = X.shape[0]
        k = self._graph_k(n)
        D = np.zeros((n, k), dtype=X.dtype)
        I = np.empty((n, k), dtype=np.int64)
        I[:, 0] = np.arange(n)
        if k > 1:
            D[:, 1:], I[:, 1:] = self.index_.search(X, k - 1, exclude_self=True)
        return self._graph(D, I)

    # ------------------------------------------------------------------ helpers
    def _check_params(self):
        check_option(self.mode, MODES, "mode")
        check_k(self.n_neighbors, np.iinfo(np.int64).max, name="n_neighbors")

    def _graph_k(self, n_queries):
        """Entries per row: n_neighbors, plus the sample itself in "distance" mode."""
        k = self.n_neighbors + (self.mode == "distance")
        if k > self.n_samples_fit_:
            raise ValueError(  # scikit-learn's wording
                f"Expected n_neighbors <= n_samples_fit, but n_neighbors = {k}, "
                f"n_samples_fit = {self.n_samples_fit_}, n_samples = {n_queries}")
        return k

    def _graph(self, D, I):
        """CSR (n_queries, n_samples_fit) from squared distances D and indices I."""
        n, k = I.shape
        if self.mode == "distance":
            data = np.sqrt(D.astype(np.float64, copy=False)).ravel()
        else:
            data = np.ones(n * k)
        indptr = np.arange(0, n * k + 1, k)
        # built as scikit-learn builds it (a csr_array keeps int64 indices), then converted
        graph = sparse.csr_array((data, I.ravel(), indptr), shape=(n, self.n_samples_fit_))
        return graph if _sparse_interface() == "sparray" else sparse.csr_matrix(graph)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64"]  # the graph is float64
        return tags


def _sparse_interface() -> str:
    """scikit-learn's configured sparse container ("spmatrix" before it was configurable)."""
    return sklearn.get_config().get("sparse_interface", "spmatrix")
