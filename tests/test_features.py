"""Coates & Ng k-means features: each step against a direct per-patch computation."""
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from fastzsl.app.datasets import FASHION_MNIST_DIR
from fastzsl.features import (
    CoatesNgFeatures, extract_patches, normalize_patches, sample_patches, spherical_kmeans,
    zca_whitening,
)

K = 16


def _images(n=60, size=20, channels=None, seed=0):
    """Smooth-ish random uint8 images (a blurred noise field plus noise)."""
    rng = np.random.default_rng(seed)
    shape = (n, size, size) + ((channels,) if channels else ())
    base = rng.normal(size=shape)
    for axis in (1, 2):
        base = base + np.roll(base, 1, axis=axis) + np.roll(base, -1, axis=axis)
    img = 128 + 40 * base / base.std() + rng.normal(0, 10, size=shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _est(**kw):
    params = dict(n_centroids=K, n_patches=5000, kmeans_iter=10, progress=False)
    params.update(kw)
    return CoatesNgFeatures(**params)


@pytest.fixture(scope="module")
def gray():
    X = _images()
    return X, _est().fit(X)


def _naive_features(est, image):
    """Loops over positions: normalise, whiten, encode, rectify, pool, one patch at a time."""
    img = image.astype(np.float64)
    if img.ndim == 2:
        img = img[:, :, None]
    p, s, a = est.patch_size, est.stride, est.alpha
    rows = (img.shape[0] - p) // s + 1
    cols = (img.shape[1] - p) // s + 1
    hr, hc = int(np.ceil(rows / 2)), int(np.ceil(cols / 2))
    D = est.centroids_.astype(np.float64)
    W = est.whiten_.astype(np.float64)
    m = est.mean_patch_.astype(np.float64)
    k = D.shape[0]
    out = np.zeros((4, 2 * k))
    for i in range(rows):
        for j in range(cols):
            x = img[i * s:i * s + p, j * s:j * s + p, :].transpose(2, 0, 1).ravel()
            x = (x - x.mean()) / np.sqrt(x.var() + 10)
            z = D @ ((x - m) @ W)
            f = np.concatenate([np.maximum(0, z - a), np.maximum(0, -z - a)])
            out[2 * (i >= hr) + (j >= hc)] += f
    return out.ravel()


# ----------------------------------------------------------------- shapes and patches


def test_output_shape_and_dtype(gray):
    X, est = gray
    F = est.transform(X[:7])
    assert F.shape == (7, 4 * 2 * K) == (7, est.n_features_out_)
    assert F.dtype == np.float32
    assert est.centroids_.shape == (K, 36) and est.whiten_.shape == (36, 36)
    assert est.mean_patch_.shape == (36,)
    assert est.feature_mean_.shape == est.feature_scale_.shape == (8 * K,)
    est64 = _est(dtype=np.float64, kmeans_iter=2).fit(X[:20])
    assert est64.transform(X[:3]).dtype == np.float64


@pytest.mark.parametrize("size, stride, expected", [(32, 1, 27), (28, 1, 23), (28, 2, 12),
                                                    (6, 1, 1)])
def test_patch_positions(size, stride, expected):
    P = extract_patches(np.zeros((2, size, size), np.uint8), 6, stride)
    assert P.shape == (2, expected, expected, 36)
    P = extract_patches(np.zeros((2, size, size + 4, 3), np.uint8), 6, stride)
    assert P.shape == (2, expected, (size + 4 - 6) // stride + 1, 108)


def test_contrast_normalisation_matches_direct():
    X = _images(n=3, size=12)
    P = normalize_patches(extract_patches(X, 6))
    for n, i, j in [(0, 0, 0), (1, 3, 5), (2, 6, 6), (2, 6, 1)]:
        x = X[n, i:i + 6, j:j + 6].astype(np.float64).ravel()
        direct = (x - x.mean()) / np.sqrt(np.var(x) + 10)
        np.testing.assert_allclose(P[n, i, j], direct, rtol=1e-5, atol=1e-5)
    # constant patch -> zeros (no division by zero)
    assert not normalize_patches(np.full((1, 36), 200.0)).any()


def test_zca_matches_formula_and_whitens(gray):
    X, est = gray
    # fit draws its patch sample first from default_rng(random_state): reproduce it
    x = normalize_patches(sample_patches(X, est.n_patches_, 6, 1, est.random_state)
                          ).astype(np.float64)
    S, U = np.linalg.eigh(np.cov(x, rowvar=False))
    W = U @ np.diag(1 / np.sqrt(S + 0.1)) @ U.T
    np.testing.assert_allclose(est.mean_patch_, x.mean(0), atol=1e-5)
    np.testing.assert_allclose(est.whiten_, W, rtol=1e-4, atol=1e-4)
    cov_w = np.cov((x - x.mean(0)) @ W, rowvar=False)
    np.testing.assert_allclose(cov_w, U @ np.diag(S / (S + 0.1)) @ U.T, atol=1e-8)
    # ~ identity up to the eps effect on the small eigenvalues
    # (normalised patches have variance ~1 per pixel, so many eigenvalues are below 1)
    big = S > 1
    assert big.sum() >= 3
    np.testing.assert_allclose(np.diag(U[:, big].T @ cov_w @ U[:, big]), 1, atol=0.1)


def test_zca_on_random_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20000, 5)) @ rng.normal(size=(5, 5)) * 30
    mean, W = zca_whitening(x, eps=0.1)
    np.testing.assert_allclose(W, W.T)
    np.testing.assert_allclose(np.cov((x - mean) @ W, rowvar=False), np.eye(5), atol=2e-3)


