"""fastzsl's exact kNN as a scikit-learn kNN graph: :class:`KNNTransformer`.

A drop-in for :class:`sklearn.neighbors.KNeighborsTransformer` (its constructor, and the
Euclidean, squared Euclidean and cosine metrics), so that any scikit-learn estimator that accepts ``metric="precomputed"`` (``LocalOutlierFactor``,
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
from .neighbors import EXACT_METHODS, METHODS, METRICS, estimator_index

MODES = ("distance", "connectivity")
# scikit-learn's algorithm -> fastzsl's kNN method (all exact; "ball_tree" runs the k-d tree)
ALGORITHMS = {"auto": "auto", "brute": "exact", "kd_tree": "kdtree", "ball_tree": "kdtree"}


class KNNTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Transform X into the sparse graph of its k nearest neighbours, on fastzsl's kernels.

    Follows :class:`sklearn.neighbors.KNeighborsTransformer` and takes its constructor, so
    existing code switches with one import line: the output is the CSR matrix
    ``kneighbors_graph`` returns, of shape (n_queries, n_fit), float64, each row's entries
    in ascending distance order.

    Parameters
    ----------
    mode : {"distance", "connectivity"}, default="distance"
        ``"distance"``: the metric's distances; each row holds ``n_neighbors + 1`` entries,
        as scikit-learn's: a query that is a fitted sample finds itself at distance 0 (an
        explicit zero), and a consumer fitted with ``metric="precomputed"`` drops it.
        ``"connectivity"``: ones; each row holds ``n_neighbors`` entries (itself included).
    n_neighbors : int, default=5
        Neighbours per sample in the graph (see ``mode`` for the extra one).
    algorithm : {"auto", "brute", "kd_tree", "ball_tree"}, default="auto"
        scikit-learn's name for the search, mapped to fastzsl's exact methods: "brute" is
        the backend's brute-force kernel, "kd_tree" and "ball_tree" the k-d tree with an
        exact re-rank, "auto" either (see ``knn``). Every one gives the same graph.
    leaf_size : int, default=30
        Accepted for scikit-learn's constructor; fastzsl's searches do not use it.
    metric : {"minkowski", "euclidean", "sqeuclidean", "cosine"}, default="minkowski"
        The distance in the graph: "minkowski" with ``p=2`` and "euclidean" are Euclidean,
        "sqeuclidean" its square, "cosine" 1 - cos (rows of zeros are refused). Other
        metrics (and p != 2) raise an error naming these.
    p : float, default=2
        Minkowski's power: only 2 (Euclidean) is supported.
    metric_params : dict, optional
        Only ``{"p": 2}`` (or empty) is supported.
    n_jobs : int, optional
        Threads for fit and transform (OpenMP, BLAS, Numba, faiss), restored after each
        call: None leaves the current settings (all cores, or an outer ``threadpoolctl``
        limit), -1 uses all cores.
    backend : str, default="auto"
        Kernel set for exact kNN (``fastzsl.available_backends()``).
    knn : {"auto", "exact", "kdtree", "faiss", "ivf"}, default="auto"
        fastzsl's kNN method, as in :class:`fastzsl.LoOP` (``"auto"``: the exact k-d tree
        for low-dimensional data, else the backend's brute-force kernel); when "auto",
        ``algorithm`` decides.
    knn_params : dict, optional
        ``nlist``/``nprobe`` for ``knn="ivf"``.

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

    def __init__(self, *, mode="distance", n_neighbors=5, algorithm="auto", leaf_size=30,
                 metric="minkowski", p=2, metric_params=None, n_jobs=None, backend="auto",
                 knn="auto", knn_params=None):
        self.mode = mode
        self.n_neighbors = n_neighbors
        self.algorithm = algorithm
        self.leaf_size = leaf_size
        self.metric = metric
        self.p = p
        self.metric_params = metric_params
        self.backend = backend
        self.knn = knn
        self.knn_params = knn_params
        self.n_jobs = n_jobs

    @uses_n_jobs
    def fit(self, X, y=None):
        """Index the samples X (no search yet)."""
        metric, method = self._check_params()
        X = as_float_matrix(X, "X")
        self.backend_, self.knn_method_, self.index_ = estimator_index(
            X, backend=self.backend, knn=method, knn_params=self.knn_params, metric=metric)
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
        """(fastzsl metric name, kNN method) from the parameters, or an error naming the
        one that is not supported."""
        check_option(self.mode, MODES, "mode")
        check_k(self.n_neighbors, np.iinfo(np.int64).max, name="n_neighbors")
        check_k(self.leaf_size, np.iinfo(np.int64).max, name="leaf_size")
        check_option(self.algorithm, ALGORITHMS, "algorithm")
        check_option(self.knn, METHODS, "knn")
        method = self.knn
        if method == "auto":
            method = ALGORITHMS[self.algorithm]
        elif self.algorithm != "auto" and ALGORITHMS[self.algorithm] != method \
                and method in EXACT_METHODS:
            raise ValueError(f"algorithm={self.algorithm!r} and knn={self.knn!r} disagree; "
                             "set one of them")
        params = dict(self.metric_params or {})
        p = params.pop("p", self.p)
        supported = ("minkowski", *METRICS)
        if params or self.metric not in supported or (self.metric == "minkowski" and p != 2):
            extra = f" with metric_params={self.metric_params!r}" if params else ""
            power = f" with p={p!r}" if self.metric == "minkowski" else ""
            raise ValueError(
                f"unsupported metric {self.metric!r}{power}{extra}: KNNTransformer supports "
                f"{supported} (minkowski only with p=2, no other metric_params)")
        return ("euclidean" if self.metric == "minkowski" else self.metric), method

    def _graph_k(self, n_queries):
        """Entries per row: n_neighbors, plus the sample itself in "distance" mode."""
        k = self.n_neighbors + (self.mode == "distance")
        if k > self.n_samples_fit_:
            raise ValueError(  # scikit-learn's wording
                f"Expected n_neighbors <= n_samples_fit, but n_neighbors = {k}, "
                f"n_samples_fit = {self.n_samples_fit_}, n_samples = {n_queries}")
        return k

    def _graph(self, D, I):
        """CSR (n_queries, n_samples_fit) from the metric's distances D and indices I."""
        n, k = I.shape
        if self.mode == "distance":
            data = D.astype(np.float64).ravel()
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
