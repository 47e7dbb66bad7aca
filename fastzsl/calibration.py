"""P(unseen | x) calibrated without unseen images: pseudo-unseen rounds, a monotone map of
one score, a logistic stack or an equal-weight mean of several, the log loss that chooses
between them, and a routing threshold.

A novelty detector's score is not a probability (LoOP's is near 0 for typical points by
design, the Gaussian detector's is a training-set rank). The zero-shot model turns it into
one with the seen classes alone: each round holds out a group of seen classes as
*pseudo-unseen*, fits the pipeline on the remaining classes (80% of their images), and
scores the other 20% (pseudo-seen: classes the pipeline knows, images it never saw, as a
test image of a seen class) and the held-out classes' images (as a test image of an unseen
class). A monotone calibrator (:class:`ScoreCalibrator`) fitted to these scores, weighted
to a stated prior of the unseen fraction, gives P(unseen | x); the threshold for hard
routing is read off the same pooled scores (:func:`routing_threshold`). The novelty gate
(:mod:`fastzsl.novelty_gate`) runs the rounds and makes the choices. See
``docs/method.md`` section 4c.
"""
from __future__ import annotations

import numpy as np

from ._threads import sized_matmul
from ._validation import check_option

CALIBRATIONS = ("isotonic", "platt")
VALIDATION_FRACTION = 0.2  # of each remaining class's images, scored as pseudo-seen


def pseudo_unseen_rounds(n_classes: int, group_size: int, *, n_rounds=None, random_state=0):
    """Groups of class codes held out in turn: a seeded partition of ``range(n_classes)``
    into groups of ``group_size`` (the number of real unseen classes; the last group may be
    smaller), the first ``n_rounds`` of them (None: all). Every group leaves at least one
    class in the pipeline."""
    if n_classes < 2:
        raise ValueError(f"calibrating P(unseen) holds out seen classes in turn: it needs at "
                         f"least 2 seen classes, got {n_classes} (use calibration=None)")
    size = max(1, min(group_size, n_classes - 1))
    order = np.random.default_rng(random_state).permutation(n_classes)
    groups = [np.sort(order[i:i + size]) for i in range(0, n_classes, size)]
    if n_rounds is not None:
        if isinstance(n_rounds, bool) or not isinstance(n_rounds, (int, np.integer)) \
                or n_rounds < 1:
            raise ValueError(f"rounds must be an int >= 1 or None, got {n_rounds!r}")
        groups = groups[:n_rounds]
    return groups


def validation_split(codes: np.ndarray, fraction=VALIDATION_FRACTION, random_state=0):
    """Boolean mask of a seeded ``fraction`` of each class's rows (at least one row of a
    class with two or more, none of a class with one)."""
    rng = np.random.default_rng(random_state)
    mask = np.zeros(codes.shape[0], dtype=bool)
    for c in np.unique(codes):
        rows = np.flatnonzero(codes == c)
        n = int(round(fraction * rows.size)) if rows.size > 1 else 0
        mask[rng.choice(rows, size=max(n, 1 if rows.size > 1 else 0), replace=False)] = True
    return mask


def prior_weights(is_unseen: np.ndarray, prior: float) -> np.ndarray:
    """Sample weights giving the pseudo-unseen rows total weight ``prior`` and the
    pseudo-seen rows ``1 - prior``, so a calibrator fitted with them estimates P(unseen | x)
    at that unseen fraction rather than at the rounds' (arbitrary) one."""
    n_unseen = int(is_unseen.sum())
    n_seen = is_unseen.size - n_unseen
    if n_unseen == 0 or n_seen == 0:
        raise ValueError("calibration needs pseudo-seen and pseudo-unseen scores, got "
                         f"{n_seen} and {n_unseen}")
    return np.where(is_unseen, prior / n_unseen, (1.0 - prior) / n_seen) * is_unseen.size


