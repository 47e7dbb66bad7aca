r"""The novelty gate: P(unseen | x) as one component, every choice made on seen classes.

A :class:`NoveltyGate` owns everything that decides whether an image belongs to a class
with no training images: the detection spaces and their projections, the detectors, the
calibration, the prior and the routing. The zero-shot model (:mod:`fastzsl.zeroshot`)
takes it as an estimator object; ``"loop"`` and ``"gaussian"`` are shorthands and
:func:`paper_gate` is the paper's pipeline.

**The detector protocol.** A detector has ``fit(X, y=None, class_means=None)`` (X: the
training points in the detection space, y: their seen-class names, class_means: {name:
word vector} in the semantic space) and ``outlier_probability(X)``: a float64 score per
row in [0, 1], higher = more novel. :class:`fastzsl.LoOP` and
:class:`fastzsl.GaussianNovelty` follow it; :class:`SklearnOutlier` admits any
scikit-learn outlier detector with ``score_samples`` (``IsolationForest``,
``LocalOutlierFactor(novelty=True)``) and :class:`PerClass` fits one detector per class
(the authors' code's per-class LoOP). Saving needs ``_export``/``_restore`` as well.

**Every choice on pseudo-unseen rounds** (``docs/method.md`` section 4c). At fit time
each round holds out a group of seen classes (as many as the real unseen ones) as
pseudo-unseen, refits the whole pipeline (projections, detectors, and, when needed, a
mapping and a seen softmax) on 80% of the other classes' images and scores the other 20%
(pseudo-seen) and the held-out classes' images (pseudo-unseen). On these scores, and on
nothing else, the gate chooses

- the calibration: each detector alone with a monotone (isotonic) map, or a combination of
  all detectors' scores and two class-agnostic features (the seen softmax's top
  probability, and how much nearer the mapped image lies to the nearest unseen class
  vector than to the nearest seen one: COSMO, Atzmon & Chechik, CVPR 2019), either a
  logistic *stack* or the isotonic map of their equal-weight *mean*: among those whose
  log loss over all rounds beats the constant share's, the one with the lowest log loss
  on its worst round, each round scored by a fit on the other rounds (leave one round
  out). The worst round, not the mean over rounds, because the rounds flatter some
  scores: the features were learnt with the pseudo-unseen classes' images, which real
  unseen classes never are, and that inflates the semantic-space scores most;
- the hard-routing threshold (at most ``max_false_alarm`` of the pseudo-seen images sent
  to the unseen branch, then the best harmonic mean of both routings);
- soft (Eq. 2) or hard routing for ``predict``: whichever gives the higher GZSL H on the
  rounds, with out-of-round probabilities.

**The prior is the user's.** The calibrators are fitted with the pseudo-unseen and
pseudo-seen rows weighted equally, i.e. they estimate P(unseen | x) at prior 1/2; the
probability at the stated unseen share pi follows by Bayes' rule on the odds,
logit P_pi = logit P_1/2 + logit pi. Changing the prior needs no refit.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from ._model_files import SaveMixin, pack_parts, unpack_part
from ._threads import sized_blas_threads, sized_matmul
from ._validation import as_float_matrix, check_finite, check_option, check_same_width
from .adaptation import MAX_ROWS, N_NEIGHBORS, BatchAdaptation, row_keys
from .calibration import (MeanCalibrator, ScoreCalibrator, StackCalibrator, check_false_alarm,
                          check_prior, log_loss, prior_weights, pseudo_unseen_rounds,
                          routing_threshold, validation_split)

SPACES = ("pca", "semantic", "features")
FIT_MODES = ("training", "crossfit")
CALIBRATIONS = ("auto", "isotonic", "platt", "stack", "mean")
# Calibrators that read every column of the features, not one detector's score.
COMBINED = {"stack": StackCalibrator, "mean": MeanCalibrator}
ROUTINGS = ("auto", "soft", "hard")
AGNOSTIC = ("seen_confidence", "unseen_proximity")
# Where each shorthand's detector works: LoOP in a PCA of the image features, the
# Gaussian detector in the semantic space (it needs the word vectors as class means).
SHORTHANDS = ("loop", "gaussian")
# The paper's detectors are uncalibrated: LoOP's probability, near 0 for typical points,
# goes into the soft Eq. 2; the Gaussian detector's training-set rank is thresholded.
PAPER_ROUTING = {"loop": "soft", "gaussian": "hard"}
# How the rounds choose the calibration; results measured under another rule are stale.
CHOICE_RULE = "lowest worst-round log loss among candidates beating the constant share; " \
    "candidates: isotonic per detector, stack, mean"
REFERENCE_PRIOR = 0.5  # what the calibrators are fitted at
SCORE_EPS = 1e-4       # scores in [0, 1] are clipped to [eps, 1 - eps] before a logit
ROUND_MAX_PER_CLASS = 1000  # images per class that train a round's mapping and softmax
# Rows the PCA projection centres at a time (512 x 3,200 float32: 6.5 MB, within L3);
# 8,192 at a time was no faster than centring all of X (10,000 x 3,200, 2 cores)
CENTRED_ROWS = 512
# An adapted gate (see adapt): P(unseen | x) is calibrated at the batch's share, so hard
# routing takes the Bayes decision; predict routes as development pairs preferred
# (benchmarks/results/novelty-adaptation-dev.md).
ADAPTED_ROUTING = "soft"
ADAPTED_THRESHOLD = 0.5


def shorthand_detector(kind, *, n_neighbors=20, extent=3.0, rule="paper",
                       variance="class", backend="auto", knn="auto", progress=False):
    """(name, detector, space) of a shorthand: ``"loop"`` (LoOP in a PCA of the image
    features) or ``"gaussian"`` (the paper's Gaussian detector in the semantic space)."""
    from .gaussian import GaussianNovelty
    from .loop import LoOP

    if kind == "loop":
        return ("loop", LoOP(n_neighbors=n_neighbors, extent=extent, backend=backend,
                             knn=knn, progress=progress), "pca")
    if kind == "gaussian":
        return ("gaussian", GaussianNovelty(rule=rule, variance=variance, backend=backend),
                "semantic")
    raise ValueError(f"unknown detector shorthand {kind!r}; choose one of {SHORTHANDS}")


def paper_gate(kind="loop", **detector_params):
    """The paper's pipeline: the detector in the semantic space, fitted on the mapped
    training points, uncalibrated (LoOP soft, the Gaussian detector hard at 0.95)."""
    name, detector, _ = shorthand_detector(kind, **detector_params)
    return NoveltyGate([(name, detector, "semantic")], calibration=None,
                       routing=PAPER_ROUTING[kind], class_agnostic=False)


class SklearnOutlier(SaveMixin, BaseEstimator):
    """A scikit-learn outlier detector with ``score_samples`` (higher = more normal) under
    the detector protocol: the outlier probability of a point is the fraction of the
    training points that score more normal than it (a rank in [0, 1], like the Gaussian
    detector's). Not saveable: model files hold no pickled objects."""

    default_threshold = 0.95

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y=None, class_means=None):
        if not hasattr(self.estimator, "score_samples"):
            raise TypeError(f"{type(self.estimator).__name__} has no score_samples: the "
                            "adapter needs a scikit-learn outlier detector that has one")
        X = as_float_matrix(X, "X")
        self.estimator_ = clone(self.estimator).fit(X)
        self.train_scores_ = np.sort(np.asarray(self.estimator_.score_samples(X), np.float64))
        return self

    def outlier_probability(self, X):
        check_is_fitted(self)
        s = np.asarray(self.estimator_.score_samples(as_float_matrix(X, "X")), np.float64)
        more_normal = self.train_scores_.size - np.searchsorted(self.train_scores_, s, "right")
        return more_normal / self.train_scores_.size

    def _export(self):
        raise TypeError(f"a gate with a scikit-learn detector "
                        f"({type(self.estimator).__name__}) cannot be saved: fastzsl model "
                        "files hold no pickled objects")


