r"""The zero-shot classifier of Socher, Ganjoo, Manning and Ng (NIPS 2013).

Image features x are mapped into the word-vector space, f = f(x). A softmax on x labels
the seen classes; a novelty detector gives P(unseen | x); unseen
images are labelled by isotropic Gaussians around the unseen classes' word vectors.
The combined probability is the paper's Eq. 2:

.. math::

    P(y \mid x) = P(y \mid \text{seen}, x)\,P(\text{seen} \mid x)
                + P(y \mid \text{unseen}, f)\,P(\text{unseen} \mid x).

``combine="hard"`` replaces P(unseen | x) by 1 where it exceeds the threshold and by 0
elsewhere (route each image to one branch), so both variants agree when P(unseen | x) is
already 0 or 1.

By default P(unseen | x) is *calibrated* on the seen classes alone
(:mod:`fastzsl.calibration`, ``docs/method.md`` section 4c): seen classes are held out in
turn as pseudo-unseen, the detector's scores of held-out images are mapped monotonically
to the probability of being unseen at a stated prior, and the hard-routing threshold is
chosen on the same pseudo-unseen data. LoOP detects in a 50-d PCA of the image features
and the Gaussian detector in the semantic space: where each separated unseen images best
in the measurements (README, "Novelty detection"). The settings in :data:`PAPER`
restore the paper's pipeline: both detectors in the semantic space, fitted on the mapped
training points, uncalibrated (LoOP's probability, near 0 for typical points, used as is
in the soft Eq. 2; the Gaussian detector's training-set rank thresholded, hard routing).
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ._model_files import SaveMixin, pack_parts, unpack_part
from ._validation import as_float_matrix, check_same_width
from .backends import uses_n_jobs
from .calibration import (PCAProjection, ScoreCalibrator, check_false_alarm, check_prior,
                          prior_weights, pseudo_unseen_rounds, routing_threshold,
                          validation_split)
from .embeddings import class_vectors as lookup_class_vectors
from .gaussian import GaussianNovelty, gaussian_loglik
from .loop import LoOP
from .mapping import SemanticMapper
from .metrics import gzsl_scores, zero_shot_accuracies
from .softmax import SoftmaxClassifier

NOVELTY = ("loop", "gaussian")
COMBINE = ("soft", "hard")
SPACES = ("semantic", "pca", "features")
NOVELTY_FITS = ("training", "crossfit")
# Where each detector separated unseen images best (README, "Novelty detection").
DEFAULT_SPACE = {"loop": "pca", "gaussian": "semantic"}
# The paper's pipeline (and every model file written before calibration existed).
PAPER = {"novelty_space": "semantic", "novelty_fit": "training", "calibration": None}
# Uncalibrated scores: LoOP's is near 0 for typical points (soft Eq. 2 works), the
# Gaussian detector's is a rank to threshold (hard routing, about 5% called unseen).
PAPER_COMBINE = {"loop": "soft", "gaussian": "hard"}
PAPER_THRESHOLD = {"loop": 0.5, "gaussian": GaussianNovelty.default_threshold}
CALIBRATED_COMBINE = "hard"


class UnknownClassError(KeyError, ValueError):
    """A class name that the estimator does not know (or has no word vector)."""

    def __str__(self):
        return str(self.args[0])


class ZeroShotClassifier(SaveMixin, ClassifierMixin, BaseEstimator):
    """Zero-shot classification with novelty detection (Socher et al. 2013).

    Parameters
    ----------
    class_vectors : mapping or gensim KeyedVectors
        {class name: word vector}, or word vectors in which the class names are looked up
        (multi-word names as in :mod:`fastzsl.embeddings`).
    unseen_classes : list of str
        Classes with no training images.
    novelty : {"loop", "gaussian"}, default="loop"
        The detector of P(unseen | x).
    novelty_space : {"pca", "semantic", "features"}, optional
        Where the detector works: a ``pca_components``-d PCA of the image features, the
        semantic space, or the image features themselves. Default: "pca" for LoOP,
        "semantic" for the Gaussian detector (where each separates unseen images best).
    pca_components : int, default=50
    novelty_fit : {"training", "crossfit"}, default="training"
        In the semantic space, fit the detector on the mapped training points (the paper),
        or on points mapped by ``cv`` mappings each trained without them (``cv`` more
        mapping fits; it did not separate better in the measurements).
    cv : int, default=5
    calibration : {"isotonic", "platt"} or None, default="isotonic"
        Map the detector's score to P(unseen | x) with a monotone fit on pseudo-unseen
        rounds of the seen classes (no unseen image is used); None: the raw score.
    unseen_prior : float, optional
        The unseen fraction the calibrated P(unseen | x) assumes; default
        n_unseen / (n_seen + n_unseen), i.e. every class equally frequent.
    calibration_rounds : int, optional
        How many groups of ``len(unseen_classes)`` seen classes to hold out in turn
        (default: all, each seen class once). In the semantic space each round trains a
        mapping.
    max_false_alarm : float or None, default=0.1
        The default threshold of a calibrated model sends at most this share of the
        pseudo-unseen rounds' pseudo-seen images to the unseen branch (protecting seen
        accuracy) and, among such thresholds, maximises the harmonic mean of both routing
        accuracies; None: no limit.
    combine : {"soft", "hard"}, optional
        Eq. 2 of the paper, or route each image by ``outlier_probability > threshold``.
        Default: hard when calibrated (it gave the higher GZSL H); uncalibrated, soft with
        LoOP and hard with the Gaussian detector (see the module doc).
    threshold : float, optional
        For ``combine="hard"``. Default: calibrated, the threshold chosen on the
        pseudo-unseen rounds (``routing_threshold_``, see ``max_false_alarm``);
        uncalibrated, 0.5 (LoOP) or 0.95 (Gaussian: about 5% of the training images
        called unseen).
    n_neighbors, extent : int, float, default=20, 3.0
        LoOP settings.
    loop_per_class : bool, default=False
        The authors' code: one LoOP per seen class, P(unseen | x) = min over classes.
    gaussian_rule, gaussian_variance : str, default="paper", "class"
        See :class:`fastzsl.GaussianNovelty`.
    unseen_variance : float, optional
        The shared variance of the unseen-class Gaussians (a softmax temperature); default
        the mean variance of the mapped seen training points around their word vectors.
    mapper_params, softmax_params : dict, optional
        Passed to :class:`SemanticMapper` and :class:`SoftmaxClassifier`.
    multiword : {"average", "error"}, default="average"
    backend, knn : str, default="auto"
        Kernel backend and kNN method of the novelty detector.
    random_state : int, default=0
    progress : bool, default=False
        Progress bars for training and kNN search.
    n_jobs : int, optional
        Threads for fitting and prediction (OpenMP, BLAS, Numba, faiss), restored after
        each call: None leaves the current settings (all cores, or an outer
        ``threadpoolctl`` limit), -1 uses all cores.

    Attributes
    ----------
    classes_ : ndarray of str, shape (n_seen + n_unseen,)
        Seen classes (sorted), then the unseen classes in the given order; the columns of
        ``predict_proba``.
    seen_classes_, unseen_classes_ : ndarray of str
    class_vectors_ : ndarray of shape (n_classes, d)
        Word vectors in ``classes_`` order.
    mapper_ : SemanticMapper
    seen_classifier_ : SoftmaxClassifier
    detector_ : LoOP, GaussianNovelty, or dict {class: LoOP} (``loop_per_class``)
    projection_ : PCAProjection or None
        The detection space's projection (``novelty_space="pca"``).
    calibrator_ : ScoreCalibrator or None
    routing_threshold_ : float or None
        The threshold chosen on the pseudo-unseen rounds (calibrated models).
    unseen_variance_ : float
    """

    def __init__(self, class_vectors, unseen_classes, *, novelty="loop", novelty_space=None,
                 pca_components=50, novelty_fit="training", cv=5, calibration="isotonic",
                 unseen_prior=None, calibration_rounds=None, max_false_alarm=0.1, combine=None,
                 threshold=None, n_neighbors=20, extent=3.0, loop_per_class=False,
                 gaussian_rule="paper", gaussian_variance="class", unseen_variance=None,
                 mapper_params=None, softmax_params=None, multiword="average",
                 backend="auto", knn="auto", random_state=0, progress=False, n_jobs=None):
        self.class_vectors = class_vectors
        self.unseen_classes = unseen_classes
        self.novelty = novelty
        self.novelty_space = novelty_space
        self.pca_components = pca_components
        self.novelty_fit = novelty_fit
        self.cv = cv
        self.calibration = calibration
        self.unseen_prior = unseen_prior
        self.calibration_rounds = calibration_rounds
        self.max_false_alarm = max_false_alarm
        self.combine = combine
        self.threshold = threshold
        self.n_neighbors = n_neighbors
        self.extent = extent
        self.loop_per_class = loop_per_class
        self.gaussian_rule = gaussian_rule
        self.gaussian_variance = gaussian_variance
        self.unseen_variance = unseen_variance
        self.mapper_params = mapper_params
        self.softmax_params = softmax_params
        self.multiword = multiword
        self.backend = backend
        self.knn = knn
        self.random_state = random_state
        self.progress = progress
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------ fitting
    def _check_params(self):
        if self.novelty not in NOVELTY:
            raise ValueError(f"novelty must be one of {NOVELTY}, got {self.novelty!r}")
        if self.combine is not None and self.combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {self.combine!r}")
        if self.novelty_space is not None and self.novelty_space not in SPACES:
            raise ValueError(f"novelty_space must be one of {SPACES} or None, "
                             f"got {self.novelty_space!r}")
        if self.novelty_fit not in NOVELTY_FITS:
            raise ValueError(f"novelty_fit must be one of {NOVELTY_FITS}, "
                             f"got {self.novelty_fit!r}")
        if self.novelty_fit == "crossfit" and (isinstance(self.cv, bool) or not isinstance(
                self.cv, (int, np.integer)) or self.cv < 2):
            raise ValueError(f"cv must be an int >= 2 for novelty_fit='crossfit', got {self.cv!r}")
        if self.calibration is not None:
            ScoreCalibrator(self.calibration)  # names the valid choices
        if self.unseen_prior is not None:
            check_prior(self.unseen_prior)
        if self.max_false_alarm is not None:
            check_false_alarm(self.max_false_alarm)
        unseen = [self.unseen_classes] if isinstance(self.unseen_classes, str) \
            else list(self.unseen_classes)
        if not unseen:
            raise ValueError("unseen_classes is empty: name at least one class with no images")
        if len(set(unseen)) != len(unseen):
            raise ValueError(f"unseen_classes has duplicates: {unseen}")
        return [str(u) for u in unseen]

    def _vectors(self, names):
        try:
            return lookup_class_vectors(names, self.class_vectors, multiword=self.multiword)
        except KeyError as exc:
            raise UnknownClassError(exc.args[0]) from None

    @uses_n_jobs
    def fit(self, X, y):
        """Train on images of the seen classes.

        Parameters
        ----------
        X : array-like of shape (n, n_features)
            Image features.
        y : array-like of str, shape (n,)
            Seen class names; none may be an unseen class.
        """
        unseen = self._check_params()
        X = as_float_matrix(X, "X", dtype=np.float32)
        y = np.asarray(y).astype(str)
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}")
        seen = sorted(set(y.tolist()))
        leaked = sorted(set(seen) & set(unseen))
        if leaked:
            raise ValueError(f"y contains unseen classes {leaked}: fit on images of seen "
                             "classes only (zero-shot classes have no training images)")
        self.seen_classes_ = np.array(seen)
        self.unseen_classes_ = np.array(unseen)
        self.classes_ = np.array(seen + unseen)
        self.class_vectors_ = self._vectors(seen + unseen)
        W_seen = self.class_vectors_[: len(seen)]
        codes = np.searchsorted(self.seen_classes_, y)

        self.mapper_ = self._new_mapper().fit(X, codes, W_seen)
        self.seen_classifier_ = SoftmaxClassifier(
            random_state=self.random_state, progress=self.progress,
            **(self.softmax_params or {})).fit(X, y)
        self.n_features_in_ = X.shape[1]
        return self._fit_novelty(X, y)

    @uses_n_jobs
    def refit_novelty(self, X, y, **params):
        """Set detector parameters and refit only the novelty detector (and the unseen
        variance), keeping the trained mapping and softmax: a cheap way to compare
        detectors on one model. ``X, y`` are the training data given to ``fit``.

        >>> gaussian = copy.deepcopy(model).refit_novelty(X, y, novelty="gaussian")  # doctest: +SKIP
        """
        check_is_fitted(self)
        trained = {"class_vectors", "unseen_classes", "mapper_params", "softmax_params",
                   "multiword", "random_state"}
        if trained & set(params):
            raise ValueError(f"refit_novelty cannot change {sorted(trained & set(params))}: "
                             "they need a full fit")
        self.set_params(**params)
        self._check_params()
        X = self._check_X(X)
        y = self._check_labels(y, X.shape[0])
        if np.isin(y, self.unseen_classes_).any():
            raise ValueError("y contains unseen classes: pass the training data given to fit")
        return self._fit_novelty(X, y)

    def _new_mapper(self, seed_offset=0):
        return SemanticMapper(random_state=self.random_state + seed_offset,
                              progress=self.progress, **(self.mapper_params or {}))

    def _fit_novelty(self, X, y):
        """Everything that decides P(unseen | x): the detection space, the detector, the
        calibration and the routing threshold; and the unseen classes' shared variance."""
        codes = np.searchsorted(self.seen_classes_, y)
        F = self.mapper_.transform(X)
        space_map, self.detector_ = self._fit_detection(X, codes, mapper=self.mapper_, F=F)
        self.projection_ = space_map if isinstance(space_map, PCAProjection) else None
        self.calibrator_, self.routing_threshold_ = None, None
        if self.calibration is not None:
            scores, is_pseudo_unseen = self._pseudo_unseen_scores(X, codes)
            prior = self.unseen_prior_
            self.calibrator_ = ScoreCalibrator(self.calibration).fit(
                scores, is_pseudo_unseen, sample_weight=prior_weights(is_pseudo_unseen, prior))
            self.routing_threshold_ = routing_threshold(
                self.calibrator_.transform(scores), is_pseudo_unseen, self.max_false_alarm)
        if self.unseen_variance is None:
            W_seen = self.class_vectors_[: len(self.seen_classes_)]
            sq = ((F - W_seen[codes]).astype(np.float64) ** 2).sum(axis=1)
            per_class = np.bincount(codes, weights=sq) / (np.bincount(codes) * F.shape[1])
            self.unseen_variance_ = float(per_class.mean())
        else:
            self.unseen_variance_ = float(self.unseen_variance)
        return self

    @property
    def novelty_space_(self):
        return DEFAULT_SPACE[self.novelty] if self.novelty_space is None else self.novelty_space

    @property
    def unseen_prior_(self):
        if self.unseen_prior is not None:
            return check_prior(self.unseen_prior)
        return len(self.unseen_classes_) / len(self.classes_)

    def _fit_detection(self, X, codes, *, mapper=None, F=None):
        """(space map, detector) fitted on images X of the seen classes ``codes`` (indices
        into ``seen_classes_``; a subset of them in a pseudo-unseen round).

        The space map takes images to the detection space (``transform``): the mapping in
        the semantic space (``mapper``, trained on X, or a new one trained here for the
        classes present; ``F`` is ``mapper.transform(X)`` if known), a PCAProjection, or
        None for the image features themselves.
        """
        space, space_map, means = self.novelty_space_, None, None
        if space == "semantic":
            present = np.unique(codes)
            W = self.class_vectors_[present]
            local = np.searchsorted(present, codes)
            if mapper is None:
                mapper, F = self._new_mapper().fit(X, local, W), None
            if self.novelty_fit == "crossfit":
                Z = self._cross_fitted(X, local, W)
            else:
                Z = mapper.transform(X) if F is None else F
            means, space_map = dict(zip(self.seen_classes_[present].tolist(), W)), mapper
        elif space == "pca":
            space_map = PCAProjection(self.pca_components, random_state=self.random_state)
            Z = space_map.fit_transform(X)
        else:
            Z = X
        return space_map, self._fit_detector(Z, self.seen_classes_[codes], means, codes)

    def _fit_detector(self, Z, y, means, codes):
        if self.novelty == "gaussian":
            return GaussianNovelty(rule=self.gaussian_rule, variance=self.gaussian_variance,
                                   backend=self.backend).fit(Z, y, means=means)
        make = lambda: LoOP(n_neighbors=self.n_neighbors, extent=self.extent,  # noqa: E731
                            backend=self.backend, knn=self.knn, progress=self.progress)
        if self.loop_per_class:
            return {self.seen_classes_[c]: make().fit(Z[codes == c]) for c in np.unique(codes)}
        return make().fit(Z)

    def _cross_fitted(self, X, codes, W):
        """X mapped out of fold: each of ``cv`` folds by a mapping trained on the others."""
        fold = np.random.default_rng(self.random_state).permutation(X.shape[0]) % self.cv
        Z = np.empty((X.shape[0], W.shape[1]), dtype=np.float32)
        for j in range(self.cv):
            rows = fold == j
            mapper = self._new_mapper(seed_offset=j + 1).fit(X[~rows], codes[~rows], W)
            Z[rows] = mapper.transform(X[rows])
        return Z

    def _pseudo_unseen_scores(self, X, codes):
        """Raw detector scores of pseudo-seen and pseudo-unseen images, pooled over the
        rounds, and which of them are pseudo-unseen (see :mod:`fastzsl.calibration`)."""
        groups = pseudo_unseen_rounds(len(self.seen_classes_), len(self.unseen_classes_),
                                      n_rounds=self.calibration_rounds,
                                      random_state=self.random_state)
        scores, labels = [], []
        for r, held_out in enumerate(groups):
            is_held = np.isin(codes, held_out)
            rest = np.flatnonzero(~is_held)
            is_val = validation_split(codes[rest], random_state=self.random_state + r)
            fit_rows, val_rows = rest[~is_val], rest[is_val]
            space_map, detector = self._fit_detection(X[fit_rows], codes[fit_rows])
            for rows, unseen in ((val_rows, False), (np.flatnonzero(is_held), True)):
                Z = X[rows] if space_map is None else space_map.transform(X[rows])
                scores.append(_raw_score(detector, Z))
                labels.append(np.full(rows.size, unseen))
        return np.concatenate(scores), np.concatenate(labels)

    # ------------------------------------------------------------------ scoring
    @property
    def threshold_(self):
        if self.threshold is not None:
            return self.threshold
        if self.calibrator_ is not None:
            return self.routing_threshold_
        return PAPER_THRESHOLD[self.novelty]

    @property
    def combine_(self):
        if self.combine is not None:
            return self.combine
        return CALIBRATED_COMBINE if self.calibrator_ is not None else PAPER_COMBINE[self.novelty]

    def _check_X(self, X):
        check_is_fitted(self)
        X = as_float_matrix(X, "X", dtype=np.float32)
        check_same_width(X, self.n_features_in_, "X", "ZeroShotClassifier")
        return X

    def _unseen_probability(self, X, F=None):
        """P(unseen | x) of validated images X (mapped: F, if the caller has it; only the
        semantic space needs it)."""
        space = self.novelty_space_
        if space == "semantic":
            Z = self.mapper_.transform(X) if F is None else F
        else:
            Z = self.projection_.transform(X) if space == "pca" else X
        score = _raw_score(self.detector_, Z)
        return score if self.calibrator_ is None else self.calibrator_.transform(score)

    def _unseen_class_probability(self, F):
        """P(y | unseen, f): softmax over the unseen classes' Gaussian log-likelihoods."""
        n_unseen = len(self.unseen_classes_)
        result = gaussian_loglik(F, self.class_vectors_[-n_unseen:],
                                 np.full(n_unseen, self.unseen_variance_), backend=self.backend)
        # Normalised in float64 from the log-likelihoods themselves, so rows sum to 1 to
        # rounding (the kernel's logsumexp is of the unrounded values, float32 ones differ).
        loglik = result.loglik.astype(np.float64)
        p = np.exp(loglik - loglik.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def _branches(self, X):
        """(P(y|seen,x), P(y|unseen,f), P(unseen|x)) for validated X."""
        F = self.mapper_.transform(X)
        return (self.seen_classifier_.predict_proba(X), self._unseen_class_probability(F),
                self._unseen_probability(X, F))

    def _combine(self, p_seen, p_unseen_class, p_unseen, combine, threshold):
        if combine == "hard":
            p_unseen = (p_unseen > threshold).astype(np.float64)
        return np.hstack([p_seen * (1.0 - p_unseen)[:, None],
                          p_unseen_class * p_unseen[:, None]])

    @uses_n_jobs
    def predict_proba(self, X):
        """P(y | x) over ``classes_`` (seen then unseen): float64, rows sum to 1 within 1e-12."""
        return self.predict_proba_with_novelty(X)[0]

    def predict_proba_with_novelty(self, X):
        """``(predict_proba(X), outlier_probability(X))`` from one pass over X.

        What batch scoring needs: the mapping and the novelty detector run once per row.
        """
        p_seen, p_unseen_class, p_unseen = self._branches(self._check_X(X))
        proba = self._combine(p_seen, p_unseen_class, p_unseen, self.combine_, self.threshold_)
        return proba, p_unseen

    def predict(self, X):
        """The most probable class name of each row."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    @uses_n_jobs
    def outlier_probability(self, X):
        """P(unseen | x) from the novelty detector, in [0, 1]."""
        return self._unseen_probability(self._check_X(X))

    @uses_n_jobs
    def transform(self, X):
        """The semantic-space points f(x), shape (n, d)."""
        return self.mapper_.transform(self._check_X(X))

    # ------------------------------------------------------------------ evaluation
    def _check_labels(self, y, n):
        y = np.asarray(y).astype(str)
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},), got {y.shape}")
        unknown = sorted(set(y.tolist()) - set(self.classes_.tolist()))
        if unknown:
            raise UnknownClassError(f"y has class names the model does not know: {unknown}; "
                                    f"known: {self.classes_.tolist()}")
        return y

    @uses_n_jobs
    def evaluate(self, X, y, thresholds=np.linspace(0.0, 1.0, 11), *,
                 unseen_probability=None) -> dict:
        """Accuracies of the fitted model on labelled test images (seen and unseen classes).

        Returns a dict with the soft and hard variants' seen / unseen / overall accuracy
        and GZSL scores, the zero-shot accuracy among the unseen classes alone (unseen
        images, unseen classifier only: the paper's 2-way number for two unseen classes),
        and the hard-threshold curve over ``thresholds``.

        ``unseen_probability`` (shape (n,)), when given, replaces the fitted detector's
        P(unseen | x): it scores another novelty detector (e.g. one fitted in the raw
        feature space) inside this model's classifiers, with this model's threshold.
        """
        X = self._check_X(X)
        y = self._check_labels(y, X.shape[0])
        p_seen, p_unseen_class, p_unseen = self._branches(X)
        if unseen_probability is not None:
            p_unseen = np.asarray(unseen_probability, dtype=np.float64)
            if p_unseen.shape != (X.shape[0],):
                raise ValueError(f"unseen_probability must have shape ({X.shape[0]},), "
                                 f"got {p_unseen.shape}")
        seen, unseen = self.seen_classes_.tolist(), self.unseen_classes_.tolist()

        def scores(proba):
            pred = self.classes_[np.argmax(proba, axis=1)]
            return {**zero_shot_accuracies(y, pred, unseen), **gzsl_scores(y, pred, seen, unseen)}

        is_unseen = np.isin(y, unseen)
        zsl_pred = self.unseen_classes_[np.argmax(p_unseen_class[is_unseen], axis=1)]
        curve = [scores(self._combine(p_seen, p_unseen_class, p_unseen, "hard", t))
                 for t in thresholds]
        return {
            "soft": scores(self._combine(p_seen, p_unseen_class, p_unseen, "soft", None)),
            "hard": scores(self._combine(p_seen, p_unseen_class, p_unseen, "hard",
                                         self.threshold_)),
            "threshold": self.threshold_,
            "zero_shot_accuracy": float(np.mean(zsl_pred == y[is_unseen])) if is_unseen.any()
            else float("nan"),
            "curve": {"thresholds": list(map(float, thresholds)),
                      **{key: [c[key] for c in curve] for key in curve[0]}},
        }

    # ------------------------------------------------------------------ model files
    def _export(self):
        params = self.get_params()
        params["class_vectors"] = None  # stored as the class_vectors array instead
        parts = {"mapper": self.mapper_._export(), "softmax": self.seen_classifier_._export()}
        if isinstance(self.detector_, dict):
            for i, detector in enumerate(self.detector_.values()):
                parts[f"detector{i}"] = detector._export()
        else:
            parts["detector"] = self.detector_._export()
        for name, part in (("projection", self.projection_), ("calibrator", self.calibrator_)):
            if part is not None:
                parts[name] = part._export()
        meta, arrays = pack_parts(parts)
        meta.update(params=params, classes=self.classes_.tolist(), n_seen=len(self.seen_classes_),
                    unseen_variance=self.unseen_variance_, n_features_in=self.n_features_in_,
                    routing_threshold=self.routing_threshold_)
        arrays["class_vectors"] = self.class_vectors_
        return meta, arrays

    @classmethod
    def _restore(cls, meta, arrays):
        def part(name):
            return unpack_part(meta, arrays, name)

        classes = meta["classes"]
        n_seen = meta["n_seen"]
        vectors = arrays["class_vectors"]
        # Files written before calibration existed hold the paper's pipeline.
        params = {**PAPER, **meta["params"]}
        params["class_vectors"] = {c: vectors[i] for i, c in enumerate(classes)}
        model = cls(**params)
        model.classes_ = np.array(classes)
        model.seen_classes_, model.unseen_classes_ = model.classes_[:n_seen], model.classes_[n_seen:]
        model.class_vectors_ = vectors
        model.unseen_variance_ = meta["unseen_variance"]
        model.n_features_in_ = meta["n_features_in"]
        model.mapper_ = SemanticMapper._restore(*part("mapper"))
        model.seen_classifier_ = SoftmaxClassifier._restore(*part("softmax"))
        if model.novelty == "gaussian":
            model.detector_ = GaussianNovelty._restore(*part("detector"))
        elif model.loop_per_class:
            model.detector_ = {c: LoOP._restore(*part(f"detector{i}"))
                               for i, c in enumerate(model.seen_classes_)}
        else:
            model.detector_ = LoOP._restore(*part("detector"))
        model.projection_ = PCAProjection._restore(*part("projection")) \
            if "projection" in meta else None
        model.calibrator_ = ScoreCalibrator._restore(*part("calibrator")) \
            if "calibrator" in meta else None
        model.routing_threshold_ = meta.get("routing_threshold")
        return model


def _raw_score(detector, Z):
    """The uncalibrated novelty score: the detector's outlier probability (the minimum
    over the per-class LoOPs with ``loop_per_class``, as in the authors' code)."""
    if isinstance(detector, dict):
        return np.min([d.outlier_probability(Z) for d in detector.values()], axis=0)
    return np.asarray(detector.outlier_probability(Z), dtype=np.float64)
