"""KNNTransformer: scikit-learn's KNeighborsTransformer graph, on fastzsl's kernels."""
import numpy as np
import pytest
import sklearn
from scipy import sparse
from sklearn.neighbors import KNeighborsTransformer, LocalOutlierFactor
from sklearn.pipeline import make_pipeline

import fastzsl
from fastzsl import KNNTransformer
from fastzsl.testing import assert_within_bound, gamma, make_blobs, unit_roundoff


def _blobs(n=600, d=8, seed=0, dtype=np.float64):
    return make_blobs(n, d, seed=seed, dtype=dtype)[0]


def _with_duplicates(seed=1):
    X = _blobs(400, 5, seed=seed)
    X[200:230] = X[:30]  # 30 exact pairs: groups of 2, smaller than k + 1
    return X


def _clusters_and_outliers(seed=2):
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(0, 1, (250, 3)), rng.normal(6, 0.3, (150, 3)),
                 rng.uniform(-8, 12, (20, 3))]


DATASETS = {"blobs": _blobs, "duplicates": _with_duplicates,
            "clusters+outliers": _clusters_and_outliers}


@pytest.mark.parametrize("name", list(DATASETS))
@pytest.mark.parametrize("k", [1, 5, 20])
def test_graph_equals_sklearns(name, k):
    X = DATASETS[name]()
    ours = KNNTransformer(n_neighbors=k).fit_transform(X)
    theirs = KNeighborsTransformer(n_neighbors=k).fit_transform(X)
    assert type(ours) is type(theirs)
    assert ours.shape == theirs.shape == (len(X), len(X))
    for attr in ("data", "indices", "indptr"):
        assert getattr(ours, attr).dtype == getattr(theirs, attr).dtype, attr
    np.testing.assert_array_equal(ours.indptr, theirs.indptr)  # k + 1 entries a row
    assert np.diff(ours.indptr).tolist() == [k + 1] * len(X)
    # each row: ascending distances (scipy arithmetic below sorts indices in place: check first)
    rows = ours.data.reshape(len(X), k + 1)
    assert (np.diff(rows, axis=1) >= 0).all()
    np.testing.assert_allclose(rows, theirs.data.reshape(len(X), k + 1), rtol=1e-12, atol=1e-12)
    # the sample itself is stored, as an explicit 0
    assert (ours.indices.reshape(len(X), k + 1) == np.arange(len(X))[:, None]).any(axis=1).all()
    assert (ours.diagonal() == 0).all()
    # each entry is the true distance to the sample it names
    rows_of = np.repeat(np.arange(len(X)), k + 1)
    np.testing.assert_allclose(ours.data, np.linalg.norm(X[rows_of] - X[ours.indices], axis=1),
                               rtol=1e-12, atol=1e-12)
    if name != "duplicates":  # no exact ties: the same samples, in the same order
        np.testing.assert_array_equal(ours.indices, theirs.indices)
        assert abs(ours.copy() - theirs.copy()).max() < 1e-12


@pytest.mark.parametrize("name", list(DATASETS))
def test_fit_transform_equals_fit_then_transform(name):
    X = DATASETS[name]()
    a = KNNTransformer(n_neighbors=7).fit_transform(X)
    b = KNNTransformer(n_neighbors=7).fit(X).transform(X)
    assert a.nnz == b.nnz
    assert abs(a - b).max() == 0
    np.testing.assert_array_equal(a.indptr, b.indptr)


def test_transform_of_new_points():
    X = _blobs()
    Q = _blobs(50, seed=9)
    ours = KNNTransformer(n_neighbors=6).fit(X).transform(Q)
    theirs = KNeighborsTransformer(n_neighbors=6).fit(X).transform(Q)
    assert ours.shape == (50, len(X))
    np.testing.assert_array_equal(ours.indices, theirs.indices)
    np.testing.assert_allclose(ours.data, theirs.data, rtol=1e-12)


def test_connectivity_mode():
    X = _clusters_and_outliers()
    ours = KNNTransformer(n_neighbors=4, mode="connectivity").fit_transform(X)
    theirs = KNeighborsTransformer(n_neighbors=4, mode="connectivity").fit_transform(X)
    assert np.diff(ours.indptr).tolist() == [4] * len(X)  # itself included, no extra one
    assert ours.dtype == theirs.dtype == np.float64
    assert set(np.unique(ours.data)) == {1.0}
    assert (ours.diagonal() == 1).all()
    np.testing.assert_array_equal(ours.toarray(), theirs.toarray())