class PerClass(SaveMixin, BaseEstimator):
    """One detector per seen class; P(unseen | x) is the minimum over the classes (the
    authors' code's per-class LoOP)."""

    def __init__(self, detector):
        self.detector = detector

    def fit(self, X, y=None, class_means=None):
        if y is None:
            raise ValueError("PerClass needs the seen-class label of every row")
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        self.detectors_ = [clone(self.detector).fit(X[y == c]) for c in self.classes_]
        return self

    def outlier_probability(self, X):
        check_is_fitted(self)
        return np.min([d.outlier_probability(X) for d in self.detectors_], axis=0)

    def _export(self):
        meta, arrays = pack_parts({f"detector{i}": d._export()
                                   for i, d in enumerate(self.detectors_)})
        meta["kinds"] = [type(d).__name__ for d in self.detectors_]
        meta["classes"] = self.classes_.tolist()
        return meta, arrays

    @classmethod
    def _restore(cls, meta, arrays):
        detectors = [_restore_part(kind, *unpack_part(meta, arrays, f"detector{i}"))
                     for i, kind in enumerate(meta["kinds"])]
        model = cls(detectors[0])
        model.classes_, model.detectors_ = np.array(meta["classes"]), detectors
        return model


def _restore_part(kind, meta, arrays):
    """A detector of a model file, restored by the class its recorded name stands for."""
    import importlib

    from .persistence import RESTORERS

    if kind not in RESTORERS:
        raise ValueError(f"unknown detector {kind!r} in the model file")
    module, name = RESTORERS[kind].split(":")
    return getattr(importlib.import_module(module), name)._restore(meta, arrays)


