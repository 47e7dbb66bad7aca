import numpy as np
import pytest

import fastzsl
from fastzsl import LoOP, loop_fit, loop_score
from fastzsl.backends import numpy_
from fastzsl.testing import loop_datasets, make_blobs

PyNomaly = pytest.importorskip("PyNomaly.loop", reason="PyNomaly is the LoOP oracle")


DATASETS = loop_datasets()


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


def test_low_dimensional_data_fit_with_the_tree_equal_the_brute_force_fit(tmp_path):
    """knn="auto" on low-dimensional data searches a k-d tree: the same graph, hence the
    same probabilities bit for bit, and the model file rebuilds the same index."""
    X, _ = make_blobs(5000, 3, seed=4)
    X = np.r_[X, X[:300]]  # duplicates: ties at distance 0
    auto = LoOP(n_neighbors=10).fit(X)
    brute = LoOP(n_neighbors=10, knn="exact").fit(X)
    assert (auto.knn_method_, brute.knn_method_) == ("kdtree", "exact")
    np.testing.assert_array_equal(auto.probabilities_, brute.probabilities_)
    new = X[:50] + 0.01
    np.testing.assert_array_equal(auto.outlier_probability(new),
                                  brute.outlier_probability(new))
    auto.save(tmp_path / "loop.fzsl")
    loaded = fastzsl.load(tmp_path / "loop.fzsl")
    assert loaded.knn_method_ == "kdtree"
    np.testing.assert_array_equal(loaded.outlier_probability(new), auto.outlier_probability(new))


def test_loop_metrics(rng, tmp_path):
    """'euclidean' is the same model as the default; 'cosine' is LoOP of the cosine
    distances (the fit from knn(metric="cosine") squared), and survives a save/load."""
    X = rng.normal(size=(300, 6)) + 2.0
    Q = rng.normal(size=(20, 6)) + 2.0
    base = LoOP(n_neighbors=10, backend="numpy").fit(X)
    euclid = LoOP(n_neighbors=10, backend="numpy", metric="euclidean").fit(X)
    np.testing.assert_array_equal(base.probabilities_, euclid.probabilities_)
    np.testing.assert_array_equal(base.outlier_probability(Q), euclid.outlier_probability(Q))
    cos = LoOP(n_neighbors=10, backend="numpy", metric="cosine").fit(X)
    D, I = fastzsl.knn(X, X, 10, exclude_self=True, metric="cosine", backend="numpy")
    np.testing.assert_allclose(cos.probabilities_, loop_fit(D**2, I).probabilities,
                               rtol=1e-12, atol=1e-12)
    path = tmp_path / "cos.fzsl"
    cos.save(path)
    again = fastzsl.load(path)
    assert again.metric == "cosine"
    np.testing.assert_array_equal(again.outlier_probability(Q), cos.outlier_probability(Q))