@pytest.mark.parametrize("name", list(DATASETS))
@pytest.mark.parametrize("k", [5, 20])
def test_lof_pipeline_equals_lof(name, k):
    X = DATASETS[name]()
    alone = LocalOutlierFactor(n_neighbors=k, contamination=0.05)
    expected = alone.fit_predict(X)
    for transformer in (KNNTransformer(n_neighbors=k), KNeighborsTransformer(n_neighbors=k)):
        pipe = make_pipeline(transformer, LocalOutlierFactor(metric="precomputed", n_neighbors=k,
                                                             contamination=0.05))
        predicted = pipe.fit_predict(X)
        np.testing.assert_allclose(pipe[-1].negative_outlier_factor_,
                                   alone.negative_outlier_factor_, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(predicted, expected)
    assert (expected == -1).any()


def test_lof_novelty_pipeline_equals_lof():
    X, Q = _clusters_and_outliers(), _blobs(40, 3, seed=5)
    alone = LocalOutlierFactor(n_neighbors=10, novelty=True).fit(X)
    pipe = make_pipeline(KNNTransformer(n_neighbors=10),
                         LocalOutlierFactor(n_neighbors=10, novelty=True, metric="precomputed"))
    pipe.fit(X)
    np.testing.assert_allclose(pipe.score_samples(Q), alone.score_samples(Q), atol=1e-10)
    np.testing.assert_array_equal(pipe.predict(Q), alone.predict(Q))


def test_float32_input():
    X = _blobs(dtype=np.float32)
    ours = KNNTransformer(n_neighbors=5).fit_transform(X)
    theirs = KNeighborsTransformer(n_neighbors=5).fit_transform(X)
    assert ours.dtype == np.float64
    # Ours: exact double distances of the float32 rows. scikit-learn's: the float64
    # expansion ||x||^2 - 2 x.y + ||y||^2 (float32 input is upcast by chunks), off by at
    # most e = gamma_(d+2) 2 (||x||^2 + ||y||^2) in the square, so by sqrt(e) at worst in
    # the distance (at 0), then rounded to float32.
    X64 = X.astype(np.float64)
    e = 2 * gamma(X.shape[1] + 2, np.float64) * 2 * (X64 ** 2).sum(axis=1).max()
    distance_slack = np.sqrt(e) + 2 * unit_roundoff(np.float32) * np.abs(ours.data)
    assert_within_bound(ours.data, theirs.data, distance_slack, "distances")
    pipe = make_pipeline(KNNTransformer(n_neighbors=5),
                         LocalOutlierFactor(n_neighbors=5, metric="precomputed"))
    pipe.fit(X)
    alone = LocalOutlierFactor(n_neighbors=5).fit(X)
    # LOF is a ratio of mean reachability distances (each a max of two distances, so at
    # least the smallest k-distance s): a distance error of at most t moves each mean by a
    # factor within 1 +- t / s, and the ratio by at most 2 (t / s) / (1 - t / s) relative.
    smallest = np.sort(ours.data.reshape(len(X), -1), axis=1)[:, -1].min()
    rel = distance_slack.max() / smallest
    lof = -alone.negative_outlier_factor_
    assert_within_bound(-pipe[-1].negative_outlier_factor_, lof, 2 * rel / (1 - rel) * lof,
                        "local outlier factors")


@pytest.mark.parametrize("backend", fastzsl.available_backends())
def test_every_backend_gives_the_same_graph(backend):
    X = _blobs(300)
    ref = KNNTransformer(n_neighbors=5, backend="numpy").fit_transform(X)
    got = KNNTransformer(n_neighbors=5, backend=backend).fit_transform(X)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_allclose(got.data, ref.data, rtol=1e-12)


def test_faiss_method():
    pytest.importorskip("faiss")
    X = _blobs(300)
    t = KNNTransformer(n_neighbors=5, knn="faiss").fit(X)
    assert t.knn_method_ == "faiss"
    got = t.transform(X[:20] + 0.01)
    ref = KNeighborsTransformer(n_neighbors=5).fit(X).transform(X[:20] + 0.01)
    np.testing.assert_array_equal(got.indices, ref.indices)
    # faiss's float32 expansion: squares within gamma_(d+2) 2 (||q||^2 + ||r||^2); the
    # distances (away from 0 here) by at most that over d (|sqrt x - sqrt y| <= |x - y| /
    # sqrt y), plus the float32 roundings of both
    sq = (np.r_[X, X[:20] + 0.01].astype(np.float64) ** 2).sum(axis=1).max()
    e = 2 * gamma(X.shape[1] + 2, np.float32) * 2 * (2 * sq)
    assert ref.data.min() > 0
    assert_within_bound(got.data, ref.data, e / ref.data
                        + 4 * unit_roundoff(np.float32) * ref.data, "faiss distances")


def test_sparray_when_sklearn_is_configured_for_it():
    if "sparse_interface" not in sklearn.get_config():
        pytest.skip("this scikit-learn has no sparse_interface setting")
    with sklearn.config_context(sparse_interface="sparray"):
        got = KNNTransformer(n_neighbors=3).fit_transform(_blobs(50))
    assert isinstance(got, sparse.csr_array)


def test_feature_names_out_and_attributes():
    t = KNNTransformer(n_neighbors=3).fit(_blobs(30))
    assert t.n_samples_fit_ == 30 and t.n_features_in_ == 8
    assert list(t.get_feature_names_out()[:2]) == ["knntransformer0", "knntransformer1"]
    assert len(t.get_feature_names_out()) == 30


def test_errors():
    X = _blobs(10)
    with pytest.raises(ValueError, match="Expected n_neighbors <= n_samples_fit"):
        KNNTransformer(n_neighbors=10).fit_transform(X)  # 11 entries > 10 samples
    assert KNNTransformer(n_neighbors=10, mode="connectivity").fit_transform(X).nnz == 100
    with pytest.raises(ValueError, match="mode must be one of"):
        KNNTransformer(mode="distances").fit(X)
    with pytest.raises(ValueError, match="n_neighbors must be >= 1"):
        KNNTransformer(n_neighbors=0).fit(X)
    with pytest.raises(TypeError, match="n_neighbors must be an integer"):
        KNNTransformer(n_neighbors=2.5).fit(X)
    fitted = KNNTransformer(n_neighbors=2).fit(X)
    with pytest.raises(ValueError, match="X has 3 features, but KNNTransformer is expecting 8"):
        fitted.transform(X[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        fitted.transform(np.full((2, 8), np.nan))
    with pytest.raises(TypeError, match="sparse"):
        KNNTransformer().fit(sparse.csr_matrix(X))


@pytest.mark.parametrize("params", [dict(algorithm="ball_tree", leaf_size=10),
                                    dict(algorithm="brute", metric="euclidean"),
                                    dict(algorithm="kd_tree", metric="minkowski", p=2),
                                    dict(metric="sqeuclidean"), dict(metric="cosine"),
                                    dict(mode="connectivity", metric="cosine", n_jobs=1)])
def test_sklearn_constructor_gives_sklearns_graph(params):
    """KNeighborsTransformer's parameters, passed as they are: the same graph (indices
    exactly on blobs without ties; distances within float64 rounding)."""
    X, _ = make_blobs(300, 6, seed=4, dtype=np.float64)
    ours = KNNTransformer(n_neighbors=8, **params).fit_transform(X)
    theirs = KNeighborsTransformer(n_neighbors=8, **params).fit_transform(X)
    np.testing.assert_array_equal(ours.indices, theirs.indices)
    # Ours are exact double sums; scikit-learn's brute force expands
    # ||x||^2 - 2 x.y + ||y||^2 in float64 (error e = gamma_(d+2) 2 (||x||^2 + ||y||^2) in a
    # square, so up to sqrt(e) in a distance near 0, such as each point's own); its trees
    # and cosine sum directly (relative gamma_(d+2)). 1 - cos of unit rows: absolute e too.
    sq = (X ** 2).sum(axis=1).max()
    e = gamma(X.shape[1] + 2, np.float64) * 2 * (2 * sq)
    slack = np.sqrt(e) + e + 4 * gamma(X.shape[1] + 2, np.float64) * np.abs(ours.data)
    assert_within_bound(ours.data, theirs.data, slack, "graph distances")
    if params.get("metric", "minkowski") == "minkowski":  # p in metric_params: the same
        again = KNNTransformer(n_neighbors=8, metric_params={"p": 2}).fit_transform(X)
        np.testing.assert_array_equal(again.data, ours.data)


def test_isomap_and_tsne_pipelines_with_algorithm_and_metric():
    from sklearn.manifold import TSNE, Isomap
    X = np.random.default_rng(5).normal(size=(200, 5))  # one connected graph
    ours = make_pipeline(KNNTransformer(n_neighbors=10, algorithm="brute", metric="euclidean"),
                         Isomap(n_neighbors=10, metric="precomputed")).fit_transform(X)
    theirs = make_pipeline(KNeighborsTransformer(n_neighbors=10, algorithm="brute",
                                                 metric="euclidean"),
                           Isomap(n_neighbors=10, metric="precomputed")).fit_transform(X)
    # The two graphs differ in each point's distance to itself (0 against up to sqrt(e),
    # see above), which no shortest path uses, and elsewhere by 4 gamma_(d+2) relative; the
    # embeddings then agree to the eigensolver's own accuracy (dense eigh: ~d u relative),
    # far inside 1e-8; signs of eigenvectors are arbitrary, hence the absolute values.
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs), rtol=1e-8, atol=1e-8)
    emb = make_pipeline(KNNTransformer(n_neighbors=31, metric="cosine", algorithm="auto"),
                        TSNE(metric="precomputed", init="random", perplexity=10,
                             random_state=0, max_iter=250)).fit_transform(X)
    assert emb.shape == (200, 2) and np.isfinite(emb).all()


@pytest.mark.parametrize("params, match", [
    (dict(metric="manhattan"), "unsupported metric 'manhattan'.*cosine"),
    (dict(p=1), "unsupported metric 'minkowski' with p=1"),
    (dict(metric_params={"w": 1}), "metric_params"),
    (dict(algorithm="octree"), "algorithm must be one of"),
    (dict(algorithm="brute", knn="kdtree"), "disagree"),
    (dict(leaf_size=0), "leaf_size")])
def test_unsupported_parameters_are_named(params, match):
    with pytest.raises(ValueError, match=match):
        KNNTransformer(**params).fit(np.ones((10, 2)) + np.arange(10)[:, None])
