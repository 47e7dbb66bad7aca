"""LoOP kernels: every backend against the NumPy reference (float64 and float32 input,
1e-10 relative: the LoOP kernels accumulate in float64 whatever the input), and the defined
values where distances are zero (0/0 never escapes as NaN)."""
import numpy as np
import pytest

from fastzsl import LoOP, loop_fit, loop_score
from fastzsl.backends import numpy_
from fastzsl.testing import TOL, loop_datasets

DATASETS = loop_datasets()


@pytest.mark.parametrize("name", ["blobs", "duplicates"])
def test_backends_equal_numpy_reference(backend, dtype, name):
    X = DATASETS[name].astype(dtype)
    D, I = numpy_.knn(X, X, 12, 0)
    expected = numpy_.loop_fit(D, I, 2.5)
    fit = loop_fit(D, I, extent=2.5, backend=backend)
    for got, want in zip((fit.pdist, fit.plof, fit.nplof, fit.probabilities), expected):
        np.testing.assert_allclose(got, want, **TOL[np.dtype(np.float64)])  # float64 out
    Q = (X[:40] * 1.3).astype(dtype)
    Dq, Iq = numpy_.knn(Q, X, 12, -1)
    for scoring, ev in (("neighbors", np.nan), ("stream", fit.mean_expected_pdist)):
        want = numpy_.loop_score(Dq, Iq, expected[0], expected[2], 2.5, ev)
        got = loop_score(Dq, Iq, fit, scoring=scoring, backend=backend)
        np.testing.assert_allclose(got, want, **TOL[np.dtype(np.float64)])  # float64 out


def test_zero_distances_give_defined_values(backend):
    # A cluster of 30 identical points (more copies than neighbours) plus a point beside it.
    X = np.r_[np.zeros((30, 2)), [[1.0, 0.0]], np.random.default_rng(0).normal(size=(40, 2)) + 10]
    model = LoOP(n_neighbors=5, backend=backend).fit(X)
    p = model.probabilities_
    assert np.isfinite(p).all()
    assert (p[:30] == 0).all(), "identical points are exactly as dense as their neighbours"
    assert p[30] == 1.0, "a point whose neighbours have zero pdist is infinitely sparser"
    assert np.isfinite(model.fit_.nplof) and model.fit_.nplof > 0
    new = model.outlier_probability(np.array([[0.0, 0.0], [0.5, 0.0]]))
    assert new.tolist() == [0.0, 1.0]


def test_all_points_identical_give_zero_and_new_points_one(backend):
    X = np.ones((25, 3))
    model = LoOP(n_neighbors=4, backend=backend).fit(X)
    assert (model.probabilities_ == 0).all() and model.fit_.nplof == 0
    assert model.outlier_probability(np.array([[1.0, 1, 1], [2.0, 1, 1]])).tolist() == [0.0, 1.0]
