"""The novelty gate on its own: the detector protocol, the pseudo-unseen rounds, the
choices made on them, and calibration against a known Bayes posterior."""
import numpy as np
import pytest
from sklearn.base import BaseEstimator

import fastzsl
from fastzsl.calibration import log_loss, pseudo_unseen_rounds
from fastzsl.gaussian import GaussianNovelty
from fastzsl.loop import LoOP
from fastzsl.novelty_gate import NoveltyGate, SklearnOutlier, at_prior

SIGMA, SPREAD = 1.0, 3.0  # class noise; spread of the class centres (both isotropic)


def _centres(n, rng, d=2):
    return rng.normal(scale=SPREAD, size=(n, d))


def _points(centres, n, rng):
    labels = np.repeat(np.arange(len(centres)), n)
    return centres[labels] + rng.normal(scale=SIGMA, size=(len(labels), centres.shape[1])), labels


def _log_normal(X, mean, var):
    d = X.shape[1]
    return -((X - mean) ** 2).sum(-1) / (2 * var) - d / 2 * np.log(2 * np.pi * var)


def _bayes_posterior(X, seen_centres, prior):
    """P(unseen | x) in a world whose every class centre is drawn from N(0, SPREAD^2 I):
    an image of a class nobody has seen is N(0, (SPREAD^2 + SIGMA^2) I); one of a seen
    class is the equal-weight mixture of the seen classes' N(centre, SIGMA^2 I)."""
    log_u = _log_normal(X, 0.0, SPREAD ** 2 + SIGMA ** 2)
    log_s = np.logaddexp.reduce(
        np.stack([_log_normal(X, c, SIGMA ** 2) for c in seen_centres]), axis=0) \
        - np.log(len(seen_centres))
    log_odds = log_u - log_s + np.log(prior / (1 - prior))
    return 1.0 / (1.0 + np.exp(-log_odds))


def _ece(p, is_unseen, bins=10):
    which = np.minimum((p * bins).astype(int), bins - 1)
    return sum(abs(is_unseen[which == b].sum() - p[which == b].sum())
               for b in range(bins)) / p.size


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    seen_centres = _centres(24, rng)
    X, codes = _points(seen_centres, 150, rng)
    y = np.array([f"c{c:02d}" for c in codes])
    seen_test, _ = _points(seen_centres, 60, rng)
    unseen_test, _ = _points(_centres(60, rng), 40, rng)  # 60 classes nobody has seen
    return seen_centres, X, y, seen_test, unseen_test


def _gate(**params):
    detectors = [("gaussian", GaussianNovelty(rule="mixture"), "features")]
    return NoveltyGate(detectors, **params)


@pytest.mark.parametrize("prior", [0.1, 0.5])
def test_p_unseen_is_calibrated_where_the_bayes_posterior_is_known(world, prior):
    """Fitted once on seen classes; the prior set afterwards. On test images mixed at the
    stated share, P(unseen) is calibrated (ECE) and close to the Bayes posterior."""
    seen_centres, X, y, seen_test, unseen_test = world
    gate = _gate(calibration="isotonic").fit(X, y, n_unseen=2)
    n_unseen = int(round(prior / (1 - prior) * len(seen_test)))
    Q = np.vstack([seen_test, unseen_test[:n_unseen]])
    is_unseen = np.r_[np.zeros(len(seen_test), bool), np.ones(n_unseen, bool)]
    p = gate.set_params(unseen_prior=prior).outlier_probability(Q)
    bayes = _bayes_posterior(Q, seen_centres, prior)
    # Tolerances: with 1440 seen and 160-1440 unseen test images, ECE's sampling error is
    # about 0.02 (the Bayes posterior itself scores 0.035-0.041 here); the gate sees the
    # unseen world through 24 held-out classes and one detector's score, so it recovers
    # about half of the Bayes posterior's Brier skill (0.27 of 0.41 at 0.1, 0.10 of 0.20
    # at 0.5).
    assert _ece(p, is_unseen) < 0.05
    assert np.abs(p - bayes).mean() < 0.65 * np.abs(prior - bayes).mean()

    def skill(q):
        return 1 - ((q - is_unseen) ** 2).mean() / ((prior - is_unseen) ** 2).mean()

    assert skill(p) > 0.4 * skill(bayes) > 0


