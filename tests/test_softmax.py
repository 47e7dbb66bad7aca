"""SoftmaxClassifier, the seen-class classifier, on small separable problems."""
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

torch = pytest.importorskip("torch")

import fastzsl  # noqa: E402
from fastzsl.softmax import SoftmaxClassifier  # noqa: E402
from fastzsl.testing import Bounded, assert_within_bound, unit_roundoff  # noqa: E402

# Three well separated blobs; no bias in the model, so they sit around directions from the
# origin, with a constant feature that lets W^T x express offsets.
CENTRES = np.array([[4.0, 0.0], [-2.0, 3.5], [-2.0, -3.5]])
NAMES = np.array(["zebra", "ant", "moose"])  # deliberately not in sorted order

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blobs(n_per_class=30, seed=0):
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(len(CENTRES)), n_per_class)
    X = CENTRES[codes] + rng.normal(scale=0.5, size=(len(codes), 2))
    X = np.c_[X, np.ones(len(codes))].astype(np.float32)
    return X, NAMES[codes]




@pytest.fixture(scope="module")
def data():
    return _blobs(), _blobs(seed=1)


@pytest.fixture(scope="module")
def model(data):
    (X, y), _ = data
    return SoftmaxClassifier(max_iter=100).fit(X, y)


def test_learns_a_linearly_separable_problem(data, model):
    (X, y), (X_new, y_new) = data
    np.testing.assert_array_equal(model.predict(X), y)
    np.testing.assert_array_equal(model.predict(X_new), y_new)
    assert model.loss_curve_[-1] < 0.2 * model.loss_curve_[0]
    assert model.coef_.shape == (3, 3) and model.coef_.dtype == np.float32


def test_probabilities_are_a_distribution_in_classes_order(data, model):
    (X, y), _ = data
    assert list(model.classes_) == ["ant", "moose", "zebra"]  # sorted, as np.unique
    P = model.predict_proba(X)
    assert P.shape == (len(X), 3) and P.dtype == np.float64
    assert ((P >= 0) & (P <= 1)).all()
    # computed in float64 from float32 scores: rows sum to 1 up to float64 round-off
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # column j is classes_[j]: each image's own class has the largest probability
    own = P[np.arange(len(y)), np.searchsorted(model.classes_, y)]
    np.testing.assert_array_equal(own, P.max(axis=1))
    assert own.min() > 0.5


def test_integer_labels_keep_their_values(data):
    (X, y), _ = data
    labels = np.array([11, 3, 7])[np.searchsorted(NAMES[[1, 2, 0]], y)]
    model = SoftmaxClassifier(max_iter=100).fit(X, labels)
    np.testing.assert_array_equal(model.classes_, [3, 7, 11])
    np.testing.assert_array_equal(model.predict(X), labels)


def test_objective_is_the_documented_one(data):
    """J = mean cross-entropy + (l2 / 2) ||W||^2, no bias: recompute the last loss."""
    (X, y), _ = data
    model = SoftmaxClassifier(l2=0.1, max_iter=100).fit(X, y)
    codes = np.searchsorted(model.classes_, y)
    # torch evaluates J in float32; bound its rounding by running error analysis of the
    # same steps (scores, max-shifted logsumexp, mean, penalty), for float32 and float64
    J = {dt: _objective_with_bound(X, model.coef_, codes, 0.1, unit_roundoff(dt))
         for dt in (np.float32, np.float64)}
    assert_within_bound(min(model.loss_curve_), J[np.float32].value,
                        J[np.float32].err + J[np.float64].err, "recorded loss")


def _objective_with_bound(X, W, codes, l2, u):
    n = len(codes)
    S = Bounded.exact(X, u=u).matmul(Bounded.exact(W, u=u))
    top = S.max(axis=1).reshape(n, 1)
    lse = ((S - top).exp().sum(axis=1).log()).reshape(n, 1) + top
    log_p = (S - lse)[np.arange(n), codes]
    Wb = Bounded.exact(W, u=u)
    penalty = (Wb * Wb).sum(axis=(0, 1)) * Bounded.rounded(0.5 * l2, u=u)
    return -(log_p.sum(axis=0) / n) + penalty


def test_bad_input_is_named(data, model):
    (X, y), _ = data
    with pytest.raises(ValueError, match=r"y must have shape \(90,\), got \(89,\)"):
        SoftmaxClassifier(max_iter=1).fit(X, y[:-1])
    with pytest.raises(ValueError, match=r"y must have shape \(90,\), got \(90, 1\)"):
        SoftmaxClassifier(max_iter=1).fit(X, y[:, None])
    bad = X.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or infinity: nan at row 4, column 1"):
        SoftmaxClassifier(max_iter=1).fit(bad, y)
    with pytest.raises(ValueError, match="X contains NaN or infinity: nan at row 4, column 1"):
        model.predict_proba(bad)
    with pytest.raises(ValueError, match="X has 2 features, but SoftmaxClassifier is "
                                         "expecting 3 features as input"):
        model.predict(X[:, :2])
    with pytest.raises(ValueError, match="optimizer must be one of"):
        SoftmaxClassifier(optimizer="newton").fit(X, y)
    with pytest.raises(NotFittedError):
        SoftmaxClassifier().predict_proba(X)


def test_save_and_load_round_trip(data, model, tmp_path):
    (X, _), (X_new, _) = data
    model.save(tmp_path / "softmax.fzsl")
    again = fastzsl.load(tmp_path / "softmax.fzsl")
    assert isinstance(again, SoftmaxClassifier)
    assert again.get_params() == model.get_params()
    assert list(again.classes_) == list(model.classes_)
    assert again.loss_curve_ == model.loss_curve_ and again.n_features_in_ == 3
    np.testing.assert_array_equal(again.predict_proba(X_new), model.predict_proba(X_new))
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
