r"""Isotropic Gaussian log-likelihoods with fused row reductions, and the Gaussian novelty
detector of Socher et al. (2013).

For class c with mean :math:`\mu_c` and variance :math:`\sigma_c^2` in d dimensions:

.. math::

    \log \mathcal{N}(f; \mu_c, \sigma_c^2 I) = -\frac{\lVert f - \mu_c\rVert^2}{2\sigma_c^2}
    - \frac{d}{2}\log(2\pi\sigma_c^2).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from ._array import array_module, like, like_each, on_device, to_host
from ._model_files import SaveMixin
from ._validation import (as_float_matrix, as_float_vector, check_finite, check_option,
                          check_same_width)
from .backends import kernels_for, uses_n_jobs

# Rows per call when the full (n, C) matrix is needed, to bound its memory.
CHUNK_ROWS = 1 << 15


class GaussianLogLik(NamedTuple):
    """Log-likelihoods and their row reductions (n rows, C classes).

    loglik : (n, C) in F's dtype, or None when ``full=False``
    max : (n,) max over classes of loglik
    argmax : (n,) int64, the first class reaching the max
    logsumexp : (n,) log sum_c exp(loglik[:, c] + log_weights[c])
    all_below : (n,) bool, loglik[:, c] < thresholds[c] for every class c
    """

    loglik: Optional[np.ndarray]
    max: np.ndarray
    argmax: np.ndarray
    logsumexp: np.ndarray
    all_below: np.ndarray


def gaussian_loglik(F, means, variances, *, log_weights=None, thresholds=None, full=True,
                    backend="auto", n_jobs=None) -> GaussianLogLik:
    """Isotropic Gaussian log-likelihoods of every row of F under every class, fused with
    the row reductions the novelty rules need.

    Parameters
    ----------
    F : array-like of shape (n, d)
    means : array-like of shape (C, d)
    variances : array-like of shape (C,)
        Positive and finite.
    log_weights : array-like of shape (C,), optional
        Added before the logsumexp (log class priors); default 0.
    thresholds : array-like of shape (C,), optional
        Per-class thresholds for ``all_below`` (may be +-inf); default +inf.
    full : bool, default=True
        Also return the (n, C) matrix; with False only the reductions are computed and
        the matrix is never held.
    backend : str, default="auto"
        ``"auto"`` picks ``"cupy"`` for CuPy F.
    n_jobs : int, optional
        Threads for this call (OpenMP, BLAS, Numba, faiss), restored afterwards: None
        leaves the current settings (all cores, or an outer ``threadpoolctl`` limit), -1
        uses all cores.

    Returns
    -------
    GaussianLogLik
        Its arrays in the kind of F (CuPy F: on the GPU, where the whole call runs).

    Notes
    -----
    The NumPy backend (the reference) and the numba backend sum squared differences in
    float64. The cython backend expands ||f - mu||^2 = ||f||^2 - 2 f.mu + ||mu||^2 with one
    product per tile of rows (BLAS; on AVX-512 or AVX2 CPUs its own FMA tiles), in the input
    precision, on data centred at the mean of the means, and certifies each value with an
    error bound (derived in ``fastzsl/backends/_gaussian_gemm.py``). A value whose bound
    exceeds 2^-40 (float64 input) or 2^-15 (float32) of its magnitude is recomputed as the
    float64 sum of squared differences, as are the near-ties of the argmax and (float32) the
    entries next to a threshold. So:

    - values are within 2^-40 (float64) or 2^-15 (float32) relative of the float64 sum;
    - argmax and all_below equal the reference's wherever its margin exceeds that bound
      (float64) or the sums' own rounding (float32); exact ties go to the first class;
    - logsumexp is within the same relative accuracy: it leaves out the terms too far below
      the row's largest to matter at that accuracy (never more than 64 below), and its
      certified error bound covers the values, the vectorised exp and the sums.

    The reductions never depend on ``full``; a row gets bit-identical values in every
    call (the estimator reads its thresholds off earlier calls).
    """
    X = as_float_matrix(F, "F", keep_device=True, finite=False)  # checked below
    xp = array_module(X)  # the defaults are made where X is
    means = as_float_matrix(means, "means", dtype=X.dtype, keep_device=True)
    check_same_width(X, means.shape[1], "F", "means")
    n_classes = means.shape[0]
    variances = as_float_vector(variances, "variances", n_classes, keep_device=True)
    vx = array_module(variances)
    if not bool((vx.isfinite(variances) & (variances > 0)).all()):
        raise ValueError(f"variances must be positive and finite, got {to_host(variances)}")
    log_weights = xp.zeros(n_classes) if log_weights is None else \
        as_float_vector(log_weights, "log_weights", n_classes, keep_device=True)
    wx = array_module(log_weights)
    if bool((wx.isnan(log_weights) | (log_weights == np.inf)).any()):
        raise ValueError(f"log_weights must be finite or -inf, got {to_host(log_weights)}")
    thresholds = xp.full(n_classes, np.inf) if thresholds is None else \
        as_float_vector(thresholds, "thresholds", n_classes, keep_device=True)
    if bool(array_module(thresholds).isnan(thresholds).any()):
        raise ValueError(f"thresholds must not be NaN, got {to_host(thresholds)}")
    with kernels_for(backend, X, means, variances, log_weights, thresholds,
                     n_jobs=n_jobs) as (kernels, arrays):
        if not kernels.gaussian_checks_finite:  # else the kernel does, in its own pass
            check_finite(X, "F")
        result = kernels.gaussian_loglik(*arrays, bool(full))
    return GaussianLogLik(*like_each(result, F))


RULES = ("paper", "mixture")
VARIANCES = ("class", "reference_code")


class GaussianNovelty(SaveMixin, OutlierMixin, BaseEstimator):
    """Per-class isotropic Gaussians in the semantic space as a novelty detector.

    Each seen class c gets N(mu_c, sigma_c^2 I) with sigma_c^2 = sum_{i in c}
    ||f_i - mu_c||^2 / (N_c d). A point's outlier probability is read off the training
    points' own scores, so that a threshold t calls about a fraction 1 - t of the training
    set unseen (the paper's sweep over "fraction of training points called unseen"):

    - ``rule="paper"``: for each class, the fraction of that class's training points whose
      log-likelihood under the class is higher than the point's; the outlier probability
      is the minimum over classes. ``predict`` at threshold t is exactly the paper's rule
      "unseen iff log N_c(f) < T_c for every class", with T_c the matching quantile.
    - ``rule="mixture"`` (the authors' code): the fraction of training points whose
      prior-weighted mixture log-likelihood logsumexp_c(log pi_c + log N_c) is higher.

    The estimator computes in float64 throughout, so the thresholds it reads off the
    training scores compare exactly with the scores of new points.

    Parameters
    ----------
    rule : {"paper", "mixture"}, default="paper"
    variance : {"class", "reference_code"}, default="class"
        ``"reference_code"`` divides by the total N instead of N_c (the authors' code).
    backend : str, default="auto"
        ``"auto"`` picks ``"cupy"`` for CuPy input: fitted on CuPy F, the class parameters
        and training scores stay on the GPU (the labels y are read on the host; the class
        grouping and priors derived from them go up once), and CuPy input is scored there.
    n_jobs : int, optional
        Threads for each call (OpenMP, BLAS, Numba), restored afterwards: None leaves the
        current settings (all cores, or an outer ``threadpoolctl`` limit), -1 uses all
        cores.

    Attributes
    ----------
    classes_ : ndarray of shape (C,)
    means_ : ndarray of shape (C, d)
    variances_ : ndarray of shape (C,)
    priors_ : ndarray of shape (C,)
        N_c / N.
    offset_ : float
        1 - 0.95: ``decision_function`` is negative where ``predict`` (threshold 0.95)
        says outlier.
    n_features_in_ : int
    """

    default_threshold = 0.95

    def __init__(self, *, rule="paper", variance="class", backend="auto", n_jobs=None):
        self.rule = rule
        self.variance = variance
        self.backend = backend
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True  # fit needs the seen-class labels
        return tags

    @uses_n_jobs
    def fit(self, F, y=None, means=None, class_means=None):
        """Fit the class Gaussians.

        Parameters
        ----------
        F : array-like of shape (n, d)
            Points in the semantic space.
        y : array-like of shape (n,)
            Class labels.
        means : array-like of shape (C, d) or dict, optional
            Class means (the word vectors, in the paper) in ``np.unique(y)`` order, or a
            mapping {label: vector}. Default: each class's mean of F.
        class_means : dict, optional
            The novelty-detector protocol's name for ``means``.
        """
        means = class_means if means is None else means
        check_option(self.rule, RULES, "rule")
        check_option(self.variance, VARIANCES, "variance")
        # float64 throughout, so thresholds read off training scores compare exactly.
        F = as_float_matrix(F, "X", dtype=np.float64, keep_device=True)
        if y is None:
            raise ValueError(
                "GaussianNovelty requires y to be passed, but the target y is None: "
                "give the seen-class label of every row")
        y = np.asarray(to_host(y))
        if y.shape != (F.shape[0],):
            raise ValueError(f"y must have shape ({F.shape[0]},), got {y.shape}")
        self.classes_, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
        n_classes, d = len(self.classes_), F.shape[1]
        groups = None if not on_device(F) else _ClassGroups(F, codes, counts)
        if means is None:
            if groups is not None:
                means = groups.sums(F)
            else:
                sums = np.zeros((n_classes, d))
                np.add.at(sums, codes, F)
                means = sums / counts[:, None]
        elif isinstance(means, dict):
            missing = [c for c in self.classes_.tolist() if c not in means]
            if missing:
                raise ValueError(f"means has no vector for classes {missing}")
            means = np.stack([np.asarray(means[c], dtype=np.float64) for c in self.classes_])
        self.means_ = like(as_float_matrix(means, "means", dtype=np.float64, keep_device=True),
                           F)
        if self.means_.shape != (n_classes, d):
            raise ValueError(
                f"means must have shape ({n_classes}, {d}) for {n_classes} classes, "
                f"got {self.means_.shape}")
        denominator = counts if self.variance == "class" else np.full(n_classes, F.shape[0])
        if groups is not None:
            self.variances_ = groups.squared_deviations(F, self.means_, denominator * d)
        else:
            sq = ((F - self.means_[codes]).astype(np.float64) ** 2).sum(axis=1)
            self.variances_ = np.bincount(codes, weights=sq, minlength=n_classes) / (
                denominator * d)
        if bool((self.variances_ == 0).any()):
            zero = ", ".join(f"{self.classes_.tolist()[c]!r} (n_samples = {counts[c]})"
                             for c in np.flatnonzero(to_host(self.variances_) == 0))
            raise ValueError(
                f"classes {zero} have zero variance: all their points equal their mean")
        self.priors_ = like(counts / F.shape[0], F)
        self.n_features_in_ = d
        self.offset_ = 1.0 - self.default_threshold
        self._sort_training_scores(F, codes, groups)
        return self

    def _sort_training_scores(self, F, codes, groups=None):
        if self.rule == "mixture":
            self._train_scores = array_module(F).sort(self._mixture(F))
        elif groups is not None:
            L = self.log_likelihood(groups.rows(F))  # a row's values never depend on the others
            xp = array_module(L)
            self._train_scores = [xp.sort(L[a:b, c]) for c, (a, b) in enumerate(groups.spans)]
        else:
            L = self.log_likelihood(F)
            own = L[np.arange(F.shape[0]), codes]
            self._train_scores = [np.sort(own[codes == c]) for c in range(len(self.classes_))]

    def _mixture(self, F):
        return self._reduce(F, log_weights=array_module(self.priors_).log(self.priors_)).logsumexp

    def _reduce(self, F, **kw):
        return gaussian_loglik(F, self.means_, self.variances_, full=False,
                               backend=self.backend, **kw)

    def _check_input(self, F):
        check_is_fitted(self)
        F = as_float_matrix(F, "X", dtype=self.means_.dtype, keep_device=True)
        check_same_width(F, self.n_features_in_, "X", "GaussianNovelty")
        return F

    @uses_n_jobs
    def log_likelihood(self, F):
        """log N(f; mu_c, sigma_c^2 I) for every row and class: shape (n, C)."""
        F = self._check_input(F)
        out = gaussian_loglik(F, self.means_, self.variances_, backend=self.backend).loglik
        return like(out, F)

    @uses_n_jobs
    def outlier_probability(self, F):
        """Fraction of training points more typical than each row (see the class doc)."""
        F_checked = self._check_input(F)
        if self.rule == "mixture":
            return like(_fraction_above(self._train_scores, self._mixture(F_checked)), F)
        xp = array_module(F_checked)
        out = xp.empty(F_checked.shape[0])
        for start in range(0, F_checked.shape[0], CHUNK_ROWS):
            L = self.log_likelihood(F_checked[start:start + CHUNK_ROWS])
            fractions = [_fraction_above(s, L[:, c]) for c, s in enumerate(self._train_scores)]
            out[start:start + CHUNK_ROWS] = xp.stack(fractions).min(axis=0)
        return like(out, F)

    def thresholds(self, threshold):
        """Log-likelihood thresholds equivalent to ``outlier_probability > threshold``.

        Returns an array of shape (C,) for ``rule="paper"`` (T_c: unseen iff
        log N_c(f) < T_c for all c) and a float for ``rule="mixture"``.
        """
        check_is_fitted(self)
        if self.rule == "mixture":
            return _score_threshold(self._train_scores, threshold)
        return np.array([_score_threshold(s, threshold) for s in self._train_scores])

    def score_samples(self, F):
        """1 - outlier_probability: higher means more normal."""
        return 1.0 - self.outlier_probability(F)

    def decision_function(self, F):
        return self.score_samples(F) - self.offset_

    @uses_n_jobs
    def predict(self, F, threshold=default_threshold):
        """-1 (unseen) where outlier_probability > threshold, else +1.

        Computed with the fused kernel (no (n, C) matrix): the paper rule as
        all-below-per-class-threshold, the mixture rule as logsumexp < T.
        """
        F = self._check_input(F)
        T = self.thresholds(threshold)
        if self.rule == "mixture":
            unseen = self._mixture(F) < T
        else:  # C thresholds, read as scalars, go to F's device as one small array
            unseen = self._reduce(F, thresholds=like(T, F)).all_below
        return array_module(unseen).where(unseen, -1, 1)

    # ------------------------------------------------------------------ model files
    def _export(self):
        meta = {"params": self.get_params(), "classes": self.classes_.tolist()}
        arrays = {"means": to_host(self.means_), "variances": to_host(self.variances_),
                  "priors": to_host(self.priors_)}
        if self.rule == "paper":
            arrays["train_scores"] = np.concatenate([to_host(s) for s in self._train_scores])
            arrays["train_counts"] = np.array([len(s) for s in self._train_scores])
        else:
            arrays["train_scores"] = to_host(self._train_scores)
        return meta, arrays

    @classmethod
    def _restore(cls, meta, arrays):
        model = cls(**meta["params"])
        model.classes_ = np.asarray(meta["classes"])
        model.means_, model.variances_, model.priors_ = (
            arrays["means"], arrays["variances"], arrays["priors"])
        model.n_features_in_ = model.means_.shape[1]
        model.offset_ = 1.0 - model.default_threshold
        if model.rule == "paper":
            bounds = np.cumsum(arrays["train_counts"])[:-1]
            model._train_scores = np.split(arrays["train_scores"], bounds)
        else:
            model._train_scores = arrays["train_scores"]
        return model


class _ClassGroups:
    """The rows of each class as one contiguous span, for class statistics of CuPy F on its
    device: each class's rows in row order, summed as one slice (no atomic adds, so the
    sums are deterministic). The grouping comes from the host labels and goes up once."""

    def __init__(self, F, codes, counts):
        xp = array_module(F)
        self.order = xp.asarray(np.argsort(codes, kind="stable"))
        ends = np.cumsum(counts)
        self.spans = [(int(b - n), int(b)) for b, n in zip(ends, counts)]
        self.counts = counts

    def rows(self, F):
        """F's rows grouped by class."""
        return F[self.order]

    def sums(self, F):
        """Class means of F, (C, d)."""
        grouped = self.rows(F)
        xp = array_module(F)
        return xp.stack([grouped[a:b].sum(axis=0) / int(n)
                         for (a, b), n in zip(self.spans, self.counts)])

    def squared_deviations(self, F, means, denominators):
        """Per class: the sum of ||f - mean||^2 over its rows, over its denominator, (C,)."""
        grouped = self.rows(F)
        xp = array_module(F)
        return xp.stack([((grouped[a:b] - means[c]) ** 2).sum() / float(denominators[c])
                         for c, (a, b) in enumerate(self.spans)])


def _fraction_above(sorted_scores, values):
    """Fraction of ``sorted_scores`` strictly greater than each value (where the values are:
    NumPy or on their GPU)."""
    n = sorted_scores.shape[0]
    sorted_scores = like(sorted_scores, values)
    return (n - array_module(values).searchsorted(sorted_scores, values, side="right")) / n


def _score_threshold(sorted_scores, threshold):
    """T with (value < T) == (_fraction_above(sorted_scores, value) > threshold)."""
    n = sorted_scores.shape[0]
    # fraction > t  <=>  at least m scores lie above the value, m the least count with
    # m / n > t (found with the same float division _fraction_above uses)
    #               <=>  value < the m-th largest score.
    m = min(max(int(np.floor(threshold * n)) + 1, 0), n + 1)
    while m > 0 and (m - 1) / n > threshold:
        m -= 1
    while m <= n and not m / n > threshold:
        m += 1
    if m > n:
        return -np.inf
    if m < 1:
        return np.inf
    return float(sorted_scores[n - m])