_RECORD = []


class RecordingDetector(BaseEstimator):
    """LoOP that records the rows it is fitted on and the rows it scores."""

    def fit(self, X, y=None, class_means=None):
        _RECORD.append(("fit", {r.tobytes() for r in np.asarray(X, np.float32)}))
        self.loop_ = LoOP(n_neighbors=10).fit(X)
        return self

    def outlier_probability(self, X):
        _RECORD.append(("score", {r.tobytes() for r in np.asarray(X, np.float32)}))
        return self.loop_.outlier_probability(X)


def test_fitted_and_scored_rows_of_every_round_are_disjoint(world):
    _, X, y, _, _ = world
    X = X.astype(np.float32)
    _RECORD.clear()
    gate = NoveltyGate([("rec", RecordingDetector(), "features")],
                       calibration="isotonic").fit(X, y, n_unseen=2)
    n_rounds = gate.choice_["n_rounds"]
    assert n_rounds == 12
    events = _RECORD[:2 * n_rounds + 1]
    # the final fit on every row, then per round one fit and one scoring
    assert events[0][0] == "fit" and len(events[0][1]) == len(X)
    scored = set()
    for (kind_fit, fitted), (kind_score, rows) in zip(events[1::2], events[2::2]):
        assert (kind_fit, kind_score) == ("fit", "score")
        assert fitted.isdisjoint(rows)
        assert len(fitted) + len(rows) == len(X)  # every row is fitted or scored
        scored |= rows
    assert len(scored) == len(X)  # every image is scored out of sample at least once


def test_a_lower_max_false_alarm_lowers_the_false_alarm_rate_fit_produces(world):
    _, X, y, seen_test, _ = world
    rates = {}
    for cap in (0.02, 0.3):
        gate = _gate(calibration="isotonic", max_false_alarm=cap).fit(X, y, n_unseen=2)
        assert gate.choice_["false_alarm"] <= cap + 1e-12  # on the rounds
        rates[cap] = (gate.outlier_probability(seen_test) > gate.threshold()).mean()
    # 0.13 at the looser cap, where the best harmonic mean lies below it
    assert rates[0.02] < 0.06 and rates[0.3] > rates[0.02] + 0.05


def test_a_useless_detector_is_not_chosen(world):
    """The rounds' log loss decides: pure noise loses to the Gaussian detector, and the
    stack, given both, weights the noise near zero. (The mean, which weights it equally
    by design, may still win: noise only blurs it.)"""
    _, X, y, seen_test, unseen_test = world

    class Noise(BaseEstimator):
        def fit(self, X, y=None, class_means=None):
            return self

        def outlier_probability(self, X):
            # seeded by the rows themselves: a seed by their number would repeat the
            # same values at the same positions each round, where rows sit in label order
            seed = int.from_bytes(np.ascontiguousarray(X).tobytes()[-8:], "little")
            return np.random.default_rng([seed, len(X)]).random(len(X))

    gate = NoveltyGate([("noise", Noise(), "features"),
                        ("gaussian", GaussianNovelty(rule="mixture"), "features")]
                       ).fit(X, y, n_unseen=2)
    losses, worst = gate.choice_["log_loss"], gate.choice_["worst_round_log_loss"]
    assert losses["isotonic noise"] > losses["isotonic gaussian"]
    # noise does no better than the constant share over all rounds, so it does not compete
    assert losses["isotonic noise"] >= gate.choice_["constant_log_loss"]
    assert losses["isotonic gaussian"] < gate.choice_["constant_log_loss"]
    assert gate.calibration_ != "isotonic noise"
    competing = {k: v for k, v in worst.items() if losses[k] < gate.choice_["constant_log_loss"]}
    assert gate.calibration_ == min(competing, key=competing.get)
    if gate.calibration_ == "stack":
        assert abs(gate.calibrator_.coef_[0]) < 0.2 * abs(gate.calibrator_.coef_[1])


