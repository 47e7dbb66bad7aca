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

P(unseen | x) comes from a :class:`fastzsl.novelty_gate.NoveltyGate`, an estimator object
of its own: by default LoOP in a PCA of the image features and the Gaussian detector in the
semantic space, calibrated on pseudo-unseen rounds of the seen classes, which also choose
between one detector and a combination with class-agnostic features, the hard-routing
threshold and soft or hard routing for ``predict`` (``docs/method.md`` section 4c). No
unseen image takes part in any of these choices. ``predict_proba`` is the calibrated Eq. 2
mixture; ``unseen_prior`` states the unseen share and takes effect without refitting.
:func:`fastzsl.novelty_gate.paper_gate` gives the paper's pipeline (both detectors in the
semantic space, fitted on the mapped training points, uncalibrated: LoOP's probability
in the soft Eq. 2, the Gaussian detector's training-set rank thresholded).
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from sklearn.base import clone

from ._model_files import SaveMixin, pack_parts, unpack_part
from ._validation import as_float_matrix, check_option, check_same_width
from .backends import uses_n_jobs
from .calibration import ScoreCalibrator, check_prior
from .embeddings import class_vectors as lookup_class_vectors
from .gaussian import gaussian_loglik
from .mapping import SemanticMapper
from .metrics import gzsl_scores, zero_shot_accuracies
from .novelty_gate import (SHORTHANDS, NoveltyGate, PCAProjection, PerClass, _restore_part,
                           paper_gate, shorthand_detector)
from .softmax import SoftmaxClassifier

