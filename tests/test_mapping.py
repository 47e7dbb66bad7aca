"""SemanticMapper on tiny synthetic problems where the right mapping is known."""
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

torch = pytest.importorskip("torch")

import fastzsl  # noqa: E402
from fastzsl.mapping import SemanticMapper  # noqa: E402
from fastzsl.testing import (  # noqa: E402
    Bounded, affine_with_bound, assert_within_bound, unit_roundoff,
)

N_CLASSES, DIM, N_FEATURES = 4, 3, 8
FAST = dict(hidden=16, max_iter=150)

pytestmark = pytest.mark.usefixtures("one_torch_thread")




def _problem(seed=0, n_per_class=40, noise=0.05, linear=False):
    """Class word vectors W (rows) and image features that are a fixed smooth function of
    the word vector of each image's class, plus a little noise: the mapping back exists."""
    rng = np.random.default_rng(seed)
    W = (2.0 * np.eye(N_CLASSES, DIM) + 0.3 * rng.normal(size=(N_CLASSES, DIM))).astype(np.float32)
    A = rng.normal(size=(DIM, N_FEATURES)) / np.sqrt(DIM)
    y = np.repeat(np.arange(N_CLASSES), n_per_class)
    Z = W[y] @ A
    X = Z if linear else np.tanh(Z) + 0.5 * Z
    X = X + rng.normal(scale=noise, size=X.shape)
    return X.astype(np.float32), y, W


@pytest.fixture(scope="module")
def problem():
    return _problem()


@pytest.fixture(scope="module")
def mapper(problem):
    X, y, W = problem
    return SemanticMapper(**FAST).fit(X, y, W)


def test_training_points_land_near_their_class_vectors(problem, mapper):
    X, y, W = problem
    F = mapper.transform(X)
    spread = np.mean([np.linalg.norm(W[a] - W[b])
                      for a in range(N_CLASSES) for b in range(a + 1, N_CLASSES)])
    assert np.linalg.norm(F - W[y], axis=1).mean() < 0.1 * spread
    nearest = np.argmin(((F[:, None, :] - W[None]) ** 2).sum(axis=2), axis=1)
    np.testing.assert_array_equal(nearest, y)
    assert mapper.loss_curve_[-1] < 0.05 * mapper.loss_curve_[0]


def test_labels_may_be_names_with_a_mapping_of_vectors(problem, mapper):
    X, y, W = problem
    names = np.array(["cat", "dog", "ship", "truck"])
    by_name = SemanticMapper(**FAST).fit(X, names[y], dict(zip(names.tolist(), W)))
    np.testing.assert_array_equal(by_name.transform(X), mapper.transform(X))


def test_transform_shape_and_dtype(problem, mapper):
    X, _, _ = problem
    for given in (X, X.astype(np.float64), X[:1]):
        F = mapper.transform(given)
        assert F.shape == (len(given), DIM) and F.dtype == np.float32
    assert (mapper.n_features_in_, mapper.n_outputs_) == (N_FEATURES, DIM)


def test_hidden_zero_is_the_affine_map(torch_threads):
    X, y, W = _problem(linear=True)
    linear = SemanticMapper(hidden=0, max_iter=100).fit(X, y, W)
    assert linear.module_.hidden is None
    weight = linear.module_.output.weight.detach().numpy().astype(np.float64)
    bias = linear.module_.output.bias.detach().numpy().astype(np.float64)
    assert weight.shape == (DIM, N_FEATURES)
    # float32 product of K + 1 terms (the bias is one): gamma_(K+1) |x| |W| (testing.py)
    exact = affine_with_bound(Bounded.exact(X, u=unit_roundoff(np.float32)), weight, bias)
    for threads in (1, 2):
        with torch_threads(threads):
            assert_within_bound(linear.transform(X), exact.value, exact.err,
                                f"affine map on {threads} torch threads")
    # the features are linear in the class vectors, so the linear map fits them well
    assert np.linalg.norm(linear.transform(X) - W[y], axis=1).mean() < 0.1


def test_same_random_state_same_mapping_another_differs(problem):
    X, y, W = problem
    a = SemanticMapper(hidden=8, max_iter=20, random_state=3).fit(X, y, W)
    b = SemanticMapper(hidden=8, max_iter=20, random_state=3).fit(X, y, W)
    c = SemanticMapper(hidden=8, max_iter=20, random_state=4).fit(X, y, W)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    assert a.loss_curve_ == b.loss_curve_
    assert not np.array_equal(a.transform(X), c.transform(X))


