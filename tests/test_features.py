"""Coates & Ng k-means features: each step against a direct per-patch computation."""
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from threadpoolctl import threadpool_limits

from fastzsl.app.datasets import FASHION_MNIST_DIR
from fastzsl.features import (
    CoatesNgFeatures, extract_patches, normalize_patches, sample_patches, spherical_kmeans,
    zca_whitening,
)
from fastzsl.testing import (
    Bounded, assert_coates_ng_features_exact, assert_within_bound, coates_ng_features_with_bound,
    gamma, unit_roundoff,
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
    u = unit_roundoff(P.dtype)
    for n, i, j in [(0, 0, 0), (1, 3, 5), (2, 6, 6), (2, 6, 1)]:
        x = Bounded.exact(X[n, i:i + 6, j:j + 6].astype(np.float64).ravel(), u=u)
        c = x - x.sum(axis=0) / 36
        direct = c / ((c * c).sum(axis=0) / 36 + 10.0).sqrt()  # the float32 steps' bound
        assert_within_bound(P[n, i, j], direct.value, direct.err, "normalised patch")
    # constant patch -> zeros (no division by zero)
    assert not normalize_patches(np.full((1, 36), 200.0)).any()


def test_zca_matches_formula_and_whitens(gray):
    X, est = gray
    # fit draws its patch sample first from default_rng(random_state): reproduce it
    x = normalize_patches(sample_patches(X, est.n_patches_, 6, 1, est.random_state)
                          ).astype(np.float64)
    S, U = np.linalg.eigh(np.cov(x, rowvar=False))
    W = U @ np.diag(1 / np.sqrt(S + 0.1)) @ U.T
    # The same float64 mean and eigendecomposition, then one rounding into float32; the
    # whitening matrix's two float64 products (in either order, symmetrised) differ by at
    # most 2 gamma_(2d) |U| diag |U|^T.
    u32 = unit_roundoff(np.float32)
    np.testing.assert_array_equal(est.mean_patch_, x.mean(0).astype(np.float32))
    products = 2 * gamma(2 * 36, np.float64) * (np.abs(U) / np.sqrt(S + 0.1)) @ np.abs(U).T
    assert_within_bound(est.whiten_, W, products + u32 * (np.abs(W) + products), "whitening")
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
    # encode in float32 against the exact features (running error bound); the naive
    # float64 loops against them within the float64 bound of the same steps (its products
    # are associated differently: (x - m) W, then D, so allow both orders' bound)
    assert_coates_ng_features_exact(got, est, X[:2], standardize=False, what="encode")
    exact = coates_ng_features_with_bound(est, X[:2], np.float64, standardize=False)
    for i in range(2):
        assert_within_bound(_naive_features(est, X[i]), exact.value[i],
                            2 * exact.err[i] + _naive_rounding(est, X[i]), "naive loops")
    assert_coates_ng_features_exact(est.transform(X[:2]), est, X[:2], what="transform")


def _naive_rounding(est, image):
    """Float64 rounding of the naive loops' two products per position beyond the encoder's
    one: gamma_(2d) |x - m| |W| |D|^T summed over the positions a quadrant pools."""
    P = extract_patches(image[None], est.patch_size, est.stride, dtype=np.float64)[0]
    rows, cols, d = P.shape
    norm = np.abs(normalize_patches(P)) + np.abs(est.mean_patch_)
    per_position = gamma(2 * d, np.float64) * (norm.reshape(-1, d) @ np.abs(est.whiten_)
                                                @ np.abs(est.centroids_).T)
    per_position = 2 * per_position.reshape(rows, cols, -1)  # rectifying: both signs
    hr, hc = (rows + 1) // 2, (cols + 1) // 2
    quads = [per_position[:hr, :hc], per_position[:hr, hc:], per_position[hr:, :hc],
             per_position[hr:, hc:]]
    return np.concatenate([np.tile(q.sum(axis=(0, 1)), 2) for q in quads])


def test_transform_deterministic_and_batch_independent(gray):
    """What transform promises: the same call gives the same bits; across batch sizes,
    worker threads, BLAS threads and input dtypes each row is within the rounding bound of
    the exact features (the BLAS may sum in another order for another shape, so bits may
    differ there)."""
    X, est = gray
    ref = est.transform(X)
    np.testing.assert_array_equal(est.transform(X), ref)
    assert_coates_ng_features_exact(ref, est, X, what="transform, default batches")
    # n_jobs follows fastzsl's one rule (negative counts back from the cores, as in sklearn)
    for bs, jobs, blas in [(1, 1, 1), (7, 2, 1), (1000, 1, 2), (3, -1, 2), (5, -2, 1),
                           (60, 1, 1), (60, 1, 2)]:
        est.set_params(batch_size=bs, n_jobs=jobs)
        with threadpool_limits(limits=blas, user_api="blas"):
            got = est.transform(X)
        assert_coates_ng_features_exact(got, est, X,
                               what=f"transform, batch_size={bs} n_jobs={jobs} blas={blas}")
    est.set_params(batch_size=None, n_jobs=None)
    assert_coates_ng_features_exact(est.transform(X[13:14]), est, X[13:14], what="one image")
    # float input on the same scale: the same exact features (integers are exact floats)
    assert_coates_ng_features_exact(est.transform(X.astype(np.float64)), est, X, what="float64 input")
    # Refitting with the same seed, other worker threads and batches: the dictionary comes
    # from the seeded patch sample on one BLAS thread, bit for bit; the feature statistics
    # average features encoded in other batches, so they are equal within the bound.
    again = _est(n_jobs=1, batch_size=5).fit(X)
    for name in ("mean_patch_", "whiten_", "centroids_"):
        np.testing.assert_array_equal(getattr(again, name), getattr(est, name), err_msg=name)
    for fitted in (est, again):
        _assert_statistics_exact(fitted, X)


def _assert_statistics_exact(est, X):
    """feature_mean_ and feature_scale_ within their bound: the training features' float32
    error (and the float64 reference's), propagated through the float64 mean, variance and
    square root, then one rounding into the stored dtype. The statistics' own float64
    rounding is bounded by the two-pass formula at u = 2^-53; the merged update the fit
    uses (Chan, Golub & LeVeque 1983) is of the same order, 1e-16 relative, nine orders
    below the float32 terms."""
    f32 = coates_ng_features_with_bound(est, X, np.float32, standardize=False)
    f64 = coates_ng_features_with_bound(est, X, np.float64, standardize=False)
    u64, u_out = unit_roundoff(np.float64), unit_roundoff(est.feature_mean_.dtype)
    f = Bounded(f32.value, f32.err + f64.err, u=u64)
    n = len(X)
    mean = f.sum(axis=0) / n
    centred = f - Bounded(np.broadcast_to(mean.value, f.value.shape),
                          np.broadcast_to(mean.err, f.value.shape), u=u64)
    scale = ((centred * centred).sum(axis=0) / n + 0.01).sqrt()
    bounds = {}
    for name, b in (("feature_mean_", mean), ("feature_scale_", scale)):
        bounds[name] = b.err + u_out * (np.abs(b.value) + b.err)
        assert_within_bound(getattr(est, name), b.value, bounds[name], name)
    return bounds


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
    # fit_transform and transform encode in other batches: both within the bound
    assert_coates_ng_features_exact(F, est, X, what="fit_transform")
    assert_coates_ng_features_exact(est.transform(X), est, X, what="transform")
    # The stored statistics are within their bound of the exact mean and scale, so the
    # exactly standardised features V = (f - mean_) / scale_ have mean (mu - mean_) / scale_
    # and variance v / scale_^2, within those bounds of 0 and v / (v + 0.01).
    bounds = _assert_statistics_exact(est, X)
    V = coates_ng_features_with_bound(est, X, np.float64).value
    mu_hat, sigma_hat = (getattr(est, name).astype(np.float64)
                         for name in ("feature_mean_", "feature_scale_"))
    raw = coates_ng_features_with_bound(est, X, np.float64, standardize=False).value
    v = raw.var(axis=0)
    rounding = gamma(2 * len(X), np.float64)  # float64 means of n terms, twice
    assert_within_bound(V.mean(axis=0), 0, bounds["feature_mean_"] / sigma_hat
                        + rounding * np.abs(V).mean(axis=0), "standardised mean")
    b = bounds["feature_scale_"]
    var_slack = v * (2 * sigma_hat * b + b ** 2) / ((sigma_hat - b) ** 2 * (v + 0.01))
    assert_within_bound(V.var(axis=0), v / (v + 0.01),
                        var_slack + 2 * rounding * (V ** 2).mean(axis=0), "standardised var")


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