COMBINE = ("soft", "hard")
NOVELTY = ("auto",) + SHORTHANDS


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
    novelty : "auto", "loop", "gaussian" or NoveltyGate, default="auto"
        What gives P(unseen | x). ``"auto"``: a gate with LoOP in a PCA of the features
        and the Gaussian detector in the semantic space; ``"loop"``/``"gaussian"``: a gate
        with that detector alone; :func:`fastzsl.novelty_gate.paper_gate` for the paper's
        pipeline. A gate object is cloned at fit.
    mapper : SemanticMapper, optional
        The (unfitted) mapping into the word-vector space; default
        ``SemanticMapper(random_state=random_state)``. Cloned at fit.
    seen_classifier : SoftmaxClassifier, optional
        The (unfitted) classifier of the seen classes; default
        ``SoftmaxClassifier(random_state=random_state)``. Cloned at fit.
    combine : {"soft", "hard"}, optional
        Force one combination for ``predict_proba`` and ``predict``: Eq. 2 of the paper, or
        route each image by ``outlier_probability > threshold``. Default: ``predict_proba``
        is the soft Eq. 2 mixture (calibrated gates; the paper's routing for uncalibrated
        ones) and ``predict`` routes as the gate's rounds preferred (``combine_``).
    threshold : float, optional
        For hard routing; default the gate's (chosen on the pseudo-unseen rounds).
    unseen_prior : float, optional
        The unseen share of the images to classify; P(unseen | x) follows by Bayes' rule,
        without refitting (``set_params(unseen_prior=...)`` on a fitted model). Default:
        the gate's ``unseen_prior``, else n_unseen / (n_seen + n_unseen).
    unseen_variance : float, optional
        The shared variance of the unseen-class Gaussians (a softmax temperature); default
        the mean variance of the mapped seen training points around their word vectors.
    multiword : {"average", "error"}, default="average"
    backend : str, default="auto"
        Kernel backend of the shorthand detectors (and of the detectors of a gate object,
        when not "auto").
    random_state : int, default=0
        Seeds the default mapping and softmax and the gate.
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
    gate_ : NoveltyGate
    unseen_variance_ : float
    """

    def __init__(self, class_vectors, unseen_classes, *, novelty="auto", mapper=None,
                 seen_classifier=None, combine=None, threshold=None, unseen_prior=None,
                 unseen_variance=None, multiword="average", backend="auto", random_state=0,
                 progress=False, n_jobs=None):
        self.class_vectors = class_vectors
        self.unseen_classes = unseen_classes
        self.novelty = novelty
        self.mapper = mapper
        self.seen_classifier = seen_classifier
        self.combine = combine
        self.threshold = threshold
        self.unseen_prior = unseen_prior
        self.unseen_variance = unseen_variance
        self.multiword = multiword
        self.backend = backend
        self.random_state = random_state
        self.progress = progress
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------ fitting
    def _check_params(self):
        if isinstance(self.novelty, str) and self.novelty not in NOVELTY:
            raise ValueError(f"novelty must be one of {NOVELTY} or a NoveltyGate, "
                             f"got {self.novelty!r}")
        if not isinstance(self.novelty, (str, NoveltyGate)):
            raise TypeError(f"novelty must be one of {NOVELTY} or a NoveltyGate, got a "
                            f"{type(self.novelty).__name__}")
        if isinstance(self.novelty, NoveltyGate):
            self.novelty._check_params()  # before any training
        check_option(self.combine, COMBINE, "combine", allow_none=True)
        if self.unseen_prior is not None:
            check_prior(self.unseen_prior)
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

    def _new_gate(self) -> NoveltyGate:
        """The gate to fit: the shorthand's, or a clone of the given one."""
        if isinstance(self.novelty, str):
            kinds = SHORTHANDS if self.novelty == "auto" else (self.novelty,)
            gate = NoveltyGate([shorthand_detector(k, backend=self.backend,
                                                   progress=self.progress) for k in kinds])
        else:
            gate = clone(self.novelty)
            if self.backend != "auto":
                for _, detector, _ in gate._detector_specs():
                    if "backend" in detector.get_params():
                        detector.set_params(backend=self.backend)
        return gate.set_params(random_state=self.random_state)

    def _new_mapper(self):
        if self.mapper is None:
            return SemanticMapper(random_state=self.random_state, progress=self.progress)
        return clone(self.mapper)

    def _new_seen_classifier(self):
        if self.seen_classifier is None:
            return SoftmaxClassifier(random_state=self.random_state, progress=self.progress)
        return clone(self.seen_classifier)

    @uses_n_jobs
    def fit(self, X, y, *, round_features=None):
        """Train on images of the seen classes.

        Parameters
        ----------
        X : array-like of shape (n, n_features)
            Image features.
        y : array-like of str, shape (n,)
            Seen class names; none may be an unseen class.
        round_features : callable, optional
            ``round_features(held_out)`` -> the features of X's rows learnt again without
            the images of the seen classes ``held_out`` (names): the novelty gate's
            pseudo-unseen rounds then see their held-out classes as foreign to the
            features as a real unseen class is (:meth:`NoveltyGate.fit`).
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
        self.seen_classifier_ = self._new_seen_classifier().fit(X, y)
        self.n_features_in_ = X.shape[1]
        return self._fit_novelty(X, y, round_features)

    @uses_n_jobs
    def refit_novelty(self, X, y, *, round_features=None, **params):
        """Set parameters and refit only the novelty gate (and the unseen variance),
        keeping the trained mapping and softmax: a cheap way to compare gates on one
        model. ``X, y`` (and ``round_features``) are those given to ``fit``.

        >>> paper = copy.deepcopy(model).refit_novelty(X, y, novelty=paper_gate())  # doctest: +SKIP
        """
        check_is_fitted(self)
        trained = {"class_vectors", "unseen_classes", "mapper", "seen_classifier",
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
        return self._fit_novelty(X, y, round_features)

    def _fit_novelty(self, X, y, round_features=None):
        """The novelty gate, fitted on the seen classes alone, and the unseen classes'
        shared variance."""
        codes = np.searchsorted(self.seen_classes_, y)
        F = self.mapper_._map(X)
        W_seen = self.class_vectors_[: len(self.seen_classes_)]
        self.gate_ = self._new_gate().fit(
            X, y, seen_vectors=W_seen, unseen_vectors=self.class_vectors_[len(W_seen):],
            mapper=self.mapper_, seen_classifier=self.seen_classifier_, F=F,
            round_features=round_features)
        if self.unseen_variance is None:
            sq = ((F - W_seen[codes]).astype(np.float64) ** 2).sum(axis=1)
            per_class = np.bincount(codes, weights=sq) / (np.bincount(codes) * F.shape[1])
            self.unseen_variance_ = float(per_class.mean())
        else:
            self.unseen_variance_ = float(self.unseen_variance)
        return self

    @uses_n_jobs
    def adapt(self, X, **params):
        """Learn P(unseen | x) from ``X``, a batch of the images to classify (no labels),
        whose unseen share is ``unseen_prior`` (set it first): the training images and the
        batch are compared by neighbours in the gate's LoOP space, which needs no unseen
        label (:mod:`fastzsl.adaptation`). Until ``adapt(None)``, P(unseen | x) comes from
        that comparison; ``params`` go to :meth:`NoveltyGate.adapt`.

        Use it when the images to classify are at hand before they are classified, as in
        batch scoring; the rows it was fitted on may be classified too (each is scored
        without itself).
        """
        check_is_fitted(self)
        if X is None:
            self.gate_.adapt(None)
            return self
        X = self._check_X(X)
        F = self.mapper_._map(X) if self.gate_.uses_semantic_space else None
        self.gate_.adapt(X, F=F, **params)
        return self

    # ------------------------------------------------------------------ scoring
    @property
    def unseen_prior_(self) -> float:
        """The unseen share P(unseen | x) assumes now."""
        if self.unseen_prior is not None:
            return check_prior(self.unseen_prior)
        return self.gate_.prior()

    @property
    def threshold_(self) -> float:
        """The hard-routing threshold on P(unseen | x) (at ``unseen_prior_``)."""
        if self.threshold is not None:
            return self.threshold
        return self.gate_.threshold(self.unseen_prior_)

    @property
    def combine_(self) -> str:
        """How ``predict`` combines the branches: ``combine``, else the gate's routing."""
        return self.combine if self.combine is not None else self.gate_.predict_routing_

    @property
    def proba_combine_(self) -> str:
        """How ``predict_proba`` combines them: ``combine``, else the soft Eq. 2 mixture
        (calibrated gates) or the paper's routing (uncalibrated ones)."""
        if self.combine is not None:
            return self.combine
        return "soft" if self.gate_.calibrated_ else self.gate_.routing_

    def _check_X(self, X):
        check_is_fitted(self)
        X = as_float_matrix(X, "X", dtype=np.float32)
        check_same_width(X, self.n_features_in_, "X", "ZeroShotClassifier")
        return X

    def _unseen_probability(self, X, F=None, p_seen=None):
        """P(unseen | x) of validated images X (mapped: F, and the seen softmax's
        probabilities, if the caller has them; computed only when the gate needs them)."""
        if self.gate_.uses_semantic_space and F is None:
            F = self.mapper_._map(X)
        if self.gate_.agnostic_ and p_seen is None:
            p_seen = self.seen_classifier_._proba(X)
        return self.gate_.outlier_probability(X, F=F, p_seen=p_seen, prior=self.unseen_prior_)

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
        F = self.mapper_._map(X)
        p_seen = self.seen_classifier_._proba(X)
        return p_seen, self._unseen_class_probability(F), self._unseen_probability(X, F, p_seen)

    def _combine(self, p_seen, p_unseen_class, p_unseen, combine, threshold):
        if combine == "hard":
            p_unseen = (p_unseen > threshold).astype(np.float64)
        return np.hstack([p_seen * (1.0 - p_unseen)[:, None],
                          p_unseen_class * p_unseen[:, None]])

    @uses_n_jobs
    def predict_proba(self, X):
        """P(y | x) over ``classes_`` (seen then unseen): float64, rows sum to 1 within
        1e-12. The calibrated Eq. 2 mixture unless ``combine`` says otherwise."""
        return self.predict_proba_with_novelty(X)[0]

    def predict_proba_with_novelty(self, X):
        """``(predict_proba(X), outlier_probability(X))`` from one pass over X."""
        _, proba, p_unseen = self.predict_with_proba(X)
        return proba, p_unseen

    @uses_n_jobs
    def predict_with_proba(self, X):
        """``(predict(X), predict_proba(X), outlier_probability(X))`` from one pass over X.

        What batch scoring needs: the mapping and the novelty gate run once per row.
        """
        p_seen, p_unseen_class, p_unseen = self._branches(self._check_X(X))
        proba = self._combine(p_seen, p_unseen_class, p_unseen, self.proba_combine_,
                              self.threshold_)
        routed = proba if self.combine_ == self.proba_combine_ else self._combine(
            p_seen, p_unseen_class, p_unseen, self.combine_, self.threshold_)
        return self.classes_[np.argmax(routed, axis=1)], proba, p_unseen

    def predict(self, X):
        """The most probable class name of each row, routed as ``combine_`` says."""
        return self.predict_with_proba(X)[0]

    @uses_n_jobs
    def outlier_probability(self, X):
        """P(unseen | x) from the novelty gate, in [0, 1], at ``unseen_prior_``."""
        return self._unseen_probability(self._check_X(X))

    @uses_n_jobs
    def transform(self, X):
        """The semantic-space points f(x), shape (n, d)."""
        return self.mapper_._map(self._check_X(X))

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
        and GZSL scores (``routing``: which of them ``predict`` uses), the zero-shot
        accuracy among the unseen classes alone (unseen images, unseen classifier only: the
        paper's 2-way number for two unseen classes), and the hard-threshold curve over
        ``thresholds``.

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
            "threshold": self.threshold_, "routing": self.combine_,
            "zero_shot_accuracy": float(np.mean(zsl_pred == y[is_unseen])) if is_unseen.any()
            else float("nan"),
            "curve": {"thresholds": list(map(float, thresholds)),
                      **{key: [c[key] for c in curve] for key in curve[0]}},
        }

    # ------------------------------------------------------------------ model files
    def _export(self):
        params = self.get_params(deep=False)
        params.update(class_vectors=None,  # stored as the class_vectors array instead
                      novelty=self.novelty if isinstance(self.novelty, str) else None,
                      mapper=None, seen_classifier=None)  # the fitted parts hold theirs
        meta, arrays = pack_parts({"mapper": self.mapper_._export(),
                                   "softmax": self.seen_classifier_._export(),
                                   "gate": self.gate_._export()})
        meta.update(params=params, classes=self.classes_.tolist(), n_seen=len(self.seen_classes_),
                    unseen_variance=self.unseen_variance_, n_features_in=self.n_features_in_)
        arrays["class_vectors"] = self.class_vectors_
        return meta, arrays

    @classmethod
    def _restore(cls, meta, arrays):
        def part(name):
            return unpack_part(meta, arrays, name)

        classes = meta["classes"]
        n_seen = meta["n_seen"]
        vectors = arrays["class_vectors"]
        if "gate" in meta:
            params, gate = dict(meta["params"]), NoveltyGate._restore(*part("gate"))
            params["novelty"] = params["novelty"] or clone(gate)
        else:  # written before the gate existed (0.1.0 and later)
            params, gate = _legacy_params_and_gate(meta, arrays, np.array(classes[:n_seen]))
        params["class_vectors"] = {c: vectors[i] for i, c in enumerate(classes)}
        model = cls(**params)
        model.classes_ = np.array(classes)
        model.seen_classes_, model.unseen_classes_ = model.classes_[:n_seen], model.classes_[n_seen:]
        model.class_vectors_ = vectors
        model.unseen_variance_ = meta["unseen_variance"]
        model.n_features_in_ = meta["n_features_in"]
        model.mapper_ = SemanticMapper._restore(*part("mapper"))
        model.seen_classifier_ = SoftmaxClassifier._restore(*part("softmax"))
        model.gate_ = gate
        model.mapper, model.seen_classifier = clone(model.mapper_), clone(model.seen_classifier_)
        return model


