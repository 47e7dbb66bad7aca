"""GaussianNovelty, the estimator: the paper's and the mixture rule, options, fit errors, and
the parameter checks of gaussian_loglik. Backend equivalence: tests/backends/test_gaussian.py."""
import numpy as np
import pytest

from fastzsl import GaussianNovelty, gaussian_loglik
from fastzsl.testing import gamma, gaussian_problem, make_blobs


def test_bad_parameters_are_named(rng):
    F, means, variances, _ = gaussian_problem(rng, 5, 3, 4, np.float64)
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
        # float64 sums of the same squares in another order: gamma_n relative (n terms)
        np.testing.assert_allclose(model.variances_[i], sq.sum() / (sq.size * 6),
                                   rtol=2 * gamma(sq.size * 6 + 2, np.float64))
    code = GaussianNovelty(variance="reference_code").fit(X, y, means=means)
    counts = np.array([(y == c).sum() for c in model.classes_])
    np.testing.assert_allclose(code.variances_, model.variances_ * counts / len(X),
                               rtol=2 * gamma(X.size + 4, np.float64))
    np.testing.assert_array_equal(model.priors_, counts / len(X))


def test_fit_errors_name_thegaussian_problem(classes):
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


# ---------------------------------------------------------------- GEMM-form kernels: exactness
# The compiled backends compute L from a BLAS product of centred rows and means, with a
# certified error bound (fastzsl/backends/_gaussian_gemm.py): accepted values are within
# ACC relative of the direct double sum (float64 2^-40, float32 2^-15), and decisions
# (argmax, all_below) are taken on direct values wherever the bound leaves them open.
# These cases are built so that the bound matters.


