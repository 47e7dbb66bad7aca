import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from fastzsl import GaussianNovelty, gaussian_loglik
from fastzsl.backends import numpy_
from fastzsl.testing import TOL, make_blobs


def _problem(rng, n, C, d, dtype):
    F = rng.normal(size=(n, d)).astype(dtype)
    means = rng.normal(size=(C, d)).astype(dtype)
    variances = rng.uniform(0.5, 2.0, size=C)
    log_weights = np.log(rng.dirichlet(np.ones(C)))
    return F, means, variances, log_weights


def test_numpy_reference_equals_scipy(rng):
    F, means, variances, _ = _problem(rng, 30, 4, 6, np.float64)
    L = numpy_.gaussian_loglik(F, means, variances, np.zeros(4), np.full(4, np.inf), True)[0]
    for c in range(4):
        expected = multivariate_normal(means[c], variances[c] * np.eye(6)).logpdf(F)
        np.testing.assert_allclose(L[:, c], expected, rtol=1e-12)


@pytest.mark.parametrize("n,C,d", [(1, 1, 1), (77, 13, 50), (1030, 3, 7)])
@pytest.mark.parametrize("full", [True, False])
def test_backend_equals_numpy_reference(backend, dtype, rng, n, C, d, full):
    F, means, variances, log_weights = _problem(rng, n, C, d, dtype)
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, np.full(C, np.inf), True)
    # Thresholds between data values (never equal to one), so "below" cannot flip on rounding.
    thresholds = np.median(ref[0], axis=0).astype(np.float64) + 1e-3
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
    got = gaussian_loglik(F, means, variances, log_weights=log_weights, thresholds=thresholds,
                          full=full, backend=backend)
    if full:
        assert got.loglik.dtype == dtype and got.loglik.shape == (n, C)
        np.testing.assert_allclose(got.loglik, ref[0], **TOL[dtype])
    else:
        assert got.loglik is None
    np.testing.assert_allclose(got.max, ref[1], **TOL[dtype])
    np.testing.assert_array_equal(got.argmax, ref[2])
    np.testing.assert_allclose(got.logsumexp, ref[3], **TOL[dtype])
    np.testing.assert_array_equal(got.all_below, ref[4])


def test_reductions_match_their_definitions(backend, rng):
    F, means, variances, log_weights = _problem(rng, 200, 7, 5, np.float64)
    thresholds = np.full(7, -9.0)
    r = gaussian_loglik(F, means, variances, log_weights=log_weights, thresholds=thresholds,
                        backend=backend)
    np.testing.assert_allclose(r.max, r.loglik.max(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(r.argmax, r.loglik.argmax(axis=1))
    np.testing.assert_allclose(r.logsumexp, logsumexp(r.loglik + log_weights, axis=1), rtol=1e-12)
    np.testing.assert_array_equal(r.all_below, (r.loglik < thresholds).all(axis=1))
    assert 0 < r.all_below.sum() < 200


def test_zero_weight_classes_are_ignored_by_logsumexp(backend, rng):
    F, means, variances, _ = _problem(rng, 20, 3, 4, np.float64)
    log_weights = np.array([-np.inf, 0.0, -np.inf])
    r = gaussian_loglik(F, means, variances, log_weights=log_weights, backend=backend)
    np.testing.assert_allclose(r.logsumexp, r.loglik[:, 1], rtol=1e-12)


def test_bad_parameters_are_named(rng):
    F, means, variances, _ = _problem(rng, 5, 3, 4, np.float64)
    with pytest.raises(ValueError, match="variances must be positive"):
        gaussian_loglik(F, means, np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"variances must have shape \(3,\), got \(2,\)"):
        gaussian_loglik(F, means, variances[:2])
    with pytest.raises(ValueError, match="F has 4 features, but means is expecting 3"):
        gaussian_loglik(F, means[:, :3], variances)
    with pytest.raises(ValueError, match="thresholds must not be NaN"):
        gaussian_loglik(F, means, variances, thresholds=np.array([0, np.nan, 0]))


@pytest.fixture(scope="module")
def classes():
    X, y = make_blobs(600, 6, n_centers=4, spread=1.0, scale=8.0, seed=11, dtype=np.float64)
    return X, np.array(["a", "b", "c", "d"])[y]


@pytest.mark.parametrize("rule", ["paper", "mixture"])
def test_novel_cluster_is_flagged(classes, rule):
    X, y = classes
    model = GaussianNovelty(rule=rule).fit(X, y)
    novel = np.random.default_rng(0).normal(loc=30.0, size=(50, 6))
    assert model.outlier_probability(novel).min() == 1.0
    assert (model.predict(novel) == -1).all()
    # At threshold t about a fraction 1 - t of the training points is called unseen.
    called = (model.predict(X, threshold=0.9) == -1).mean()
    assert 0.0 < called <= 0.1 + 1e-12


@pytest.mark.parametrize("rule", ["paper", "mixture"])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.9, 0.95, 1.0])
def test_fused_predict_equals_probability_rule(classes, rule, threshold):
    X, y = classes
    model = GaussianNovelty(rule=rule).fit(X, y)
    Q = np.r_[X, X[:100] * 1.2, np.random.default_rng(1).normal(scale=8, size=(100, 6))]
    expected = np.where(model.outlier_probability(Q) > threshold, -1, 1)
    np.testing.assert_array_equal(model.predict(Q, threshold=threshold), expected)


def test_paper_rule_is_all_classes_below_their_thresholds(classes):
    X, y = classes
    model = GaussianNovelty(rule="paper").fit(X, y)
    T = model.thresholds(0.9)
    L = model.log_likelihood(X)
    np.testing.assert_array_equal(model.predict(X, threshold=0.9) == -1, (L < T).all(axis=1))


def test_variance_and_means_options(classes):
    X, y = classes
    means = {c: X[y == c].mean(axis=0) + 0.5 for c in np.unique(y)}
    model = GaussianNovelty().fit(X, y, means=means)
    for i, c in enumerate(model.classes_):
        sq = ((X[y == c] - means[c]) ** 2).sum(axis=1)
        np.testing.assert_allclose(model.variances_[i], sq.sum() / (sq.size * 6))
    code = GaussianNovelty(variance="reference_code").fit(X, y, means=means)
    counts = np.array([(y == c).sum() for c in model.classes_])
    np.testing.assert_allclose(code.variances_, model.variances_ * counts / len(X))
    np.testing.assert_allclose(model.priors_, counts / len(X))


def test_fit_errors_name_the_problem(classes):
    X, y = classes
    with pytest.raises(ValueError, match=r"means has no vector for classes \['d'\]"):
        GaussianNovelty().fit(X, y, means={"a": X[0], "b": X[0], "c": X[0]})
    with pytest.raises(ValueError, match=r"means must have shape \(4, 6\)"):
        GaussianNovelty().fit(X, y, means=np.zeros((3, 6)))
    with pytest.raises(ValueError, match=r"classes 'z' \(n_samples = 3\) have zero variance"):
        GaussianNovelty().fit(np.r_[X, np.ones((3, 6))], np.r_[y, ["z"] * 3])
    with pytest.raises(ValueError, match="rule must be one of"):
        GaussianNovelty(rule="max").fit(X, y)
    with pytest.raises(ValueError, match="X has 5 features, but GaussianNovelty is expecting 6"):
        GaussianNovelty().fit(X, y).predict(X[:, :5])
