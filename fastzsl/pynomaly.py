"""PyNomaly's ``LocalOutlierProbability`` on fastzsl's kernels: switch with one import line.

::

    from PyNomaly import loop                  # before
    from fastzsl import pynomaly as loop       # after

    m = loop.LocalOutlierProbability(X, extent=3, n_neighbors=10).fit()
    scores = m.local_outlier_probabilities
    score = m.stream(x)

The scores equal PyNomaly's (to ~1e-12 in float64) wherever PyNomaly's are defined: the kNN
search is fastzsl's exact one, the LoOP arithmetic its ``loop_fit``/``loop_score`` kernels,
and PyNomaly's conventions are kept: per-cluster neighbourhoods and nPLOF with
``cluster_labels``, its 1e-8 in place of a zero expected pdist, ``stream()`` against the
mean expected pdist and the largest nPLOF of the fit, a distance matrix narrower or wider
than ``n_neighbors`` (PyNomaly divides the sum of squares by ``n_neighbors``), and its
warnings and exceptions where it raises them: a ``UserWarning`` for an argument of the wrong
type, for ``n_jobs > 1`` without ``use_numba=True`` (then one thread, as PyNomaly falls back
to sequential), for ``use_numba=True`` without numba installed, and ``ClusterSizeError``
before any other check of ``cluster_labels``.

Differences, each for a reason (also on :class:`LocalOutlierProbability`):

- ``n_jobs=None``, the default (PyNomaly: 1, and None is a TypeError there), uses all cores:
  fastzsl's compiled kernels need no numba to run threaded, and threads do not change the
  scores. PyNomaly's own values of ``n_jobs`` behave as in PyNomaly.
- Where PyNomaly divides 0 by 0 (a cluster whose PLOFs are all 0 while another's are not)
  it returns NaN; fastzsl returns its defined 0 or 1, so no score is NaN.
- Results are float64 arrays, not object arrays; ``distance_matrix``/``neighbor_matrix``
  after ``fit()`` list neighbours nearest first (PyNomaly's order is arbitrary); among
  neighbours at equal distance fastzsl takes the lower index, PyNomaly whichever
  ``argpartition`` gives, so scores can differ where distances tie (duplicate points).
- Where PyNomaly fails inside numpy (no data and no matrices, a distance matrix without
  its neighbour matrix, matrices with different numbers of rows, or a ``data=`` keyword,
  which its type check cannot look up), fastzsl raises ``ValidationError`` with the
  warning's text, or accepts ``data=``.
- ``extent <= 0`` is refused (ValueError): PyNomaly warns and returns scores of no meaning
  (all 0 for 0).
- ``stream()`` also takes a 2-D array of points and returns their scores.
"""
from __future__ import annotations

import functools
import importlib.util
import numbers
import os
import warnings

import numpy as np

from ._validation import as_float_matrix, check_positive_number
from .backends import thread_limits
from .loop import LoOPFit, loop_fit, loop_probability, loop_score
from .neighbors import ExactIndex

# PyNomaly's stand-in for a zero expected pdist (its _prob_outlier_factor)
ZERO_EV = 1.0e-8


class PyNomalyError(Exception):
    """Base exception, as PyNomaly's."""


class ValidationError(PyNomalyError, ValueError):
    """Invalid input (also a ValueError)."""


class ClusterSizeError(ValidationError):
    """A cluster holds no more points than n_neighbors."""


class MissingValuesError(ValidationError):
    """The data hold NaN."""


def _warn(message):
    warnings.warn(message, UserWarning, stacklevel=3)


# PyNomaly's type check of the constructor's arguments (its ``accepts`` decorator): a
# warning, never an error; what happens next is up to the checks in fit().
_ARGUMENT_TYPES = {
    "data": np.ndarray,
    "distance_matrix": np.ndarray,
    "neighbor_matrix": np.ndarray,
    "extent": (int, np.integer),
    "n_neighbors": (int, np.integer),
    "cluster_labels": list,
    "use_numba": bool,
    "n_jobs": (int, np.integer),
    "progress_bar": bool,
}


