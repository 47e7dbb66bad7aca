import numpy as np
import pytest

import fastzsl
from fastzsl import LoOP, loop_fit, loop_score
from fastzsl.backends import numpy_
from fastzsl.testing import make_blobs

PyNomaly = pytest.importorskip("PyNomaly.loop", reason="PyNomaly is the LoOP oracle")


def _datasets():
    rng = np.random.default_rng(7)
    blobs, _ = make_blobs(400, 5, n_centers=4, seed=3, dtype=np.float64)
    outliers = np.r_[rng.normal(size=(300, 3)), rng.uniform(-8, 8, size=(20, 3))]
    base = rng.normal(size=(150, 4))
    # Duplicates in pairs and triples: fewer copies than neighbours, so no expected pdist is 0.
    duplicates = np.r_[base, base[:60], base[:25]]
    # (A lattice is left out on purpose: ties at the k-th neighbour make the neighbour set,
    # and so LoOP, depend on tie-breaking, which PyNomaly leaves to argpartition.)
    heavy_tailed = rng.standard_t(2, size=(250, 30))
    return {"blobs": blobs, "outliers": outliers, "duplicates": duplicates,
            "heavy_tailed": heavy_tailed}


DATASETS = _datasets()


@pytest.mark.parametrize("name", list(DATASETS))
@pytest.mark.parametrize("n_neighbors,extent", [(10, 3), (20, 2), (5, 1)])
def test_in_sample_equals_pynomaly_fit(name, n_neighbors, extent):
    X = DATASETS[name]
    ours = LoOP(n_neighbors=n_neighbors, extent=extent, backend="numpy").fit(X).probabilities_
    theirs = PyNomaly.LocalOutlierProbability(
        X, extent=extent, n_neighbors=n_neighbors, progress_bar=False).fit()
    np.testing.assert_allclose(ours, theirs.local_outlier_probabilities.astype(float),
                               rtol=0, atol=1e-10)


def test_stream_scoring_equals_pynomaly_stream():
    X = DATASETS["outliers"]
    new = np.random.default_rng(1).normal(scale=2.0, size=(25, 3))
    theirs_model = PyNomaly.LocalOutlierProbability(X, extent=3, n_neighbors=10,
                                                    progress_bar=False).fit()
    theirs = np.array([float(np.ravel(theirs_model.stream(p))[0]) for p in new])
    ours = LoOP(n_neighbors=10, extent=3, scoring="stream", backend="numpy").fit(X)
    np.testing.assert_allclose(ours.outlier_probability(new), theirs, rtol=0, atol=1e-10)


def test_new_points_use_their_own_neighbours():
    X = DATASETS["blobs"]
    new = X[:30] + 0.01
    model = LoOP(n_neighbors=10, backend="numpy").fit(X)
    D, I = numpy_.knn(new, X, 10, -1)
    pdist = 3.0 * np.sqrt(D.mean(axis=1))
    plof = pdist / model.fit_.pdist[I].mean(axis=1) - 1
    expected = np.maximum(0, __import__("scipy.special").special.erf(
        plof / (model.fit_.nplof * np.sqrt(2))))
    np.testing.assert_allclose(model.outlier_probability(new), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["blobs", "duplicates"])
def test_backends_equal_numpy_reference(backend, dtype, name):
    X = DATASETS[name].astype(dtype)
    D, I = numpy_.knn(X, X, 12, 0)
    expected = numpy_.loop_fit(D, I, 2.5)
    fit = loop_fit(D, I, extent=2.5, backend=backend)
    for got, want in zip((fit.pdist, fit.plof, fit.nplof, fit.probabilities), expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    Q = (X[:40] * 1.3).astype(dtype)
    Dq, Iq = numpy_.knn(Q, X, 12, -1)
    for scoring, ev in (("neighbors", np.nan), ("stream", fit.mean_expected_pdist)):
        want = numpy_.loop_score(Dq, Iq, expected[0], expected[2], 2.5, ev)
        got = loop_score(Dq, Iq, fit, scoring=scoring, backend=backend)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


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


def test_obvious_outliers_score_high():
    X, _ = make_blobs(500, 8, n_centers=3, seed=5, dtype=np.float64)
    far = X[:20] + 40.0
    model = LoOP(n_neighbors=20).fit(X)
    assert model.outlier_probability(far).min() > 0.9
    assert np.median(model.outlier_probability(X[:100] + 0.01)) < 0.2
    assert (model.predict(far) == -1).all()


@pytest.mark.parametrize("knn", ["faiss", "ivf"])
def test_faiss_knn_gives_close_loop(knn):
    pytest.importorskip("faiss")
    X, _ = make_blobs(3000, 10, n_centers=5, seed=2, dtype=np.float32)
    exact = LoOP(n_neighbors=20).fit(X)
    other = LoOP(n_neighbors=20, knn=knn, knn_params={"nlist": 20, "nprobe": 10} if knn == "ivf"
                 else None).fit(X)
    err = np.abs(other.probabilities_ - exact.probabilities_)
    assert err.mean() < 0.01, err.mean()


def test_loop_score_checks_the_graph():
    X = DATASETS["blobs"]
    D, I = numpy_.knn(X, X, 5, 0)
    fit = loop_fit(D, I)
    with pytest.raises(ValueError, match=r"indices I must lie in \[0, 400\), found \[400, 400\]"):
        loop_score(D[:1], np.full((1, 5), 400), fit)
    with pytest.raises(ValueError, match="same shape"):
        loop_score(D, I[:, :3], fit)
    with pytest.raises(ValueError, match="squared distances >= 0"):
        loop_fit(-D, I)
    with pytest.raises(TypeError, match="must be integers"):
        loop_fit(D, I.astype(float))
    with pytest.raises(ValueError, match="scoring must be one of"):
        loop_score(D, I, fit, scoring="global")


def test_torch_input_gives_torch_output():
    torch = pytest.importorskip("torch")
    X = DATASETS["blobs"]
    model = LoOP(n_neighbors=10).fit(torch.from_numpy(X))
    out = model.outlier_probability(torch.from_numpy(X[:5]))
    assert isinstance(out, torch.Tensor) and out.shape == (5,)


def test_public_names():
    assert {"knn", "LoOP", "GaussianNovelty", "available_backends", "loop_fit", "loop_score",
            "gaussian_loglik"} <= set(fastzsl.__all__)
    assert "numpy" in fastzsl.available_backends()
