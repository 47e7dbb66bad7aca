"""Calibrating P(unseen | x) without unseen images: rounds, weights, calibrators,
the routing threshold and the PCA detection space."""
import numpy as np
import pytest
from scipy.stats import norm

from fastzsl.calibration import (ScoreCalibrator, check_prior, prior_weights,
                                 pseudo_unseen_rounds, routing_threshold, validation_split)
from fastzsl import novelty_gate
from fastzsl.novelty_gate import PCAProjection
from fastzsl.testing import Bounded, assert_within_bound, unit_roundoff


@pytest.mark.parametrize("n_classes, size", [(8, 2), (9, 2), (5, 1), (3, 5)])
def test_rounds_partition_the_seen_classes_and_leave_some_in(n_classes, size):
    groups = pseudo_unseen_rounds(n_classes, size, random_state=3)
    held = np.concatenate(groups)
    assert sorted(held.tolist()) == list(range(n_classes))  # every class held out once
    assert all(1 <= len(g) <= min(size, n_classes - 1) for g in groups)
    assert pseudo_unseen_rounds(n_classes, size, n_rounds=1, random_state=3)[0].tolist() \
        == groups[0].tolist()


def test_rounds_need_two_classes_and_a_valid_count():
    with pytest.raises(ValueError, match="at least 2 seen classes"):
        pseudo_unseen_rounds(1, 1)
    with pytest.raises(ValueError, match="rounds must be an int"):
        pseudo_unseen_rounds(4, 1, n_rounds=0)


def test_validation_split_takes_a_fraction_of_every_class():
    codes = np.repeat([0, 1, 2], [100, 10, 1])
    mask = validation_split(codes, 0.2, random_state=0)
    assert [int(mask[codes == c].sum()) for c in range(3)] == [20, 2, 0]


def test_prior_weights_give_the_unseen_rows_the_prior_share():
    is_unseen = np.r_[np.ones(30, bool), np.zeros(70, bool)]
    w = prior_weights(is_unseen, 0.2)
    assert w[is_unseen].sum() / w.sum() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="pseudo-seen and pseudo-unseen"):
        prior_weights(np.ones(5, bool), 0.2)
    for bad in (0.0, 1.0, -1, "a", True):
        with pytest.raises(ValueError, match="unseen_prior"):
            check_prior(bad)


def _two_gaussians(n=20_000, seed=0):
    """Scores N(0, 1) for seen and N(2, 1) for unseen rows, equally many."""
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(0, 1, n), rng.normal(2, 1, n)]
    return scores, np.r_[np.zeros(n, bool), np.ones(n, bool)]


def _bayes(s, prior):
    a, b = prior * norm.pdf(s, 2, 1), (1 - prior) * norm.pdf(s, 0, 1)
    return a / (a + b)


@pytest.mark.parametrize("method, tol", [("isotonic", 0.05), ("platt", 0.01)])
@pytest.mark.parametrize("prior", [0.5, 0.2])
def test_calibrators_recover_the_posterior_at_the_stated_prior(method, tol, prior):
    """Equal-variance Gaussians: the true P(unseen | s) is logistic in s, so both
    calibrators can recover it; the weights move it from the data's 50% to the prior."""
    scores, is_unseen = _two_gaussians()
    cal = ScoreCalibrator(method).fit(scores, is_unseen, prior_weights(is_unseen, prior))
    grid = np.linspace(-0.5, 2.5, 31)
    np.testing.assert_allclose(cal.transform(grid), _bayes(grid, prior), atol=tol)
    assert np.all(np.diff(cal.transform(np.sort(scores))) >= 0)  # monotone
    restored = ScoreCalibrator._restore(*cal._export())
    np.testing.assert_array_equal(restored.transform(scores), cal.transform(scores))


def test_unknown_calibration_is_named():
    with pytest.raises(ValueError, match="calibration must be one of"):
        ScoreCalibrator("beta")