class PCAProjection:
    """Projection on the top principal components of (a seeded sample of) the training
    features: the reduced raw space LoOP detects in."""

    def __init__(self, n_components=50, *, max_rows=10_000, random_state=0):
        self.n_components = n_components
        self.max_rows = max_rows
        self.random_state = random_state

    def fit(self, X):
        from sklearn.decomposition import PCA

        X = as_float_matrix(X, "X", dtype=np.float32)
        n = self.n_components
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"pca_components must be an int >= 1, got {n!r}")
        rows = X
        if X.shape[0] > self.max_rows:
            rng = np.random.default_rng(self.random_state)
            rows = X[np.sort(rng.choice(X.shape[0], self.max_rows, replace=False))]
        n = min(n, rows.shape[0], X.shape[1])
        pca = PCA(n_components=n, random_state=self.random_state).fit(rows)
        self.mean_ = pca.mean_.astype(np.float32)
        self.components_ = pca.components_.astype(np.float32)
        return self

    def transform(self, X) -> np.ndarray:
        """(X - mean) C^T in float32, centred and projected CENTRED_ROWS rows at a time:
        the same products without a centred copy of all of X (10,000 rows of 3,200
        features: 128 MB more memory and a third of the projection's time)."""
        X = as_float_matrix(X, "X", finite=False)  # NaN/inf: found in the output below
        check_same_width(X, self.mean_.shape[0], "X", "the novelty gate's PCA projection")
        n, comps = X.shape[0], self.components_.T
        # blocks of equal size: none of one row, which NumPy multiplies by gemv (other bits)
        n_blocks = max(1, (n + CENTRED_ROWS - 1) // CENTRED_ROWS)
        step = max(1, (n + n_blocks - 1) // n_blocks)
        out = np.empty((n, comps.shape[1]), dtype=np.float32)
        centred = np.empty((min(step, n), X.shape[1]), dtype=np.result_type(X, self.mean_))
        # (values beyond float32's range are refused below, with a clearer message)
        with sized_blas_threads(n * X.shape[1] * comps.shape[1]), \
                np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, n, step):
                rows = centred[:min(step, n - start)]
                np.subtract(X[start:start + len(rows)], self.mean_, out=rows)
                out[start:start + len(rows)] = rows @ comps
        if not np.isfinite(out).all():  # the projection's n x 50 values: a cheap check
            check_finite(X, "X")  # names the image's NaN or infinity, if it has one
            raise ValueError("the novelty gate's PCA projection of X is not finite: "
                             "values beyond float32's range")
        return out

    def fit_transform(self, X):
        return self.fit(X).transform(X)

    def _export(self):
        return ({"n_components": int(self.components_.shape[0]), "max_rows": self.max_rows,
                 "random_state": self.random_state},
                {"mean": self.mean_, "components": self.components_})

    @classmethod
    def _restore(cls, meta, arrays):
        projection = cls(meta["n_components"], max_rows=meta["max_rows"],
                         random_state=meta["random_state"])
        projection.mean_ = np.asarray(arrays["mean"], dtype=np.float32)
        projection.components_ = np.asarray(arrays["components"], dtype=np.float32)
        return projection


def logit(p, eps=0.0):
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def at_prior(p, reference, prior):
    """P(unseen | x) estimated at unseen share ``reference``, moved to ``prior`` by Bayes'
    rule on the odds (p of 0 or 1 stays)."""
    p = np.asarray(p, dtype=np.float64)
    if prior == reference:
        return p
    shift = np.log(prior / (1 - prior)) - np.log(reference / (1 - reference))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        odds = np.exp(logit(p) + shift)
        return np.where(np.isinf(odds), 1.0, odds / (1.0 + odds))


class _Scene:
    """What the gate reads from the zero-shot model around it: the seen and unseen class
    vectors, the fitted mapping and seen softmax, and how to train new ones for a round."""

    def __init__(self, seen_vectors, unseen_vectors, mapper=None, seen_classifier=None):
        self.seen_vectors = None if seen_vectors is None else np.asarray(seen_vectors)
        self.unseen_vectors = None if unseen_vectors is None else np.asarray(unseen_vectors)
        self.mapper, self.seen_classifier = mapper, seen_classifier


class NoveltyGate(SaveMixin, BaseEstimator):
    """P(unseen | x), calibrated on pseudo-unseen rounds of the seen classes.

    Parameters
    ----------
    detectors : "auto", "loop", "gaussian" or list of (name, detector, space), default="auto"
        The detectors and where each works: ``space`` is ``"pca"`` (a
        ``pca_components``-d PCA of the image features), ``"semantic"`` (the mapped
        images; the detector gets the word vectors as class means) or ``"features"`` (the
        image features). ``"auto"``: LoOP in the PCA space and the Gaussian detector in the
        semantic space (:func:`shorthand_detector`).
    calibration : {"auto", "isotonic", "platt", "stack", "mean"} or None, default="auto"
        ``"auto"``: the rounds' leave-one-round-out log loss (of the worst round) chooses
        between each detector alone (isotonic), the stack and the mean;
        ``"isotonic"``/``"platt"``: the first detector alone; ``"stack"``: the logistic
        stack; ``"mean"``: the isotonic map of the scores' equal-weight mean; None: the
        first detector's raw score, uncalibrated (the paper).
    class_agnostic : bool, default=True
        Offer the stack and the mean the seen softmax's top probability and the mapped
        image's nearness to the unseen class vectors against the seen ones (needs the
        zero-shot model's mapping and softmax).
    unseen_prior : float, optional
        The unseen share P(unseen | x) assumes; default: the share of unseen classes among
        all classes. Takes effect without refitting.
    rounds : int, optional
        Pseudo-unseen rounds (default: all, each seen class held out once).
    max_false_alarm : float or None, default=0.1
        The hard-routing threshold sends at most this share of the rounds' pseudo-seen
        images to the unseen branch; None: no limit.
    routing : {"auto", "soft", "hard"}, default="auto"
        How ``predict`` combines the branches; ``"auto"``: whichever the rounds prefer
        (calibrated), else hard for detectors with a ``default_threshold`` and soft for the
        others.
    fit_mode : {"training", "crossfit"}, default="training"
        Semantic-space detectors are fitted on the mapped training points, or on points
        mapped by ``cv`` mappings each trained without them.
    cv : int, default=5
    pca_components : int, default=50
    random_state : int, default=0

    Attributes
    ----------
    channels_ : list of (name, space, projection or None, fitted detector)
    calibration_ : str
        The calibration chosen ("isotonic <detector>", "platt <detector>", "stack",
        "mean" or "none").
    calibrator_ : ScoreCalibrator, StackCalibrator, MeanCalibrator or None
    reference_prior_ : float
        The unseen share ``calibrator_`` estimates P(unseen | x) at (1/2; older files:
        their prior).
    routing_threshold_ : float or None
        The hard-routing threshold on P(unseen | x) at ``reference_prior_``; at another
        prior it moves with the probabilities, so the routing does not change.
    routing_ : {"soft", "hard"}
    choice_ : dict
        What the rounds measured for each choice (log losses, H of soft and hard).
    """

    def __init__(self, detectors="auto", *, calibration="auto", class_agnostic=True,
                 unseen_prior=None, rounds=None, max_false_alarm=0.1, routing="auto",
                 fit_mode="training", cv=5, pca_components=50, random_state=0):
        self.detectors = detectors
        self.calibration = calibration
        self.class_agnostic = class_agnostic
        self.unseen_prior = unseen_prior
        self.rounds = rounds
        self.max_false_alarm = max_false_alarm
        self.routing = routing
        self.fit_mode = fit_mode
        self.cv = cv
        self.pca_components = pca_components
        self.random_state = random_state

    # ------------------------------------------------------------------ parameters
    def _detector_specs(self):
        spec = self.detectors
        if isinstance(spec, str):
            if spec == "auto":
                return [shorthand_detector("loop"), shorthand_detector("gaussian")]
            return [shorthand_detector(spec)]
        specs = list(spec)
        if not specs:
            raise ValueError("detectors is empty: give at least one (name, detector, space)")
        for item in specs:
            if not (isinstance(item, tuple) and len(item) == 3):
                raise ValueError(f"detectors must be (name, detector, space) triples, got "
                                 f"{item!r}")
            name, detector, space = item
            if space not in SPACES:
                raise ValueError(f"detector {name!r}: space must be one of {SPACES}, got "
                                 f"{space!r}")
            if not hasattr(detector, "fit") or not hasattr(detector, "outlier_probability"):
                raise TypeError(f"detector {name!r} ({type(detector).__name__}) does not "
                                "follow the protocol (fit, outlier_probability); wrap a "
                                "scikit-learn detector in SklearnOutlier")
        if len({s[0] for s in specs}) != len(specs):
            raise ValueError(f"detector names repeat: {[s[0] for s in specs]}")
        return specs

    def _check_params(self):
        check_option(self.calibration, CALIBRATIONS, "calibration", allow_none=True)
        check_option(self.routing, ROUTINGS, "routing")
        check_option(self.fit_mode, FIT_MODES, "fit_mode")
        if self.fit_mode == "crossfit" and (isinstance(self.cv, bool) or not isinstance(
                self.cv, (int, np.integer)) or self.cv < 2):
            raise ValueError(f"cv must be an int >= 2 for fit_mode='crossfit', got {self.cv!r}")
        if self.unseen_prior is not None:
            check_prior(self.unseen_prior)
        if self.max_false_alarm is not None:
            check_false_alarm(self.max_false_alarm)
        if self.rounds is not None and (isinstance(self.rounds, bool) or not isinstance(
                self.rounds, (int, np.integer)) or self.rounds < 1):
            raise ValueError(f"rounds must be an int >= 1 or None, got {self.rounds!r}")
        return self._detector_specs()

    def prior(self) -> float:
        """The unseen share in use: ``unseen_prior``, else n_unseen / n_classes of the fit."""
        if self.unseen_prior is not None:
            return check_prior(self.unseen_prior)
        return self.default_prior_

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y, *, seen_vectors=None, unseen_vectors=None, mapper=None,
            seen_classifier=None, n_unseen=None, F=None, round_features=None):
        """Fit the gate on images X of the seen classes y (names).

        ``seen_vectors`` (in ``np.unique(y)`` order) and ``unseen_vectors``, ``mapper`` and
        ``seen_classifier`` (fitted on X, y) come from the zero-shot model; a round trains
        clones of them. ``n_unseen``: how many classes a round holds out (default: the
        number of unseen vectors). ``F``: ``mapper.transform(X)`` if known.

        ``round_features(held_out)``, optional: the features of X's rows learnt again
        without the images of the classes ``held_out`` (a list of names). A round then uses
        them, so its pseudo-unseen classes are as foreign to the features as a real unseen
        class is (``docs/method.md`` section 4c); without it every round uses X.
        """
        specs = self._check_params()
        X = as_float_matrix(X, "X", dtype=np.float32)
        y = np.asarray(y).astype(str)
        classes = np.unique(y)
        codes = np.searchsorted(classes, y)
        scene = _Scene(seen_vectors, unseen_vectors, mapper, seen_classifier)
        n_unseen = n_unseen if n_unseen is not None else (
            len(scene.unseen_vectors) if scene.unseen_vectors is not None else 1)
        uses_semantic = any(space == "semantic" for _, _, space in specs)
        if uses_semantic and (mapper is None or scene.seen_vectors is None):
            raise ValueError("a semantic-space detector needs the zero-shot model's mapping "
                             "and class vectors")
        self.classes_ = classes
        self.default_prior_ = n_unseen / (len(classes) + n_unseen)
        self.agnostic_ = bool(self.class_agnostic and self.calibration in ("auto", *COMBINED)
                              and mapper is not None and seen_classifier is not None
                              and scene.unseen_vectors is not None)
        self.seen_vectors_ = scene.seen_vectors if self.agnostic_ else None
        self.unseen_vectors_ = scene.unseen_vectors if self.agnostic_ else None
        if F is None and mapper is not None and uses_semantic:
            F = mapper.transform(X)
        self.channels_ = self._fit_channels(specs, X, codes, classes, scene, F, mapper)
        self.reference_prior_ = REFERENCE_PRIOR
        self.calibrator_, self.routing_threshold_, self.choice_ = None, None, {}
        self.adaptation_, self.adaptation_channel_ = None, None
        if self.calibration is None:
            self.calibration_ = "none"
            self.routing_ = self.routing if self.routing != "auto" else (
                "hard" if hasattr(self.channels_[0][3], "default_threshold") else "soft")
            return self
        rounds = self._round_scores(specs, X, codes, classes, scene, n_unseen, round_features)
        self._choose(rounds)
        return self

    def _fit_channels(self, specs, X, codes, classes, scene, F, mapper):
        """[(name, space, projection, detector)] fitted on images X of classes ``codes``
        (indices into ``classes``; mapped: F, by ``mapper``)."""
        channels = []
        for name, detector, space in specs:
            projection, means = None, None
            if space == "pca":
                projection = PCAProjection(self.pca_components,
                                           random_state=self.random_state).fit(X)
                Z = projection.transform(X)
            elif space == "semantic":
                present = np.unique(codes)
                means = dict(zip(classes[present].tolist(), scene.seen_vectors[present]))
                Z = self._cross_fitted(X, codes, scene, mapper) \
                    if self.fit_mode == "crossfit" else F
            else:
                Z = X
            fitted = clone(detector).fit(Z, classes[codes], class_means=means)
            channels.append((name, space, projection, fitted))
        return channels

    def _cross_fitted(self, X, codes, scene, mapper):
        """X mapped out of fold: each of ``cv`` folds by a mapping trained on the others."""
        fold = np.random.default_rng(self.random_state).permutation(X.shape[0]) % self.cv
        W = scene.seen_vectors
        Z = np.empty((X.shape[0], W.shape[1]), dtype=np.float32)
        for j in range(self.cv):
            rows = fold == j
            m = clone(mapper).set_params(random_state=mapper.random_state + j + 1)
            Z[rows] = m.fit(X[~rows], codes[~rows], W).transform(X[rows])
        return Z

    def _round_scores(self, specs, X_all, codes, classes, scene, n_unseen, round_features=None):
        """Per round: the feature matrix (see :meth:`_features`) of its pseudo-seen and
        pseudo-unseen images, which are pseudo-unseen, and what soft/hard routing needs."""
        groups = pseudo_unseen_rounds(len(classes), n_unseen, n_rounds=self.rounds,
                                      random_state=self.random_state)
        needs_models = self.agnostic_ or any(s == "semantic" for _, _, s in specs) or \
            self.routing == "auto"
        needs_models = needs_models and scene.mapper is not None \
            and scene.seen_vectors is not None
        out = []
        for r, held_out in enumerate(groups):
            X = X_all if round_features is None else _relearnt(
                round_features, classes[held_out].tolist(), X_all.shape)
            is_held = np.isin(codes, held_out)
            rest = np.flatnonzero(~is_held)
            is_val = validation_split(codes[rest], random_state=self.random_state + r)
            fit_rows, val_rows = rest[~is_val], rest[is_val]
            score_rows = np.concatenate([val_rows, np.flatnonzero(is_held)])
            present = np.unique(codes[fit_rows])
            local = np.searchsorted(present, codes[fit_rows])
            round_scene, mapper, F_fit, F_score = _Scene(None, None), None, None, None
            if needs_models:
                train = _per_class_cap(local, ROUND_MAX_PER_CLASS, self.random_state + r)
                W_rest, W_held = scene.seen_vectors[present], scene.seen_vectors[held_out]
                X_train = X[fit_rows[train]]
                mapper = _round_copy(scene.mapper, r)
                mapper.fit(X_train, local[train], W_rest)
                round_scene = _Scene(W_rest, W_held, mapper)
                if scene.seen_classifier is not None:
                    softmax = _round_copy(scene.seen_classifier, r)
                    round_scene.seen_classifier = softmax.fit(X_train, local[train])
                del X_train
            # Each gather copies its rows (30,000 training images of 3,200 features: 384 MB):
            # one of each per round, dropped when done.
            X_fit = X[fit_rows]
            if mapper is not None:
                F_fit = mapper.transform(X_fit)
            channels = self._fit_channels(specs, X_fit, local, classes[present],
                                          _Scene(scene.seen_vectors[present]
                                                 if scene.seen_vectors is not None else None,
                                                 None), F_fit, mapper)
            del X_fit
            X_score = X[score_rows]
            if mapper is not None:
                F_score = mapper.transform(X_score)
            p_seen = None if round_scene.seen_classifier is None else \
                round_scene.seen_classifier.predict_proba(X_score)
            feats = self._features(channels, X_score, F_score, p_seen,
                                   round_scene if self.agnostic_ else None)
            del X_score
            truth = codes[score_rows]
            entry = {"features": feats, "is_unseen": np.isin(truth, held_out),
                     "truth": truth}
            if needs_models and p_seen is not None:
                var = _mean_variance(F_fit, W_rest[local])
                entry.update(seen_pred=present[np.argmax(p_seen, 1)],
                             p_seen_top=p_seen.max(1),
                             unseen_class=_nearest_gaussian(F_score, W_held, var),
                             held_out=np.asarray(held_out))
            out.append(entry)
        return out

    def _features(self, channels, X, F, p_seen, scene):
        """(n, n_channels [+ 2]) raw scores: each detector's score, then (with a scene of
        class vectors and a seen softmax) the class-agnostic features."""
        cols = [np.asarray(channel[3].outlier_probability(_in_space(channel, X, F)),
                           dtype=np.float64) for channel in channels]
        if scene is not None:
            cols.extend(class_agnostic_features(F, p_seen, scene.seen_vectors,
                                                scene.unseen_vectors))
        return np.column_stack(cols)

    def _candidates(self):
        names = [c[0] for c in self.channels_]
        n = len(names)
        if self.calibration == "auto":
            cands = {f"isotonic {name}": (i,) for i, name in enumerate(names)}
            if n > 1 or self.agnostic_:
                cands.update(dict.fromkeys(COMBINED))
            return cands
        if self.calibration in COMBINED:
            return {self.calibration: None}
        return {f"{self.calibration} {names[0]}": (0,)}

    def _new_calibrator(self, name, n_cols):
        if name in COMBINED:
            return COMBINED[name](columns=list(range(len(self.channels_))))
        method, _ = name.split(" ", 1)
        return ScoreCalibrator(method)

    def _fit_calibrator(self, name, cols, feats, is_unseen):
        calibrator = self._new_calibrator(name, feats.shape[1])
        weights = prior_weights(is_unseen, REFERENCE_PRIOR)
        x = feats if cols is None else feats[:, cols[0]]
        return calibrator.fit(x, is_unseen, sample_weight=weights)

    def _choose(self, rounds):
        """The calibration with the lowest out-of-round log loss on its worst round, then
        the routing threshold and soft or hard, all on the rounds."""
        feats = np.vstack([r["features"] for r in rounds])
        is_unseen = np.concatenate([r["is_unseen"] for r in rounds])
        which = np.concatenate([np.full(r["is_unseen"].size, i) for i, r in enumerate(rounds)])
        prior = self.prior()
        weights = prior_weights(is_unseen, prior)
        losses, worst, held_p = {}, {}, {}
        for name, cols in self._candidates().items():
            p = np.empty(is_unseen.size)
            if len(rounds) > 1:
                for i in range(len(rounds)):
                    out = which == i
                    if is_unseen[~out].all() or not is_unseen[~out].any():
                        p[out] = np.nan
                        continue
                    cal = self._fit_calibrator(name, cols, feats[~out], is_unseen[~out])
                    x = feats[out] if cols is None else feats[out, cols[0]]
                    p[out] = cal.transform(x)
            else:  # one round: nothing held out; in-sample
                cal = self._fit_calibrator(name, cols, feats, is_unseen)
                p = cal.transform(feats if cols is None else feats[:, cols[0]])
            ok = ~np.isnan(p)
            held_p[name] = at_prior(np.where(ok, p, 0.5), REFERENCE_PRIOR, prior)
            losses[name] = log_loss(held_p[name][ok], is_unseen[ok], weights[ok])
            worst[name] = max(_round_log_losses(held_p[name], is_unseen, which, ok, prior),
                              default=losses[name])
        # Only a candidate that beats the constant share over all rounds competes: a
        # constant-like one (a useless score) would otherwise win every worst round. If
        # none does, the loss over all rounds decides.
        constant = log_loss(np.full(is_unseen.size, prior), is_unseen, weights)
        competing = {k: v for k, v in worst.items() if losses[k] < constant}
        best = min(competing, key=competing.get) if competing else min(losses, key=losses.get)
        cols = self._candidates()[best]
        self.calibration_ = best
        self.calibrator_ = self._fit_calibrator(best, cols, feats, is_unseen)
        p_in = self.calibrator_.transform(feats if cols is None else feats[:, cols[0]])
        t = routing_threshold(p_in, is_unseen, self.max_false_alarm)
        self.routing_threshold_ = t
        self.choice_ = {"log_loss": {k: float(v) for k, v in losses.items()},
                        "worst_round_log_loss": {k: float(v) for k, v in worst.items()},
                        "constant_log_loss": float(constant),
                        "false_alarm": float((p_in[~is_unseen] > t).mean()),
                        "detection": float((p_in[is_unseen] > t).mean()),
                        "prior": prior, "n_rounds": len(rounds),
                        "n_pseudo_seen": int((~is_unseen).sum()),
                        "n_pseudo_unseen": int(is_unseen.sum())}
        self.routing_ = self.routing
        if "unseen_class" in rounds[0]:
            h = _routing_h(rounds, held_p[best], at_prior(t, REFERENCE_PRIOR, prior))
            self.choice_["harmonic_mean"] = h
            if self.routing == "auto":
                self.routing_ = "soft" if h["soft"] >= h["hard"] else "hard"
        elif self.routing == "auto":
            self.routing_ = "soft"

    # ------------------------------------------------------------------ scoring
    @property
    def uses_semantic_space(self):
        return any(c[1] == "semantic" for c in self.channels_) or self.agnostic_

    def raw_scores(self, X, F=None, p_seen=None):
        """The features the calibrator reads (one column per detector, then the
        class-agnostic ones)."""
        check_is_fitted(self, "channels_")
        scene = _Scene(self.seen_vectors_, self.unseen_vectors_) if self.agnostic_ else None
        return self._features(self.channels_, X, F, p_seen, scene)

    def outlier_probability(self, X, *, F=None, p_seen=None, prior=None):
        """P(unseen | x) at ``prior`` (default: :meth:`prior`), float64 in [0, 1]; from
        the batch adaptation when the gate has one (:meth:`adapt`).

        ``F`` (the mapped images) and ``p_seen`` (the seen softmax's probabilities) come
        from the zero-shot model when the gate uses the semantic space or the
        class-agnostic features.
        """
        if self.adapted_:
            prior = self.prior() if prior is None else prior
            Z = _in_space(self.channels_[self.adaptation_channel_], X, F)
            return self.adaptation_.unseen_probability(Z, prior, keys=row_keys(X))
        feats = self.raw_scores(X, F, p_seen)
        if self.calibrator_ is None:
            return feats[:, 0]
        x = feats if self.calibration_ in COMBINED else \
            feats[:, self.score_column_]
        p = self.calibrator_.transform(x)
        return at_prior(p, self.reference_prior_, self.prior() if prior is None else prior)

    # ------------------------------------------------------------------ adaptation
    def adapt(self, X, *, F=None, n_neighbors=N_NEIGHBORS, max_rows=MAX_ROWS):
        """Learn P(unseen | x) from ``X``, a batch of the images to classify (no labels):
        from then on :meth:`outlier_probability` is the density-ratio estimate of
        :class:`fastzsl.adaptation.BatchAdaptation` at the stated unseen share, which
        should be the batch's. The batch is compared with the training images in the space
        of the gate's first LoOP channel (its reference points; ``F``: the mapped X, for
        a semantic-space channel). A batch image scored again is recognised by its feature
        row and scored without itself. ``adapt(None)`` removes the adaptation."""
        check_is_fitted(self, "channels_")
        if X is None:
            self.adaptation_, self.adaptation_channel_ = None, None
            return self
        i = self._adaptation_channel()
        channel = self.channels_[i]
        if channel[1] == "semantic" and F is None:
            raise ValueError("the gate's LoOP channel is in the semantic space: pass F, the "
                             "mapped images (ZeroShotClassifier.adapt does)")
        X = as_float_matrix(X, "X", dtype=np.float32)
        self.adaptation_ = BatchAdaptation(
            n_neighbors, max_rows=max_rows, backend=getattr(channel[3], "backend", "auto"),
            random_state=self.random_state).fit(channel[3].index_.reference,
                                                _in_space(channel, X, F), row_keys(X))
        self.adaptation_channel_ = i
        return self

    @property
    def adapted_(self) -> bool:
        """Whether P(unseen | x) comes from a batch adaptation (:meth:`adapt`)."""
        return getattr(self, "adaptation_", None) is not None

    @property
    def calibrated_(self) -> bool:
        """Whether P(unseen | x) is a calibrated probability (rounds or adaptation)."""
        return self.calibrator_ is not None or self.adapted_

    @property
    def predict_routing_(self) -> str:
        """How ``predict`` should combine the branches: the rounds' choice (``routing_``),
        or :data:`ADAPTED_ROUTING` when adapted."""
        return ADAPTED_ROUTING if self.adapted_ else self.routing_

    def _adaptation_channel(self) -> int:
        for i, (_, _, _, detector) in enumerate(self.channels_):
            if hasattr(getattr(detector, "index_", None), "reference"):
                return i
        raise ValueError("adapt needs a gate with a LoOP channel: its reference points, the "
                         "training images in its space, are what the batch is compared "
                         f"with; this gate has {[c[0] for c in self.channels_]}")

    @property
    def score_column_(self):
        if self.calibration_ == "none" or self.calibration_ in COMBINED:
            return 0
        name = self.calibration_.split(" ", 1)[1]
        return [c[0] for c in self.channels_].index(name)

    def threshold(self, prior=None):
        """The hard-routing threshold on P(unseen | x) at ``prior``: 1/2 when adapted, the
        rounds' choice (calibrated), else the detector's ``default_threshold`` or 0.5."""
        check_is_fitted(self, "channels_")
        if self.adapted_:
            return ADAPTED_THRESHOLD
        if self.routing_threshold_ is None:
            return float(getattr(self.channels_[0][3], "default_threshold", 0.5))
        return float(at_prior(self.routing_threshold_, self.reference_prior_,
                              self.prior() if prior is None else prior))

    def detectors_(self):
        """The fitted detectors (what carries backend and progress settings)."""
        out = []
        for channel in self.channels_:
            d = channel[3]
            out.extend(d.detectors_ if isinstance(d, PerClass) else [d])
        return out

    # ------------------------------------------------------------------ model files
    def _export(self):
        params = {k: v for k, v in self.get_params(deep=False).items() if k != "detectors"}
        parts = {}
        kinds = []
        for i, (name, space, projection, detector) in enumerate(self.channels_):
            parts[f"detector{i}"] = detector._export()
            kinds.append([name, space, type(detector).__name__])
            if projection is not None:
                parts[f"projection{i}"] = projection._export()
        if self.calibrator_ is not None:
            parts["calibrator"] = self.calibrator_._export()
        if self.adapted_:
            parts["adaptation"] = self.adaptation_._export()
        meta, arrays = pack_parts(parts)
        meta.update(params=params, channels=kinds, classes=self.classes_.tolist(),
                    calibration=self.calibration_, routing=self.routing_,
                    calibrator_kind=type(self.calibrator_).__name__,
                    reference_prior=self.reference_prior_, default_prior=self.default_prior_,
                    routing_threshold=self.routing_threshold_, agnostic=self.agnostic_,
                    choice=self.choice_,
                    adaptation_channel=self.adaptation_channel_ if self.adapted_ else None)
        if self.agnostic_:
            arrays["seen_vectors"] = self.seen_vectors_
            arrays["unseen_vectors"] = self.unseen_vectors_
        return meta, arrays

    @classmethod
    def _restore(cls, meta, arrays):
        channels = []
        for i, (name, space, kind) in enumerate(meta["channels"]):
            detector = _restore_part(kind, *unpack_part(meta, arrays, f"detector{i}"))
            projection = PCAProjection._restore(*unpack_part(meta, arrays, f"projection{i}")) \
                if f"projection{i}" in meta else None
            channels.append((name, space, projection, detector))
        gate = cls([(n, d, s) for n, s, _, d in channels], **meta["params"])
        gate.channels_ = channels
        gate.classes_ = np.array(meta["classes"])
        gate.calibration_, gate.routing_ = meta["calibration"], meta["routing"]
        calibrator = {c.__name__: c for c in (ScoreCalibrator, *COMBINED.values())}
        gate.calibrator_ = calibrator[meta["calibrator_kind"]]._restore(
            *unpack_part(meta, arrays, "calibrator")) if "calibrator" in meta else None
        gate.reference_prior_ = meta["reference_prior"]
        gate.default_prior_ = meta["default_prior"]
        gate.routing_threshold_ = meta["routing_threshold"]
        gate.agnostic_ = meta["agnostic"]
        gate.choice_ = meta["choice"]
        gate.seen_vectors_ = arrays.get("seen_vectors")
        gate.unseen_vectors_ = arrays.get("unseen_vectors")
        gate.adaptation_channel_ = meta.get("adaptation_channel")  # absent before adapt
        gate.adaptation_ = BatchAdaptation._restore(*unpack_part(meta, arrays, "adaptation")) \
            if "adaptation" in meta else None
        return gate