def check_prior(prior) -> float:
    if isinstance(prior, bool) or not isinstance(prior, (int, float, np.number)) \
            or not 0.0 < float(prior) < 1.0:
        raise ValueError(f"unseen_prior must be a number in (0, 1), got {prior!r}")
    return float(prior)


class ScoreCalibrator:
    """A monotone map from a detector score to P(unseen | x).

    ``method="isotonic"``: non-decreasing step-linear fit (scikit-learn's
    ``IsotonicRegression``, kept as its breakpoints and read with ``np.interp``);
    ``"platt"``: a logistic curve 1 / (1 + exp(-(a s + b))).
    """

    def __init__(self, method="isotonic"):
        self.method = check_option(method, CALIBRATIONS, "calibration")

    def fit(self, scores, is_unseen, sample_weight=None):
        scores = np.asarray(scores, dtype=np.float64)
        is_unseen = np.asarray(is_unseen, dtype=bool)
        if self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            # Kept off 0 and 1 by half a row of the rarer side, so that moving the
            # probability to another prior by Bayes' rule can still move it.
            eps = 0.5 / max(min(is_unseen.sum(), (~is_unseen).sum()), 1)
            iso = IsotonicRegression(y_min=eps, y_max=1.0 - eps, out_of_bounds="clip")
            iso.fit(scores, is_unseen.astype(np.float64), sample_weight=sample_weight)
            self.points_ = np.vstack([iso.X_thresholds_, iso.y_thresholds_])
        else:
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e6).fit(scores[:, None], is_unseen,
                                               sample_weight=sample_weight)
            self.points_ = np.array([lr.coef_[0, 0], lr.intercept_[0]])
        return self

    def transform(self, scores) -> np.ndarray:
        """P(unseen | x), float64 in [0, 1]."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(scores, self.points_[0], self.points_[1])
        a, b = self.points_
        return 1.0 / (1.0 + np.exp(-(a * scores + b)))

    def _export(self):
        return {"method": self.method}, {"points": self.points_}

    @classmethod
    def _restore(cls, meta, arrays):
        calibrator = cls(meta["method"])
        calibrator.points_ = np.asarray(arrays["points"], dtype=np.float64)
        return calibrator


def routing_threshold(p_unseen, is_unseen, max_false_alarm=None) -> float:
    """The threshold t on P(unseen | x) (unseen iff p > t) that maximises the harmonic mean
    of the share of pseudo-seen rows kept seen and of pseudo-unseen rows routed unseen:
    hard routing's analogue of GZSL H, which does not depend on the unseen fraction.

    ``max_false_alarm``: only thresholds that route at most this share of pseudo-seen rows
    to the unseen branch compete (an operating point that protects seen accuracy).
    """
    p = np.asarray(p_unseen, dtype=np.float64)
    is_unseen = np.asarray(is_unseen, dtype=bool)
    candidates = np.unique(np.concatenate([[0.0], p]))
    p_seen, p_new = np.sort(p[~is_unseen]), np.sort(p[is_unseen])
    kept = np.searchsorted(p_seen, candidates, side="right") / max(p_seen.size, 1)
    found = 1.0 - np.searchsorted(p_new, candidates, side="right") / max(p_new.size, 1)
    h = np.where(kept + found > 0, 2 * kept * found / np.maximum(kept + found, 1e-300), 0.0)
    if max_false_alarm is not None:
        check_false_alarm(max_false_alarm)
        # kept is non-decreasing in t, so the allowed thresholds are a tail of candidates
        h = np.where(kept >= 1.0 - max_false_alarm - 1e-12, h, -1.0)
    best = np.flatnonzero(h == h.max())
    # Midway between the best candidate and the next value, so a score equal to a
    # pseudo-seen row's is routed as that row was.
    i = best[len(best) // 2]
    upper = candidates[i + 1] if i + 1 < candidates.size else 1.0
    return float((candidates[i] + upper) / 2)


def check_false_alarm(rate) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)) \
            or not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"max_false_alarm must be a number in [0, 1) or None, got {rate!r}")
    return float(rate)


class _StandardisedScores:
    """Scores (columns of X) put on one scale: the ``columns`` that are probabilities in
    [0, 1] as logits, then each standardised by the mean and spread of the fit."""

    def __init__(self, columns=()):
        self.columns = list(columns)

    def _z(self, X, fit=False):
        X = np.array(X, dtype=np.float64, ndmin=2)
        for j in self._probability_columns(X):
            p = np.clip(X[:, j], 1e-4, 1 - 1e-4)
            X[:, j] = np.log(p) - np.log1p(-p)
        if fit:
            self.mean_, self.scale_ = X.mean(0), np.maximum(X.std(0), 1e-12)
        return (X - self.mean_) / self.scale_

    def _probability_columns(self, X):
        return [j for j in self.columns if j < X.shape[1]]


class StackCalibrator(_StandardisedScores):
    """A logistic model on several scores: P(unseen | x) = 1 / (1 + exp(-(b + sum_j a_j
    z_j))), z_j each score standardised (scores in [0, 1], ``columns``, first as logits),
    fitted with a little L2 (C=1) so correlated scores stay stable."""

    def fit(self, X, is_unseen, sample_weight=None):
        from sklearn.linear_model import LogisticRegression

        Z = self._z(X, fit=True)
        lr = LogisticRegression(C=1.0).fit(Z, np.asarray(is_unseen, dtype=bool),
                                           sample_weight=sample_weight)
        self.coef_, self.intercept_ = lr.coef_[0].astype(np.float64), float(lr.intercept_[0])
        return self

    def transform(self, X) -> np.ndarray:
        """P(unseen | x), float64 in (0, 1)."""
        return 1.0 / (1.0 + np.exp(-(sized_matmul(self._z(X), self.coef_) + self.intercept_)))

    def _export(self):
        return {"columns": self.columns, "intercept": self.intercept_}, \
            {"coef": self.coef_, "mean": self.mean_, "scale": self.scale_}

    @classmethod
    def _restore(cls, meta, arrays):
        stack = cls(meta["columns"])
        stack.intercept_ = float(meta["intercept"])
        for name in ("coef", "mean", "scale"):
            setattr(stack, name + "_", np.asarray(arrays[name], dtype=np.float64))
        return stack


class MeanCalibrator(_StandardisedScores):
    """An isotonic map of the equal-weight mean of several standardised scores (as in
    :class:`StackCalibrator`). No weight is learnt from the rounds, so a score whose
    separation the rounds overrate cannot take the combination over (``docs/method.md``
    section 4c)."""

    def fit(self, X, is_unseen, sample_weight=None):
        mean = self._z(X, fit=True).mean(axis=1)
        self.map_ = ScoreCalibrator("isotonic").fit(mean, is_unseen, sample_weight)
        return self

    def transform(self, X) -> np.ndarray:
        """P(unseen | x), float64 in [0, 1]."""
        return self.map_.transform(self._z(X).mean(axis=1))

    def _export(self):
        return {"columns": self.columns}, \
            {"mean": self.mean_, "scale": self.scale_, "points": self.map_.points_}

    @classmethod
    def _restore(cls, meta, arrays):
        calibrator = cls(meta["columns"])
        calibrator.mean_ = np.asarray(arrays["mean"], dtype=np.float64)
        calibrator.scale_ = np.asarray(arrays["scale"], dtype=np.float64)
        calibrator.map_ = ScoreCalibrator._restore({"method": "isotonic"},
                                                   {"points": arrays["points"]})
        return calibrator


def log_loss(p, is_unseen, sample_weight=None) -> float:
    """Weighted mean binary log loss of P(unseen | x) ``p`` (clipped to [1e-15, 1 - 1e-15])."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    y = np.asarray(is_unseen, dtype=bool)
    w = np.ones(p.size) if sample_weight is None else np.asarray(sample_weight, np.float64)
    return float(-(w * np.where(y, np.log(p), np.log1p(-p))).sum() / w.sum())