# ----------------------------------------------------------------- k-means


def test_centroids_unit_norm(gray):
    _, est = gray
    np.testing.assert_allclose(np.linalg.norm(est.centroids_, axis=1), 1, rtol=1e-5)


def test_spherical_kmeans_recovers_directions_and_reinitialises_empty():
    rng = np.random.default_rng(3)
    dirs = np.linalg.qr(rng.normal(size=(8, 3)))[0].T  # 3 orthonormal directions in R^8
    labels = rng.integers(0, 3, 3000)
    gains = rng.normal(0, 5, 3000)  # either sign: gain-shape VQ ignores the sign
    X = gains[:, None] * dirs[labels] + rng.normal(0, 0.05, (3000, 8))
    D = spherical_kmeans(X, 8, 20, random_state=0)
    np.testing.assert_allclose(np.linalg.norm(D, axis=1), 1, rtol=1e-12)
    # every direction has a centroid (k-means is local: 8 centroids for 3 clusters)
    assert np.abs(D @ dirs.T).max(axis=0).min() > 0.99
    # more centroids than distinct points: empty clusters are re-drawn, all stay unit-norm
    Xs = np.repeat(dirs, 10, axis=0)
    D = spherical_kmeans(Xs, 12, 5, random_state=0)
    assert np.isfinite(D).all()
    np.testing.assert_allclose(np.linalg.norm(D, axis=1), 1, rtol=1e-12)


# ----------------------------------------------------------------- encoder and pooling


@pytest.mark.parametrize("channels, stride", [(None, 1), (3, 1), (None, 2)])
def test_encoder_matches_naive_loops(channels, stride):
    X = _images(n=30, size=15, channels=channels)
    est = _est(stride=stride, n_patches=3000).fit(X)
    got = est.encode(X[:2])
    for i in range(2):
        want = _naive_features(est, X[i])
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-3 * np.abs(want).max())
    np.testing.assert_allclose(est.transform(X[:2]),
                               (got - est.feature_mean_) / est.feature_scale_, rtol=1e-5,
                               atol=1e-5)


def test_transform_deterministic_and_batch_independent(gray):
    X, est = gray
    ref = est.transform(X)
    np.testing.assert_array_equal(est.transform(X), ref)
    # n_jobs follows fastzsl's one rule (negative counts back from the cores, as in sklearn)
    for bs, jobs in [(1, 1), (7, 2), (1000, 1), (3, -1), (5, -2)]:
        est.set_params(batch_size=bs, n_jobs=jobs)
        np.testing.assert_allclose(est.transform(X), ref, rtol=1e-6, atol=1e-6)
    est.set_params(batch_size=None, n_jobs=None)
    np.testing.assert_allclose(est.transform(X[13:14]), ref[13:14], rtol=1e-6, atol=1e-6)
    # float input on the same scale gives the same features
    np.testing.assert_allclose(est.transform(X.astype(np.float64)), ref, rtol=1e-6, atol=1e-6)
    # refitting with the same seed reproduces the model, whatever the threads
    again = _est(n_jobs=1, batch_size=5).fit(X)
    np.testing.assert_allclose(again.centroids_, est.centroids_, atol=1e-5)