def _in_space(channel, X, F):
    """Images X (mapped: F) in the space of a fitted channel (name, space, projection,
    detector)."""
    _, space, projection, _ = channel
    return projection.transform(X) if space == "pca" else F if space == "semantic" else X


def class_agnostic_features(F, p_seen, seen_vectors, unseen_vectors):
    """[logit of 1 - the seen softmax's top probability, log of (squared distance to the
    nearest seen class vector / to the nearest unseen one)] of mapped images F: both grow
    as an image looks less like any seen class."""
    top = np.asarray(p_seen, dtype=np.float64).max(axis=1)
    F = np.asarray(F, dtype=np.float64)

    def nearest(W):
        W = np.asarray(W, dtype=np.float64)
        d2 = (F ** 2).sum(1)[:, None] - 2 * sized_matmul(F, W.T) + (W ** 2).sum(1)[None]
        return np.maximum(d2.min(axis=1), 1e-12)

    return [logit(1.0 - top, 1e-9), np.log(nearest(seen_vectors)) - np.log(nearest(unseen_vectors))]


def _relearnt(round_features, held_out, shape):
    """``round_features(held_out)``, checked to be features of the same rows as X."""
    X = as_float_matrix(round_features(held_out), "round_features(...)", dtype=np.float32)
    if X.shape != shape:
        raise ValueError(f"round_features({held_out}) returned shape {X.shape}; it must give "
                         f"the features of the same rows as X, shape {shape}")
    return X


