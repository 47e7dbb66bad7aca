r"""LoOP: Local Outlier Probabilities (Kriegel, Kröger, Schubert, Zimek, CIKM 2009).

For a point f with k nearest neighbours C(f) in the reference set F (squared distances D):

.. math::

    \mathrm{pdist}(f) = \lambda \sqrt{\tfrac{1}{k}\sum_{q \in C(f)} \lVert f - q\rVert^2}, \qquad
    \mathrm{PLOF}(f) = \frac{\mathrm{pdist}(f)}{\tfrac{1}{k}\sum_{q \in C(f)} \mathrm{pdist}(q)} - 1,

.. math::

    \mathrm{nPLOF} = \lambda \sqrt{\operatorname{mean}_{q \in F} \mathrm{PLOF}(q)^2}, \qquad
    \mathrm{LoOP}(f) = \max\Bigl(0, \operatorname{erf}\Bigl(\frac{\mathrm{PLOF}(f)}
    {\mathrm{nPLOF}\sqrt{2}}\Bigr)\Bigr).

Zero distances (duplicates) are defined, so no NaN can come out:

- a point whose neighbours' mean pdist is 0 has PLOF 0 when its own pdist is 0 too (it is
  exactly as dense as its neighbours) and PLOF +inf otherwise (LoOP 1);
- nPLOF is taken over the finite PLOFs; when it is 0 (e.g. all points identical) every
  point with PLOF > 0 gets LoOP 1 and every other point LoOP 0.

PyNomaly instead replaces a zero expected pdist by 1e-8, which makes its scores depend on
the data's units; the two agree whenever no expected pdist is 0.

References
----------
H.-P. Kriegel, P. Kröger, E. Schubert, A. Zimek. "LoOP: Local Outlier Probabilities."
CIKM 2009.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from ._array import array_module, like, like_each, to_host
from ._model_files import SaveMixin
from ._validation import (as_float_matrix, check_k, check_option, check_positive_number,
                          check_same_width)
from .backends import kernels_for, uses_n_jobs
from .backends.numpy_ import probability_from
from .neighbors import estimator_index

SCORING = ("neighbors", "stream")


@dataclass(frozen=True)
class LoOPFit:
    """What scoring new points needs from a fitted reference set (all float64; the arrays
    are CuPy arrays on the GPU when the graph was, and the cupy backend computed them).

    Attributes
    ----------
    pdist : ndarray of shape (n_reference,)
        Probabilistic distance of each reference point.
    plof : ndarray of shape (n_reference,)
    nplof : float
    probabilities : ndarray of shape (n_reference,)
        In-sample LoOP, self excluded from each point's neighbours.
    mean_expected_pdist : float
        Mean over reference points of their neighbours' mean pdist (PyNomaly ``stream()``).
    extent : float
    """

    pdist: np.ndarray
    plof: np.ndarray
    nplof: float
    probabilities: np.ndarray
    mean_expected_pdist: float
    extent: float


def _check_graph(D, I, n_reference, name):
    """(D, I) validated; a CuPy D keeps both on its device (checked there, scalars to the
    host). ``n_reference`` None: the graph's own rows (a fit)."""
    D = as_float_matrix(D, f"{name} distances D", keep_device=True)
    xp = array_module(D)
    I = xp.asarray(I) if xp is not np else np.asarray(to_host(I))
    if n_reference is None:
        n_reference = D.shape[0]
    if I.dtype.kind not in "iu":
        raise TypeError(f"{name} indices I must be integers, got dtype {I.dtype}")
    if I.shape != D.shape:
        raise ValueError(f"{name} D and I must have the same shape, got {D.shape} and {I.shape}")
    if (D < 0).any():
        lowest = D.dtype.type(D.min().item())  # NumPy's scalar, so the message reads the same
        raise ValueError(f"{name} distances D must be squared distances >= 0; found {lowest!r}")
    I = xp.ascontiguousarray(I, dtype=np.int64)
    lo, hi = int(I.min()), int(I.max())
    if lo < 0 or hi >= n_reference:
        raise ValueError(f"{name} indices I must lie in [0, {n_reference}), found [{lo}, {hi}]")
    return D, I


def loop_fit(D, I, *, extent=3.0, backend="auto", n_jobs=None) -> LoOPFit:
    """LoOP of a reference set from its own kNN graph (self excluded).

    Parameters
    ----------
    D : array-like of shape (n, k)
        Squared distances from each reference point to its k neighbours (``fastzsl.knn``
        with ``exclude_self=True``).
    I : array-like of int of shape (n, k)
        Neighbour indices into the same reference set.
    extent : float, default=3.0
        The lambda of LoOP (1, 2 or 3 in the paper: the significance of pdist).
    backend : str, default="auto"
    n_jobs : int, optional
        Threads for this call (OpenMP, BLAS, Numba, faiss), restored afterwards: None
        leaves the current settings (all cores, or an outer ``threadpoolctl`` limit), -1
        uses all cores.

    Returns
    -------
    LoOPFit
        Its arrays in the kind of D (CuPy D: on the GPU; ``"auto"`` then runs the cupy
        backend).
    """
    extent = check_positive_number(extent, "extent")
    checked = _check_graph(D, I, None, "loop_fit")
    with kernels_for(backend, *checked, n_jobs=n_jobs) as (kernels, (D_k, I_k)):
        pdist, plof, nplof, probabilities = kernels.loop_fit(D_k, I_k, extent)
    # Mean of pdist[I] over all entries, without the (n, k) temporary.
    in_degree = array_module(I_k).bincount(I_k.ravel(), minlength=pdist.shape[0])
    mean_ev = float(in_degree @ pdist / I_k.size)
    pdist, plof, probabilities = like_each((pdist, plof, probabilities), D)
    return LoOPFit(pdist, plof, float(nplof), probabilities, mean_ev, extent)