# Files written before calibration existed hold the paper's pipeline.
_LEGACY_PAPER = {"novelty_space": "semantic", "novelty_fit": "training", "calibration": None}
_LEGACY_SPACE = {"loop": "pca", "gaussian": "semantic"}


def _legacy_params_and_gate(meta, arrays, seen_classes):
    """(ZeroShotClassifier params, fitted NoveltyGate) of a model file written before the
    gate existed: the same detector, projection, calibrator and threshold, so the loaded
    model gives the outputs it gave then."""
    old = {**_LEGACY_PAPER, **meta["params"]}
    kind = old["novelty"]
    space = old["novelty_space"] or _LEGACY_SPACE[kind]
    if old.get("loop_per_class"):
        detectors = [_restore_part("LoOP", *unpack_part(meta, arrays, f"detector{i}"))
                     for i in range(len(seen_classes))]
        detector = PerClass(detectors[0])
        detector.classes_, detector.detectors_ = seen_classes, detectors
    else:
        name = "GaussianNovelty" if kind == "gaussian" else "LoOP"
        detector = _restore_part(name, *unpack_part(meta, arrays, "detector"))
    projection = PCAProjection._restore(*unpack_part(meta, arrays, "projection")) \
        if "projection" in meta else None
    calibrated = "calibrator" in meta
    n_unseen = len(meta["classes"]) - len(seen_classes)
    default_prior = n_unseen / len(meta["classes"])
    gate = NoveltyGate([(kind, detector, space)], calibration=old["calibration"],
                       class_agnostic=False, unseen_prior=old.get("unseen_prior"),
                       rounds=old.get("calibration_rounds"),
                       max_false_alarm=old.get("max_false_alarm", 0.1),
                       routing="hard" if calibrated else
                       {"loop": "soft", "gaussian": "hard"}[kind],
                       fit_mode=old["novelty_fit"], cv=old.get("cv", 5),
                       pca_components=old.get("pca_components", 50),
                       random_state=old.get("random_state", 0))
    gate.channels_ = [(kind, space, projection, detector)]
    gate.classes_ = seen_classes
    gate.agnostic_, gate.seen_vectors_, gate.unseen_vectors_ = False, None, None
    gate.default_prior_, gate.choice_ = default_prior, {}
    gate.routing_ = gate.routing
    if calibrated:
        gate.calibrator_ = ScoreCalibrator._restore(*unpack_part(meta, arrays, "calibrator"))
        gate.calibration_ = f"{gate.calibrator_.method} {kind}"
        # the calibrator and threshold were fitted at the prior of the time
        gate.reference_prior_ = old.get("unseen_prior") or default_prior
        gate.routing_threshold_ = meta.get("routing_threshold")
    else:
        gate.calibrator_, gate.calibration_, gate.routing_threshold_ = None, "none", None
        gate.reference_prior_ = 0.5
    params = {key: old[key] for key in ("unseen_classes", "combine", "threshold",
                                         "unseen_variance", "multiword", "backend",
                                         "random_state", "progress") if key in old}
    params.update(n_jobs=old.get("n_jobs"), novelty=clone(gate),
                  unseen_prior=old.get("unseen_prior"))
    if calibrated and params.get("combine") is None:
        params["combine"] = "hard"  # what a calibrated model combined with then
    return params, gate