def _round_copy(estimator, r):
    """An unfitted copy of the zero-shot model's fitted mapping or softmax for round r: its
    own seed, and the optimizer the full fit resolved "auto" to (a round's smaller data
    would otherwise switch to full-batch L-BFGS: another training, and a slow one)."""
    params = {"random_state": estimator.random_state + 101 + r}
    if getattr(estimator, "optimizer_", None) is not None:
        params["optimizer"] = estimator.optimizer_
    return clone(estimator).set_params(**params)


def _per_class_cap(codes, cap, seed):
    """Indices of at most ``cap`` seeded rows of each class (all rows when fewer)."""
    rng = np.random.default_rng(seed)
    keep = [rows if rows.size <= cap else np.sort(rng.choice(rows, cap, replace=False))
            for rows in (np.flatnonzero(codes == c) for c in np.unique(codes))]
    return np.sort(np.concatenate(keep))


def _mean_variance(F, W_rows):
    """The mean per-dimension variance of mapped points around their class vectors."""
    return float(((np.asarray(F, np.float64) - W_rows) ** 2).sum(1).mean() / F.shape[1])


def _nearest_gaussian(F, W, variance):
    """P(y | unseen, f) over the classes of W: softmax of isotropic Gaussian
    log-likelihoods with a shared variance."""
    F = np.asarray(F, np.float64)
    d2 = ((F[:, None, :] - np.asarray(W, np.float64)[None]) ** 2).sum(2)
    L = -d2 / (2 * variance)
    p = np.exp(L - L.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _round_log_losses(p, is_unseen, which, ok, prior):
    """Each round's log loss of ``p`` (rows ``ok``), weighted to ``prior`` within the
    round; rounds without both kinds of rows are left out."""
    out = []
    for i in np.unique(which):
        rows = (which == i) & ok
        if is_unseen[rows].any() and not is_unseen[rows].all():
            out.append(log_loss(p[rows], is_unseen[rows],
                                prior_weights(is_unseen[rows], prior)))
    return out


def _routing_h(rounds, p_unseen, threshold):
    """GZSL H on the rounds (per-class mean accuracy over pseudo-seen and pseudo-unseen
    classes) of soft Eq. 2 and of hard routing at ``threshold``, with out-of-round
    P(unseen | x) ``p_unseen``."""
    start, out = 0, {"soft": [], "hard": []}
    for r in rounds:
        n = r["is_unseen"].size
        p = p_unseen[start:start + n]
        start += n
        held_pred = r["held_out"][np.argmax(r["unseen_class"], 1)]
        soft_unseen = p * r["unseen_class"].max(1) > (1 - p) * r["p_seen_top"]
        for mode, routed in (("soft", soft_unseen), ("hard", p > threshold)):
            pred = np.where(routed, held_pred, r["seen_pred"])
            out[mode].append((pred == r["truth"], r["is_unseen"], r["truth"]))
    h = {}
    for mode, parts in out.items():
        correct = np.concatenate([c for c, _, _ in parts])
        unseen = np.concatenate([u for _, u, _ in parts])
        truth = np.concatenate([t for _, _, t in parts])
        acc = [correct[(truth == c) & (unseen == u)].mean() for u in (False, True)
               for c in np.unique(truth[unseen == u])]
        n_seen = np.unique(truth[~unseen]).size
        tr, ts = np.mean(acc[:n_seen]), np.mean(acc[n_seen:])
        h[mode] = float(2 * tr * ts / (tr + ts)) if tr + ts > 0 else 0.0
    return h