def _warns_on_argument_types(init):
    """Warn as PyNomaly does: a positional argument by its value, a keyword by its name
    (only the arguments given are checked). ``n_jobs=None`` is fastzsl's default."""
    names = list(_ARGUMENT_TYPES)

    @functools.wraps(init)
    def checked(self, *args, **kwargs):
        for value, name in zip(args, names):
            if value.__class__.__name__ == "DataFrame":
                value = np.array(value)
            if not isinstance(value, _ARGUMENT_TYPES[name]):
                _warn(f"Argument {value!r} is not of type {_ARGUMENT_TYPES[name]}")
        for name, value in kwargs.items():
            if name not in _ARGUMENT_TYPES or (name == "n_jobs" and value is None):
                continue
            if not isinstance(value, _ARGUMENT_TYPES[name]):
                _warn(f"Argument {name!r} is not of type {_ARGUMENT_TYPES[name]}.")
        init(self, *args, **kwargs)

    return checked


def _numba_installed() -> bool:
    return importlib.util.find_spec("numba") is not None


def _as_array(obj):
    """PyNomaly's _convert_to_array: DataFrames and arrays pass, anything else warns."""
    if obj.__class__.__name__ == "DataFrame":
        return obj.values
    if isinstance(obj, np.ndarray):
        return obj
    _warn("Provided data or distance matrix must be in ndarray or DataFrame.")
    return np.array(obj) if isinstance(obj, list) else np.array([obj])