@pytest.mark.parametrize("change, message", [
    (lambda X, y, W: (X[:, :5], y, W), None),  # fit on 5 features, transform 8: see below
    (lambda X, y, W: (np.where(np.arange(X.size).reshape(X.shape) == 9, np.nan, X), y, W),
     r"X contains NaN or infinity: nan at row 1, column 1"),
    (lambda X, y, W: (X, y[:-1], W), r"y must have shape \(160,\), got \(159,\)"),
    (lambda X, y, W: (X, y[:, None], W), r"y must have shape \(160,\), got \(160, 1\)"),
    (lambda X, y, W: (X, y[:0], W), r"y must have shape \(160,\), got \(0,\)"),
    (lambda X, y, W: (X, y, W[:3]), r"y must hold row indices in \[0, 3\)"),
    (lambda X, y, W: (X, y - 1, W), r"y must hold row indices in \[0, 4\)"),
    (lambda X, y, W: (X, y.astype(float), W), r"y must hold row indices"),
    (lambda X, y, W: (X, np.array(list("abcd"))[y], {"a": W[0], "b": W[1], "c": W[2]}),
     r"class_vectors has no vector for labels \['d'\]"),
    (lambda X, y, W: (X, y, np.where(np.eye(N_CLASSES, DIM) * np.arange(4)[:, None] == 2,
                                     np.nan, W)),
     r"class_vectors contains NaN or infinity: nan at row 2, column 2"),
    (lambda X, y, W: (X, np.array(list("abcd"))[y], {"a": W[0], "b": W[1], "c": W[2],
                                                      "d": np.full(DIM, np.inf)}),
     r"class_vectors has NaN or infinity in the vectors of labels \['d'\]"),
    (lambda X, y, W: (X, y, W[:, :, None]), r"class_vectors must be a mapping or a 2-D array"),
])
def test_bad_fit_input_is_named(problem, change, message):
    X, y, W = change(*problem)
    if message is None:  # a width mismatch shows at transform time
        fitted = SemanticMapper(hidden=4, max_iter=2).fit(X, y, W)
        with pytest.raises(ValueError, match="X has 8 features, but SemanticMapper is "
                                             "expecting 5 features as input"):
            fitted.transform(problem[0])
        return
    with pytest.raises(ValueError, match=message):
        SemanticMapper(hidden=4, max_iter=2).fit(X, y, W)


def test_bad_transform_input_and_parameters_are_named(problem, mapper):
    X, y, W = problem
    with pytest.raises(NotFittedError):
        SemanticMapper().transform(X)
    bad = X.copy()
    bad[3, 0] = np.inf
    with pytest.raises(ValueError, match="X contains NaN or infinity: inf at row 3, column 0"):
        mapper.transform(bad)
    with pytest.raises(ValueError, match="X must be 2-D"):
        mapper.transform(X[0])
    with pytest.raises(ValueError, match="optimizer must be one of"):
        SemanticMapper(optimizer="sgd").fit(X, y, W)


def test_export_restore_round_trip_is_bit_identical(problem, mapper):
    X, _, _ = problem
    meta, arrays = mapper._export()
    again = SemanticMapper._restore(meta, arrays)
    np.testing.assert_array_equal(again.transform(X), mapper.transform(X))
    assert again.get_params() == mapper.get_params()
    assert again.loss_curve_ == mapper.loss_curve_ and again.optimizer_ == mapper.optimizer_
    # the restored network owns its weights: changing the arrays it came from changes nothing
    copies = {name: value.copy() for name, value in arrays.items()}
    restored = SemanticMapper._restore(meta, copies)
    for value in copies.values():
        value[...] = 0
    np.testing.assert_array_equal(restored.transform(X), mapper.transform(X))


@pytest.mark.parametrize("hidden", [0, 5])
def test_save_and_load(problem, tmp_path, hidden):
    X, y, W = problem
    model = SemanticMapper(hidden=hidden, max_iter=10, bias_l2=True).fit(X, y, W)
    model.save(tmp_path / "mapper.fzsl")
    again = fastzsl.load(tmp_path / "mapper.fzsl")
    assert isinstance(again, SemanticMapper)
    assert again.get_params() == model.get_params()
    np.testing.assert_array_equal(again.transform(X), model.transform(X))