def test_routing_threshold_maximises_the_harmonic_mean_of_both_routings():
    rng = np.random.default_rng(1)
    p = np.r_[rng.uniform(0, 0.6, 300), rng.uniform(0.4, 1.0, 100)]
    is_unseen = np.r_[np.zeros(300, bool), np.ones(100, bool)]
    t = routing_threshold(p, is_unseen)

    def h(t):
        kept, found = np.mean(p[~is_unseen] <= t), np.mean(p[is_unseen] > t)
        return 2 * kept * found / (kept + found)

    best = max(h(c) for c in np.unique(p))
    assert h(t) == pytest.approx(best)
    # at most 5% of the pseudo-seen rows may be routed unseen: a higher threshold
    limited = routing_threshold(p, is_unseen, max_false_alarm=0.05)
    assert np.mean(p[~is_unseen] > limited) <= 0.05 and limited > t
    assert routing_threshold(p, is_unseen, max_false_alarm=0.9) == t  # not binding
    with pytest.raises(ValueError, match="max_false_alarm"):
        routing_threshold(p, is_unseen, max_false_alarm=1.0)
    # separable scores: the threshold falls between the two groups
    assert 0.3 < routing_threshold(np.r_[np.full(5, 0.2), np.full(5, 0.4)],
                                   np.r_[np.zeros(5, bool), np.ones(5, bool)]) < 0.4


def test_pca_projection_equals_scikit_learn_and_survives_a_save(monkeypatch):
    from sklearn.decomposition import PCA

    X = np.random.default_rng(2).normal(size=(500, 12)).astype(np.float32)
    X[:, 0] *= 5
    projection = PCAProjection(3, max_rows=10_000).fit(X)
    pca = PCA(3, random_state=0).fit(X)
    reference = pca.transform(X)
    # The same fitted mean and components (float32): the two differ only by rounding in
    # the float32 products, (X - mean) C^T here and either that or X C^T - mean C^T in
    # scikit-learn (by version); each is within its running error bound of the exact value.
    u = unit_roundoff(np.float32)
    mean, comps = pca.mean_.astype(np.float64), pca.components_.astype(np.float64)
    ours = (Bounded.exact(X, u=u) - mean).matmul(Bounded.exact(comps.T, u=u))
    C = Bounded.exact(comps.T, u=u)
    split = Bounded.exact(X, u=u).matmul(C) - Bounded.exact(mean[None, :], u=u).matmul(C)
    assert_within_bound(projection.transform(X), ours.value, ours.err, "projection")
    assert_within_bound(reference, ours.value, np.maximum(ours.err, split.err), "scikit-learn")
    restored = PCAProjection._restore(*projection._export())
    # Blocks of rows (5 here; 500 rows: 100 blocks): the same bound holds for each row.
    monkeypatch.setattr(novelty_gate, "CENTRED_ROWS", 5)
    assert_within_bound(projection.transform(X), ours.value, ours.err, "blocks of 5")
    for n in (1, 2, 6, 11):  # blocks of 3-5 rows, and of one or two
        assert_within_bound(projection.transform(X[:n]), ours.value[:n], ours.err[:n],
                            f"{n} rows")
    np.testing.assert_array_equal(restored.transform(X), projection.transform(X))
    assert PCAProjection(50).fit(X).components_.shape == (12, 12)  # capped at the width
    with pytest.raises(ValueError, match="X has 11 features, but the novelty gate's PCA "
                                         "projection is expecting 12"):
        projection.transform(X[:, :11])
    with pytest.raises(ValueError, match="X must be 2-D"):
        projection.transform(X[0])
    bad = X.copy()
    bad[2, 7] = np.nan  # named in the images, not in their projection
    with pytest.raises(ValueError, match="X contains NaN or infinity: nan at row 2, column 7"):
        projection.transform(bad)
    with pytest.raises(ValueError, match="projection of X is not finite"):
        projection.transform(np.full((2, 12), 3e38, dtype=np.float32))
    with pytest.raises(ValueError, match="pca_components"):
        PCAProjection(0).fit(X)


def test_pca_projection_makes_no_centred_copy_of_all_rows():
    """The projection centres a block of rows at a time: memory beyond its output stays a
    fraction of X's (a centred copy of X, the earlier way, is X's size again)."""
    import tracemalloc

    X = np.random.default_rng(5).normal(size=(4000, 300)).astype(np.float32)
    projection = PCAProjection(8).fit(X[:500])
    projection.transform(X[:10])  # imports and caches outside the measurement
    tracemalloc.start()
    try:
        Z = projection.transform(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert Z.shape == (4000, 8)
    assert peak < Z.nbytes + X.nbytes // 4, (peak, X.nbytes)