def _rounds_from_columns(columns_per_round, is_unseen_per_round):
    return [{"features": np.column_stack(cols), "is_unseen": u, "truth": u.astype(int)}
            for cols, u in zip(columns_per_round, is_unseen_per_round)]


def test_each_round_uses_the_features_learnt_without_its_held_out_classes(world):
    """round_features(held_out) is asked once per round, for exactly that round's held-out
    classes, and the round's detectors are fitted on what it returns."""
    _, X, y, _, _ = world
    asked, fitted_on = [], []

    class Recording(GaussianNovelty):
        def fit(self, X, y=None, class_means=None):
            fitted_on.append(np.asarray(X).copy())
            return super().fit(X, y, class_means=class_means)

    def round_features(held_out):
        asked.append(sorted(held_out))
        return X + 100.0 * len(asked)   # features no other round gets

    gate = NoveltyGate([("gaussian", Recording(rule="mixture"), "features")],
                       calibration="isotonic", rounds=3)
    gate.fit(X, y, n_unseen=2, round_features=round_features)
    groups = pseudo_unseen_rounds(len(np.unique(y)), 2, n_rounds=3)
    assert asked == [sorted(np.unique(y)[g].tolist()) for g in groups]
    # fitted_on[0] is the gate's own detector (on X); then one per round, on its features
    np.testing.assert_array_equal(fitted_on[0], X.astype(np.float32))
    # each round's offset, 100 apart: far beyond how a subset's mean differs from X's
    assert [round((Z.mean() - X.mean()) / 100.0) for Z in fitted_on[1:]] == [1, 2, 3]
    with pytest.raises(ValueError, match="same rows as X"):
        gate.fit(X, y, n_unseen=2, round_features=lambda held_out: X[:10])


def test_the_choice_guards_against_the_worst_round():
    """Score "sharp" separates the classes well in three rounds of four and weakly in the
    fourth; "steady" separates them moderately in all four. Over all rounds "sharp" (and
    the stack) have the lower log loss; on its worst round "steady" has, and the worst
    round decides: rounds flatter some scores, and a real unseen pair may be the round
    where they fail."""
    rng = np.random.default_rng(0)
    n, cols, labels = 400, [], []
    for r in range(4):
        u = np.r_[np.zeros(n, bool), np.ones(n, bool)]
        gap = 1.0 if r == 3 else 4.0
        sharp = 1 / (1 + np.exp(-(rng.normal(size=2 * n) + gap * (u - 0.5))))
        steady = 1 / (1 + np.exp(-(rng.normal(size=2 * n) + 1.6 * (u - 0.5))))
        cols.append((sharp, steady))
        labels.append(u)
    gate = NoveltyGate(calibration="auto", max_false_alarm=None)
    gate.channels_ = [("sharp", "features", None, None), ("steady", "features", None, None)]
    gate.agnostic_, gate.default_prior_ = False, 0.5
    gate._choose(_rounds_from_columns(cols, labels))
    losses, worst = gate.choice_["log_loss"], gate.choice_["worst_round_log_loss"]
    assert set(worst) == {"isotonic sharp", "isotonic steady", "stack", "mean"}
    assert losses["isotonic sharp"] < losses["isotonic steady"]      # the scenario holds
    assert min(losses, key=losses.get) != "isotonic steady"
    assert gate.calibration_ == min(worst, key=worst.get) == "isotonic steady"