def test_n_jobs_errors_follow_the_thread_rule(gray):
    X, _ = gray
    with pytest.raises(ValueError, match="n_jobs=0 runs nothing"):
        _est(n_jobs=0).fit(X)
    with pytest.raises(ValueError, match="leaves no thread"):
        _est(n_jobs=-1000).fit(X)


def test_standardised_training_features(gray):
    X, _ = gray
    est = _est()
    F = est.fit_transform(X)
    raw = est.encode(X).astype(np.float64)
    v = raw.var(axis=0)
    np.testing.assert_allclose(F.mean(axis=0), 0, atol=2e-4)
    np.testing.assert_allclose(F.var(axis=0, dtype=np.float64), v / (v + 0.01), rtol=1e-3,
                               atol=1e-5)
    np.testing.assert_allclose(F, est.transform(X), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR} "
                           "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_classes_separable():
    from sklearn.linear_model import LogisticRegression

    from fastzsl.app.datasets import load_fashion_mnist

    Xtr, ytr, Xte, yte, _ = load_fashion_mnist()
    pick = lambda X, y: (X[np.isin(y, (0, 6))][:200], y[np.isin(y, (0, 6))][:200])  # noqa
    Xtr, ytr = pick(Xtr, ytr)  # t-shirt vs shirt: the hardest pair
    Xte, yte = pick(Xte, yte)
    est = _est(n_centroids=32, n_patches=20000, kmeans_iter=20)
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(est.fit_transform(Xtr), ytr)
    acc = clf.score(est.transform(Xte), yte)
    assert acc > 0.7, acc


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("images, match", [
    (np.zeros((28, 28), np.uint8), r"2-D array of shape \(28, 28\).*images\[None\]"),
    (np.zeros((2, 28, 28, 3, 1), np.uint8), r"5-D array of shape \(2, 28, 28, 3, 1\)"),
    (np.zeros((0, 28, 28), np.uint8), r"empty"),
    (np.zeros((3, 5, 28), np.uint8), r"5x28 .*smaller than the 6x6 patch"),
    (np.zeros((3, 28, 28, 0), np.uint8), r"0 channels"),
])
def test_bad_shapes(images, match):
    with pytest.raises(ValueError, match=match):
        _est().fit(images)


def test_bad_values_and_types(gray):
    X, est = gray
    bad = X.astype(np.float32)
    bad[4, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        _est().fit(bad)
    bad[4, 3, 3] = np.inf
    with pytest.raises(ValueError, match=r"NaN or infinity \(image 4\)"):
        est.transform(bad)
    with pytest.raises(TypeError, match="dtype"):
        est.transform(X.astype(str))
    with pytest.raises(ValueError, match=r"shape \(20, 20, 3\).*fitted on images of shape "
                                         r"\(20, 20\)"):
        est.transform(np.zeros((2, 20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(24, 24\)"):
        est.transform(np.zeros((2, 24, 24), np.uint8))
    with pytest.raises(NotFittedError):
        _est().transform(X)
    with pytest.raises(ValueError, match="n_centroids"):
        _est(n_centroids=0).fit(X)
    with pytest.raises(ValueError, match="exceeds the 15 patches"):
        _est(n_patches=15).fit(X)
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        _est(kmeans_iter=1).fit(X[:10] / 255.0)


def test_params_only_in_init():
    est = CoatesNgFeatures(n_centroids=3, progress=False)
    assert est.get_params()["n_centroids"] == 3
    assert not [a for a in vars(est) if a.endswith("_")]
    with pytest.raises(TypeError):
        CoatesNgFeatures(3)


def test_save_load_gives_identical_features(tmp_path):
    import fastzsl
    from fastzsl.features import CoatesNgFeatures

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 12, 12), dtype=np.uint8)
    model = CoatesNgFeatures(n_centroids=8, n_patches=500, kmeans_iter=3, progress=False)
    model.fit(images)
    model.save(tmp_path / "f.fzsl")
    again = fastzsl.load(tmp_path / "f.fzsl")
    assert isinstance(again, CoatesNgFeatures)
    np.testing.assert_array_equal(again.transform(images), model.transform(images))