class LocalOutlierProbability:
    """PyNomaly's ``LocalOutlierProbability`` (same arguments, attributes, warnings, errors).

    Parameters
    ----------
    data : ndarray or DataFrame of shape (n_samples, n_features), optional
        The points (1-D: one feature). Give either ``data`` or both matrices below.
    distance_matrix : ndarray of shape (n_samples, n_neighbors), optional
        Euclidean (not squared) distances from each point to its neighbours. Another
        width warns, and is used as PyNomaly uses it: pdist divides the row's sum of
        squares by ``n_neighbors``.
    neighbor_matrix : ndarray of int of shape (n_samples, n_neighbors), optional
        Indices of those neighbours (same shape as ``distance_matrix``).
    extent : int, default=3
        LoOP's lambda (PyNomaly warns unless 1, 2 or 3; any positive number works).
    n_neighbors : int, default=10
    cluster_labels : array-like of shape (n_samples,), optional
        With labels, each point's neighbours are searched within its cluster and nPLOF is
        taken per cluster, as PyNomaly does.
    use_numba : bool, default=False
        As in PyNomaly, what lets ``n_jobs`` > 1 run threads (it warns and is set False
        when numba is not installed). The kernels are fastzsl's compiled ones either way.
    n_jobs : int, optional
        Threads. None (fastzsl's default) leaves the current settings: all cores, numba or
        not. As in PyNomaly, -1 means all cores, 0 and values below -1 warn and become 1,
        and without ``use_numba=True`` a value > 1 warns (during a fit from data) and
        runs on one thread.
    progress_bar : bool, default=False
        Show a progress bar during the kNN searches.
    backend : str, default="auto"
        fastzsl kernel set (keyword only; not in PyNomaly).

    Attributes (after ``fit()``)
    ----------------------------
    local_outlier_probabilities : ndarray of shape (n_samples,), float64
    prob_distances : ndarray of shape (n_samples,)
    prob_distances_ev : ndarray of shape (n_samples, 1)
    norm_prob_local_outlier_factor : float
        The largest nPLOF over the clusters (what ``stream()`` uses).
    distance_matrix, neighbor_matrix : ndarray of shape (n_samples, n_neighbors)
        Euclidean distances (ascending) and int64 indices of each point's neighbours.
    points_vector : ndarray (float64) of the data
    is_fit : bool

    Notes
    -----
    An argument of the wrong type warns as in PyNomaly (``Argument ... is not of type
    ...``); a non-integer ``n_neighbors`` then fails in ``fit()`` with a TypeError, as
    PyNomaly's does, unless PyNomaly's own adjustment replaces it first (<= 0 becomes 10,
    >= n_samples becomes n_samples - 1).

    Where PyNomaly divides 0 by 0 - nPLOF 0, i.e. every PLOF of a cluster is 0 while
    another cluster's are not - it returns NaN; here a point with PLOF > 0 gets 1, any
    other 0 (fastzsl's LoOP convention). ``stream()`` on a fit whose mean expected pdist is
    0 (every point has only exact duplicates as neighbours) scores by fastzsl's rule (0 for
    a duplicate, 1 otherwise), where PyNomaly divides by 1e-8.
    """

    @_warns_on_argument_types
    def __init__(self, data=None, distance_matrix=None, neighbor_matrix=None, extent=3,
                 n_neighbors=10, cluster_labels=None, use_numba=False, n_jobs=None,
                 progress_bar=False, *, backend="auto"):
        self.data = data
        self.distance_matrix = distance_matrix
        self.neighbor_matrix = neighbor_matrix
        self.extent = extent
        self.n_neighbors = n_neighbors
        self.cluster_labels = cluster_labels
        self.use_numba = use_numba
        self.n_jobs = n_jobs
        self.progress_bar = progress_bar
        self.backend = backend
        self.points_vector = None
        self.prob_distances = None
        self.prob_distances_ev = None
        self.norm_prob_local_outlier_factor = None
        self.local_outlier_probabilities = None
        self.is_fit = False
        self._fit = None
        self._index = None
        if self.use_numba is True and not _numba_installed():
            self.use_numba = False
            _warn("Numba is not available, falling back to pure python mode.")
        if isinstance(n_jobs, numbers.Real) and (n_jobs < -1 or n_jobs == 0):
            _warn("n_jobs must be -1 or a positive integer. Defaulting to 1.")
            self.n_jobs = 1
        self._input_error = self._validate_inputs()
        self._check_extent()

    # ------------------------------------------------------------------ PyNomaly's checks
    def _validate_inputs(self):
        """PyNomaly's warnings; returns the message fit() raises, or None when valid."""
        if self.data is None and self.distance_matrix is None:
            message = "Data or a distance matrix must be provided."
        elif self.data is not None and self.distance_matrix is not None:
            # PyNomaly warns and then fits from the data, as here
            _warn("Only one of the following may be provided: data or a distance matrix "
                  "(not both).")
            return None
        elif self.data is not None:
            _as_array(self.data)  # PyNomaly warns here for data that are not an array
            return None
        elif self.neighbor_matrix is None:
            message = ("A neighbor index matrix and distance matrix must both be provided "
                       "when not using raw input data.")
        elif np.ndim(self.distance_matrix) != 2 or np.ndim(self.neighbor_matrix) != 2:
            message = (f"distance_matrix and neighbor_matrix must be 2-D (n_samples, "
                       f"n_neighbors), got shapes {np.shape(self.distance_matrix)} and "
                       f"{np.shape(self.neighbor_matrix)}")
        elif np.shape(self.distance_matrix) != np.shape(self.neighbor_matrix):
            # PyNomaly warns and goes on: pdist from the distances, its mean over the
            # neighbours' pdists from the indices (fit() does too); rows must pair up
            _warn("The shape of the distance and neighbor index matrices must match.")
            if len(self.distance_matrix) == len(self.neighbor_matrix):
                return None
            return ("distance_matrix and neighbor_matrix must have one row per observation, "
                    f"got {len(self.distance_matrix)} and {len(self.neighbor_matrix)} rows")
        else:
            if np.shape(self.distance_matrix)[1] != self.n_neighbors:
                # PyNomaly warns and goes on: pdist divides by n_neighbors (fit() does too)
                _warn("The shape of the distance or neighbor index matrix does not match "
                      "the number of neighbors specified.")
            return None
        _warn(message)
        return message

    def _check_extent(self):
        if self.extent not in [1, 2, 3]:
            _warn("extent parameter (lambda) must be 1, 2, or 3.")
            return False
        return True

    def _n_observations(self):
        source = self.data if self.data is not None else self.distance_matrix
        return len(source)

    def _check_n_neighbors(self):
        """PyNomaly's adjustments; a value that is still not an integer is a TypeError."""
        if isinstance(self.n_neighbors, bool) or not isinstance(self.n_neighbors, numbers.Real):
            raise TypeError(f"n_neighbors must be an integer, got {self.n_neighbors!r}")
        if not self.n_neighbors > 0:
            self.n_neighbors = 10
            _warn(f"n_neighbors must be greater than 0. Fit with {self.n_neighbors} instead.")
        elif self.n_neighbors >= self._n_observations():
            self.n_neighbors = self._n_observations() - 1
            _warn("n_neighbors must be less than the number of observations. "
                  f"Fit with {self.n_neighbors} instead.")
        if not isinstance(self.n_neighbors, numbers.Integral):
            raise TypeError(f"n_neighbors must be an integer, got {self.n_neighbors!r}")

    def _cluster_labels(self):
        labels = self._given_labels()
        if labels.shape != (self._n_observations(),):
            raise ValidationError(
                f"cluster_labels must have one label per observation "
                f"({self._n_observations()}), got shape {labels.shape}")
        return labels

    def _given_labels(self):
        if self.cluster_labels is None:
            return np.zeros(self._n_observations(), dtype=np.int64)
        return np.asarray(self.cluster_labels)

    def _check_cluster_size(self):
        """PyNomaly's first check of the labels, on the labels as given."""
        _, sizes = np.unique(self._given_labels(), return_counts=True)
        if (sizes <= self.n_neighbors).any():
            raise ClusterSizeError(
                "Number of neighbors specified larger than smallest cluster. Specify a number "
                "of neighbors smaller than the smallest cluster size (observations in "
                "smallest cluster minus one).")

    def _points(self):
        """The data as a float64 matrix (1-D data: one feature), NaN refused."""
        X = _as_array(self.data)
        if X.ndim == 1:
            X = X.reshape(-1, 1)
        if np.issubdtype(np.asarray(X).dtype, np.floating) and np.isnan(X).any():
            raise MissingValuesError("Method does not support missing values in input data.")
        return as_float_matrix(X, "data", dtype=np.float64)

    # ------------------------------------------------------------------ kNN graphs
    def _search_clusters(self, X, labels):
        """Squared distances and global indices of each point's neighbours in its cluster."""
        n, k = X.shape[0], self.n_neighbors
        D = np.empty((n, k))
        I = np.empty((n, k), dtype=np.int64)
        for cluster in np.unique(labels):
            members = np.flatnonzero(labels == cluster)
            Xc = X if members.size == n else X[members]
            Dc, Ic = ExactIndex(Xc, backend=self.backend).search(
                Xc, k, exclude_self=True, progress=self.progress_bar)
            D[members], I[members] = Dc, members[Ic]
        return D, I

    def _given_graph(self):
        """The user's (distance_matrix, neighbor_matrix) as squared distances, scaled so
        that their row means are PyNomaly's sum of squares over n_neighbors, and indices."""
        dist = as_float_matrix(_as_array(self.distance_matrix), "distance_matrix",
                               dtype=np.float64)
        if (dist < 0).any():
            raise ValidationError("distance_matrix must hold distances >= 0")
        neighbors = np.asarray(_as_array(self.neighbor_matrix))
        if neighbors.dtype.kind == "f" and not np.array_equal(neighbors, np.round(neighbors)):
            raise ValidationError("neighbor_matrix must hold integer indices")
        if neighbors.dtype.kind not in "iuf":
            raise ValidationError(f"neighbor_matrix must hold integer indices, got dtype "
                                  f"{neighbors.dtype}")
        D = dist ** 2
        if D.shape != neighbors.shape or D.shape[1] != self.n_neighbors:
            # each row's sum of squares over n_neighbors, once per neighbour index, so that
            # loop_fit's row mean is PyNomaly's
            D = np.repeat(D.sum(axis=1, keepdims=True) / self.n_neighbors,
                          neighbors.shape[1], axis=1)
        return D, neighbors.astype(np.int64)

    def _threads(self, warn=False):
        """n_jobs as PyNomaly honours it: threads only with use_numba (None: fastzsl's rule)."""
        if self.n_jobs is None or self.use_numba:
            return self.n_jobs
        threads = (os.cpu_count() or 1) if self.n_jobs == -1 else self.n_jobs
        if warn and threads > 1:
            _warn("n_jobs > 1 requires use_numba=True for parallel processing. Install Numba "
                  "and set use_numba=True to enable parallelism. Falling back to sequential.")
        return 1

    # ------------------------------------------------------------------ public API
    def fit(self):
        """LoOP of every observation; returns self (``local_outlier_probabilities``)."""
        if self._input_error is not None:
            raise ValidationError(self._input_error)
        self._check_n_neighbors()
        self._check_cluster_size()
        labels = self._cluster_labels()
        extent = check_positive_number(self.extent, "extent")
        if self.data is not None:
            self.points_vector = self._points()  # missing values before the n_jobs warning
        threads = self._threads(warn=self.data is not None)
        with thread_limits(threads, backend=self.backend):
            if self.data is not None:
                self._index = ExactIndex(self.points_vector, backend=self.backend)  # stream()
                D, I = self._search_clusters(self.points_vector, labels)
                self.distance_matrix, self.neighbor_matrix = np.sqrt(D), I
            else:
                D, I = self._given_graph()
            fit = loop_fit(D, I, extent=extent, backend=self.backend)
        pdist = fit.pdist
        ev = pdist[I].mean(axis=1)
        plof, probabilities, nplof = fit.plof, fit.probabilities, fit.nplof
        zero_ev = (ev == 0).any()
        if zero_ev:  # PyNomaly's 1e-8 (fastzsl's kernel gives 0 or inf there)
            plof = np.zeros_like(pdist) if np.array_equal(pdist, ev) else \
                pdist / np.where(ev == 0, ZERO_EV, ev) - 1.0
        if zero_ev or np.unique(labels).size > 1:
            nplof_each = _nplof_per_cluster(plof, labels, extent)
            probabilities = loop_probability(plof, nplof_each)
            nplof = float(nplof_each.max())
        self.prob_distances = pdist
        self.prob_distances_ev = ev.reshape(-1, 1)
        self.norm_prob_local_outlier_factor = nplof
        self.local_outlier_probabilities = probabilities
        self._fit = LoOPFit(pdist, plof, nplof, probabilities, float(ev.mean()), extent)
        self.is_fit = True
        return self

    def stream(self, x):
        """LoOP of a new observation against the fit (PyNomaly's stream approach).

        ``x``: one point (1-D, as in PyNomaly; a float for 1-D data), returning a float, or
        a 2-D array of points, returning an array. With ``distance_matrix`` input, ``x`` is
        the distance of the new point to each of its neighbours, as in PyNomaly.
        """
        original_labels = None
        if np.unique(self._cluster_labels()).size > 1:
            _warn("Stream approach does not support clustered data. Automatically refit "
                  "using single cluster of points.")
            original_labels = self.cluster_labels
            self.cluster_labels = None
        try:
            if not self.is_fit:
                _warn("Must fit on historical data by calling fit() prior to calling "
                      "stream(x).")
                self.fit()
            return self._stream(x)
        finally:
            if original_labels is not None:
                self.cluster_labels = original_labels

    def _stream(self, x):
        k = self.n_neighbors
        if self.data is not None:
            P = np.asarray(_as_array(x) if not np.isscalar(x) else [x])
            single = P.ndim <= 1
            P = as_float_matrix(P.reshape(1, -1) if single else P, "x", dtype=np.float64)
            with thread_limits(self._threads(), backend=self.backend):
                D, I = self._index.search(P, k)
        else:
            distance = float(np.ravel(np.asarray(x, dtype=np.float64))[0])
            single = True
            D, I = np.full((1, k), distance ** 2), np.zeros((1, k), dtype=np.int64)
        scores = loop_score(D, I, self._fit, scoring="stream", backend=self.backend,
                            n_jobs=self._threads())
        return np.float64(scores[0]) if single else scores


def _nplof_per_cluster(plof, labels, extent):
    """PyNomaly's nPLOF of each point's cluster: extent * sqrt(mean of PLOF^2 there)."""
    _, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.ravel()
    sum_sq = np.bincount(inverse, weights=plof * plof)
    counts = np.bincount(inverse)
    return (extent * np.sqrt(sum_sq / counts))[inverse]