def test_the_mean_weights_every_score_equally():
    """MeanCalibrator: a monotone map of the mean of the standardised scores, so swapping
    two columns (and their roles) changes nothing; it survives export and restore."""
    from fastzsl.calibration import MeanCalibrator

    rng = np.random.default_rng(1)
    u = rng.random(600) < 0.4
    a = 1 / (1 + np.exp(-(rng.normal(size=600) + 2.0 * u)))   # a probability (logit column)
    b = rng.normal(size=600) * 3.0 + 5.0 * u                   # a raw feature, another scale
    X = np.column_stack([a, b])
    fitted = MeanCalibrator(columns=[0]).fit(X, u)
    swapped = MeanCalibrator(columns=[1]).fit(X[:, ::-1], u)
    np.testing.assert_allclose(fitted.transform(X), swapped.transform(X[:, ::-1]), atol=1e-12)
    z = fitted._z(X).mean(axis=1)
    order = np.argsort(z)
    assert (np.diff(fitted.transform(X)[order]) >= -1e-12).all()
    again = MeanCalibrator._restore(*fitted._export())
    np.testing.assert_array_equal(again.transform(X), fitted.transform(X))


def test_scikit_learn_outlier_detectors_plug_in(world, tmp_path):
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import LocalOutlierFactor

    _, X, y, seen_test, unseen_test = world
    Q = np.vstack([seen_test, unseen_test])
    is_unseen = np.r_[np.zeros(len(seen_test), bool), np.ones(len(unseen_test), bool)]
    for estimator in (IsolationForest(random_state=0),
                      LocalOutlierFactor(n_neighbors=20, novelty=True)):
        gate = NoveltyGate([("sk", SklearnOutlier(estimator), "features")],
                           calibration="isotonic", rounds=4).fit(X, y, n_unseen=2)
        p = gate.outlier_probability(Q)
        raw = gate.channels_[0][3].outlier_probability(Q)
        # a weak world for density-free detectors (IsolationForest about 0.62); the
        # calibration is monotone, so it keeps the adapter's ranking up to ties
        assert roc_auc_score(is_unseen, p) > 0.57
        assert abs(roc_auc_score(is_unseen, p) - roc_auc_score(is_unseen, raw)) < 0.02
    with pytest.raises(TypeError, match="cannot be saved"):
        gate.save(tmp_path / "gate.fzsl")
    with pytest.raises(TypeError, match="has no score_samples"):
        SklearnOutlier(object()).fit(X)


def test_a_gate_survives_save_load(world, tmp_path):
    _, X, y, seen_test, unseen_test = world
    gate = NoveltyGate([("loop", LoOP(n_neighbors=10), "pca"),
                        ("gaussian", GaussianNovelty(rule="mixture"), "features")],
                       calibration="stack", pca_components=2, rounds=4).fit(X, y, n_unseen=2)
    Q = np.vstack([seen_test, unseen_test]).astype(np.float32)
    for calibration in ("stack", "mean"):
        gate.set_params(calibration=calibration).fit(X, y, n_unseen=2)
        gate.save(tmp_path / "gate.fzsl")
        again = fastzsl.load(tmp_path / "gate.fzsl")
        np.testing.assert_array_equal(again.outlier_probability(Q), gate.outlier_probability(Q))
        assert again.threshold(0.3) == gate.threshold(0.3)
        assert again.calibration_ == calibration


def test_bayes_rule_moves_the_odds_and_keeps_certainty():
    p = np.array([0.0, 0.2, 0.5, 0.9, 1.0])
    moved = at_prior(p, 0.5, 0.2)
    np.testing.assert_allclose(moved[1:4], p[1:4] / (p[1:4] + 4 * (1 - p[1:4])))
    assert moved[0] == 0.0 and moved[-1] == 1.0
    np.testing.assert_array_equal(at_prior(p, 0.3, 0.3), p)
    assert log_loss([0.5, 0.5], [True, False]) == pytest.approx(np.log(2))