def loop_score(D, I, fit: LoOPFit, *, scoring="neighbors", backend="auto", n_jobs=None):
    """LoOP of new points from their neighbours in a fitted reference set.

    Parameters
    ----------
    D : array-like of shape (n_queries, k)
        Squared distances to the k nearest reference points.
    I : array-like of int of shape (n_queries, k)
    fit : LoOPFit
        From :func:`loop_fit` on the reference set.
    scoring : {"neighbors", "stream"}, default="neighbors"
        ``"neighbors"`` (the paper): PLOF divides by the mean pdist of the point's own
        neighbours. ``"stream"``: divides by the fit's ``mean_expected_pdist`` for every
        point, as PyNomaly's ``stream()`` does.
    backend : str, default="auto"
    n_jobs : int, optional
        Threads for this call (OpenMP, BLAS, Numba, faiss), restored afterwards: None
        leaves the current settings (all cores, or an outer ``threadpoolctl`` limit), -1
        uses all cores.

    Returns
    -------
    ndarray of shape (n_queries,), float64 in [0, 1]
        In the kind of D (CuPy D: on the GPU; ``"auto"`` then runs the cupy backend).
    """
    check_option(scoring, SCORING, "scoring")
    checked = _check_graph(D, I, fit.pdist.shape[0], "loop_score")
    ev_override = np.nan if scoring == "neighbors" else fit.mean_expected_pdist
    with kernels_for(backend, *checked, fit.pdist, n_jobs=n_jobs) as (kernels, arrays):
        probabilities = kernels.loop_score(*arrays, fit.nplof, fit.extent, ev_override)
    return like(probabilities, D)


def loop_probability(plof, nplof):
    """LoOP = max(0, erf(PLOF / (nPLOF sqrt 2))) of NumPy PLOFs, float64; where nPLOF = 0
    every PLOF > 0 gives 1. ``nplof`` is one number, or one per point (PyNomaly's
    per-cluster nPLOF). The kernels' definition, for callers that combine PLOFs their own
    way."""
    return probability_from(plof, nplof)


class LoOP(SaveMixin, OutlierMixin, BaseEstimator):
    """Local Outlier Probabilities of new points against a reference set.

    Parameters
    ----------
    n_neighbors : int, default=20
        Neighbours per point; must be below the number of reference points.
    extent : float, default=3.0
        LoOP's lambda.
    backend : str, default="auto"
        Kernel set for the LoOP arithmetic and exact kNN (``fastzsl.available_backends()``);
        ``"auto"`` picks ``"cupy"`` for CuPy input, and the reference set, the fit and the
        scores of CuPy input then stay on the GPU.
    knn : {"auto", "exact", "kdtree", "faiss", "ivf"}, default="auto"
        kNN method (see :func:`fastzsl.knn`); ``"auto"`` is ``"kdtree"`` on low-dimensional
        data when ``backend="auto"``, else ``"exact"``: both exact, with identical results.
    knn_params : dict, optional
        ``nlist``/``nprobe`` for ``knn="ivf"``.
    metric : {"sqeuclidean", "euclidean", "cosine"}, default="sqeuclidean"
        The neighbours' metric (:data:`fastzsl.neighbors.METRICS`). LoOP's probabilistic
        distance is the Euclidean one under "sqeuclidean" and "euclidean" alike (the same
        model), and the cosine distance 1 - cos under "cosine" (rows of zeros are refused).
    scoring : {"neighbors", "stream"}, default="neighbors"
        How new points are scored (see :func:`loop_score`).
    progress : bool, default=False
        Show a progress bar during the kNN searches.
    n_jobs : int, optional
        Threads for fitting and scoring (OpenMP, BLAS, Numba, faiss), restored after each
        call: None leaves the current settings (all cores, or an outer ``threadpoolctl``
        limit), -1 uses all cores.

    Attributes
    ----------
    probabilities_ : ndarray of shape (n_samples,)
        In-sample LoOP of the reference set (each point excluded from its own neighbours);
        equals PyNomaly ``LocalOutlierProbability(X).fit().local_outlier_probabilities``.
    fit_ : LoOPFit
    index_ : ExactIndex or FaissIndex
    backend_ : str
        The backend ``backend`` resolved to (``"auto"`` picks the fastest available).
    knn_method_ : str
        The kNN method ``knn`` resolved to ("exact", "kdtree", "faiss" or "ivf").
    offset_ : float
        0.5: ``decision_function = score_samples - offset_`` is negative exactly when
        ``predict`` (threshold 0.5) says outlier.
    n_features_in_ : int

    Notes
    -----
    ``predict(X)`` treats X as new points, even if X is the training set: a training
    point then finds itself at distance 0. In-sample scores are ``probabilities_``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastzsl import LoOP
    >>> X = np.r_[np.random.default_rng(0).normal(size=(200, 2)), [[8.0, 8.0]]]
    >>> loop = LoOP(n_neighbors=10).fit(X[:-1])
    >>> loop.predict(X[[0, -1]]).tolist()
    [1, -1]
    """

    def __init__(self, *, n_neighbors=20, extent=3.0, backend="auto", knn="auto",
                 knn_params=None, scoring="neighbors", progress=False, n_jobs=None,
                 metric="sqeuclidean"):
        self.metric = metric
        self.n_neighbors = n_neighbors
        self.extent = extent
        self.backend = backend
        self.knn = knn
        self.knn_params = knn_params
        self.scoring = scoring
        self.progress = progress
        self.n_jobs = n_jobs

    @uses_n_jobs
    def fit(self, X, y=None, class_means=None):
        """Index the reference set X and compute its in-sample LoOP (y and class_means,
        of the novelty-detector protocol, are ignored)."""
        X = as_float_matrix(X, "X", keep_device=True)
        check_option(self.scoring, SCORING, "scoring")
        k = check_k(self.n_neighbors, X.shape[0], exclude_self=True, name="n_neighbors")
        self._build_index(X)
        D, I = self.index_.search(X, k, exclude_self=True, progress=self.progress,
                                  squared=True)
        self.fit_ = loop_fit(D, I, extent=self.extent, backend=self.backend_)
        self.probabilities_ = self.fit_.probabilities
        self.n_features_in_ = X.shape[1]
        self.offset_ = 0.5
        return self

    def _build_index(self, X):
        """Resolve the backend and kNN method, and index the reference set X."""
        self.backend_, self.knn_method_, self.index_ = estimator_index(
            X, backend=self.backend, knn=self.knn, knn_params=self.knn_params,
            metric=self.metric)

    @uses_n_jobs
    def outlier_probability(self, X):
        """LoOP of each row of X against the reference set, in [0, 1]; higher = more novel."""
        check_is_fitted(self)
        Q = as_float_matrix(X, "X", keep_device=True)
        check_same_width(Q, self.n_features_in_, "X", "LoOP")
        D, I = self.index_.search(Q, self.n_neighbors, progress=self.progress, squared=True)
        return like(loop_score(D, I, self.fit_, scoring=self.scoring, backend=self.backend_), X)

    def score_samples(self, X):
        """1 - LoOP: higher means more normal (scikit-learn's convention)."""
        return 1.0 - self.outlier_probability(X)

    def decision_function(self, X):
        """score_samples - offset_: negative for outliers at the default threshold."""
        return self.score_samples(X) - self.offset_

    def predict(self, X, threshold=0.5):
        """-1 where LoOP > threshold (outlier), +1 elsewhere (inlier)."""
        probabilities = self.outlier_probability(X)
        xp = array_module(probabilities)  # CuPy input: labels on its device
        return xp.where(xp.asarray(probabilities) > threshold, -1, 1)

    # ------------------------------------------------------------------ model files
    def _export(self):
        """(metadata, arrays) of the fitted detector, the reference set included."""
        return export_loop(self.get_params(), self.index_.reference, self.fit_)

    @classmethod
    def _restore(cls, meta, arrays):
        model = cls(**meta["params"])
        reference = arrays["reference"]
        model._build_index(reference)
        model.fit_ = LoOPFit(arrays["pdist"], arrays["plof"], meta["nplof"],
                             arrays["probabilities"], meta["mean_expected_pdist"], meta["extent"])
        model.probabilities_ = model.fit_.probabilities
        model.n_features_in_ = reference.shape[1]
        model.offset_ = 0.5
        return model


def export_loop(params: dict, reference, fit: LoOPFit):
    """The (metadata, arrays) of a LoOP model file: the estimator's parameters, its
    reference set and its fit. What ``LoOP.save`` writes, and what a chunked fit
    (:func:`fastzsl.fit_file`) writes without building the estimator."""
    params = dict(params)
    if params.get("metric") == "sqeuclidean":  # the default: files stay as they were
        del params["metric"]
    meta = {"params": params, "nplof": fit.nplof, "extent": fit.extent,
            "mean_expected_pdist": fit.mean_expected_pdist}
    arrays = {name: to_host(a) for name, a in (
        ("reference", reference), ("pdist", fit.pdist), ("plof", fit.plof),
        ("probabilities", fit.probabilities))}
    return meta, arrays
