"""The kNN API: fastzsl.knn and the index objects (exact, faiss Flat and IVF), chunking,
progress, array kinds in and out. Backend equivalence is in tests/backends/test_knn.py."""
import numpy as np
import pytest

import fastzsl
from fastzsl.backends import numpy_
from fastzsl.testing import assert_knn_equal, backend_is_available, gamma, unit_roundoff


def test_torch_in_torch_out(rng):
    torch = pytest.importorskip("torch")
    R = rng.normal(size=(100, 4)).astype(np.float32)
    D, I = fastzsl.knn(torch.from_numpy(R[:9]), torch.from_numpy(R), 3, backend="numpy")
    assert isinstance(D, torch.Tensor) and D.dtype == torch.float32 and I.dtype == torch.int64
    D_ref, I_ref = numpy_.knn(R[:9], R, 3, -1)
    np.testing.assert_array_equal(I.numpy(), I_ref)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_faiss_flat_equals_exact(rng, exclude_self):
    pytest.importorskip("faiss")
    R = rng.normal(size=(3000, 16)).astype(np.float32)
    Q = R if exclude_self else rng.normal(size=(200, 16)).astype(np.float32)
    D, I = fastzsl.knn(Q, R, 10, exclude_self=exclude_self, method="faiss")
    D_ref, I_ref = numpy_.knn(Q, R, 10, 0 if exclude_self else -1)
    # faiss expands ||q||^2 - 2 q.r + ||r||^2 in float32: a sum of d + 2 terms whose
    # magnitudes add to at most 2 (||q||^2 + ||r||^2), so |error| <= gamma_(d+2) times that
    # (testing.gamma), plus the reference's one rounding to float32.
    sq = max((A.astype(np.float64) ** 2).sum(axis=1).max() for A in (Q, R))
    atol = 2 * gamma(16 + 2, np.float32) * 2 * sq
    assert_knn_equal(D, I, D_ref, I_ref, rtol=2 * unit_roundoff(np.float32), atol=atol)


def test_faiss_ivf_recall(rng):
    pytest.importorskip("faiss")
    from fastzsl.testing import make_blobs
    R, _ = make_blobs(5000, 16, seed=1)
    Q, _ = make_blobs(300, 16, seed=2)
    _, I = fastzsl.knn(Q, R, 10, method="ivf", nlist=50, nprobe=10)
    _, I_ref = numpy_.knn(Q, R, 10, -1)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, I_ref)])
    assert recall > 0.9, recall
    _, I_all = fastzsl.knn(Q, R, 10, method="ivf", nlist=50, nprobe=50)  # every list: exact
    recall_all = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I_all, I_ref)])
    assert recall_all > 0.99, recall_all


def test_faiss_ivf_exclude_self_never_returns_self(rng):
    pytest.importorskip("faiss")
    X = rng.normal(size=(2000, 8)).astype(np.float32)
    _, I = fastzsl.knn(X, X, 5, exclude_self=True, method="ivf", nlist=20, nprobe=5)
    assert not (I == np.arange(len(X))[:, None]).any()


def test_faiss_ivf_that_finds_too_few_neighbours_says_so(rng):
    """nprobe lists may hold fewer than k points; faiss pads with -1, which must not leak."""
    pytest.importorskip("faiss")
    X = rng.normal(size=(400, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"found fewer than k = 30 neighbours for \d+ of 400 "
                                         r"queries \(nlist = 40, nprobe = 1, 400 points\)"):
        fastzsl.knn(X, X, 30, method="ivf", nlist=40, nprobe=1)
    _, I = fastzsl.knn(X, X, 30, method="ivf", nlist=40, nprobe=40)
    assert (I >= 0).all()


def test_faiss_methods_refuse_a_backend(rng):
    pytest.importorskip("faiss")
    X = rng.normal(size=(50, 2))
    with pytest.raises(ValueError, match="backend='numba' applies to method='exact'"):
        fastzsl.knn(X, X, 3, method="faiss", backend="numba")


@pytest.mark.parametrize("method", ["exact", "faiss"])
def test_chunked_search_equals_one_call(backend, rng, monkeypatch, method):
    if method == "faiss":
        pytest.importorskip("faiss")
        if backend != "numpy":
            pytest.skip("faiss runs on its own kernels; one backend is enough")
    import fastzsl.neighbors as neighbors
    X = rng.normal(size=(301, 5)).astype(np.float32)
    X[150:170] = X[0]  # duplicates straddling chunk edges
    args = dict(exclude_self=True, method=method, backend=backend if method == "exact" else "auto")
    D1, I1 = fastzsl.knn(X, X, 7, **args)
    monkeypatch.setattr(neighbors._search, "SEARCH_CHUNK", 64)
    D2, I2 = fastzsl.knn(X, X, 7, progress=True, **args)
    np.testing.assert_array_equal(D1, D2)
    np.testing.assert_array_equal(I1, I2)
    assert not (I2 == np.arange(301)[:, None]).any()


def test_faiss_moves_the_index_to_a_gpu_when_it_has_one(rng, monkeypatch):
    """faiss-gpu is not installed here: a stand-in checks the GPU path is taken."""
    faiss = pytest.importorskip("faiss")
    import fastzsl.neighbors as neighbors
    moved = []

    class FakeResources:
        pass

    def index_cpu_to_gpu(resources, device, index):
        moved.append((type(resources), device, type(index).__name__))
        return index  # keep searching on the CPU index

    monkeypatch.setattr(faiss, "StandardGpuResources", FakeResources, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", index_cpu_to_gpu, raising=False)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    D, I = fastzsl.knn(X, X, 3, method="faiss")
    assert moved == [(FakeResources, 0, "IndexFlatL2")]
    np.testing.assert_array_equal(I[:, 0], np.arange(200))
    index = neighbors.FaissIndex(X, method="ivf", nlist=4, gpu=False)
    assert index.gpu_device is None and len(moved) == 1
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    with pytest.raises(RuntimeError, match="gpu=True but faiss has no GPU support"):
        neighbors.FaissIndex(X, gpu=True)


@pytest.mark.parametrize("n", [800, 2000, 20000])
def test_faiss_ivf_defaults_find_k_neighbours_and_visit_a_fraction(n):
    """Default nlist/nprobe: every query gets k = 20 real neighbours, small or large index."""
    pytest.importorskip("faiss")
    from fastzsl.neighbors import FaissIndex
    from fastzsl.testing import make_blobs
    X, _ = make_blobs(n, 16, seed=3)
    index = FaissIndex(X, method="ivf")
    nlist, nprobe = index.index.nlist, index.index.nprobe
    assert (nlist, nprobe) == (FaissIndex.default_nlist(n), FaissIndex.default_nprobe(nlist))
    assert 8 <= nprobe <= nlist and (nlist < 128 or nprobe == nlist // 16)
    _, I = index.search(X, 20, exclude_self=True)
    assert (I >= 0).all()
    probabilities = fastzsl.LoOP(n_neighbors=20, knn="ivf").fit(X).probabilities_
    assert np.isfinite(probabilities).all()


@pytest.mark.parametrize("method", ["exact", "kdtree"])
def test_the_index_owns_its_rows(rng, method):
    """Changing the caller's array after indexing changes nothing: the index searches (and
    caches norms or a tree of) its own read-only copy."""
    R = rng.normal(size=(500, 3)).astype(np.float32)
    original = R.copy()
    index = fastzsl.ExactIndex(R, method=method)
    Q = rng.normal(size=(20, 3)).astype(np.float32)
    before = index.search(Q, 5)
    R[:] = 100.0
    after = index.search(Q, 5)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(index.reference, original)
    with pytest.raises(ValueError):
        index.reference[0, 0] = 1.0


def test_a_one_call_index_searches_the_callers_rows_without_copying(rng):
    """copy=False: the index reads the caller's array (read-only through the index, the
    caller's array stays writeable); fastzsl.knn builds its one-call index so: the memory
    it allocates stays well below a copy of the reference (the input check's boolean mask
    is a quarter of a float32 reference; a copy would be all of it)."""
    import tracemalloc

    R = rng.normal(size=(20_000, 64)).astype(np.float32)
    index = fastzsl.ExactIndex(R, copy=False, backend="numpy")
    assert np.shares_memory(index.reference, R) and not index.reference.flags.writeable
    assert R.flags.writeable
    assert not np.shares_memory(fastzsl.ExactIndex(R, backend="numpy").reference, R)
    if not backend_is_available("cython"):  # the numpy backend's distance blocks are large
        pytest.skip("the cython backend is not built")
    Q = R[:50].copy()
    fastzsl.knn(Q, R, 3, backend="cython")  # warm-up: lazy imports allocate too
    tracemalloc.start()
    D, I = fastzsl.knn(Q, R, 3, backend="cython")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.6 * R.nbytes, (peak, R.nbytes)
    np.testing.assert_array_equal(I[:, 0], np.arange(50))  # each query finds itself


# ------------------------------------------------------------------------------ metrics
def _brute_force(Q, R, k, metric):
    """The metric's k nearest by brute force in float64: the rows transformed as the metric
    says (cosine: unit rows, norms in float64), double sums of squared differences in
    dimension order, ties to the lower index (lexsort), then the metric's map."""
    from fastzsl.neighbors import METRICS
    m = METRICS[metric]
    Qt, Rt = m.rows(Q, "queries"), m.rows(R, "reference")
    e = np.zeros((len(Qt), len(Rt)))
    for t in range(Qt.shape[1]):
        e += (Qt[:, t, None] - Rt[None, :, t]) ** 2
    order = np.lexsort((np.broadcast_to(np.arange(len(Rt)), e.shape), e), axis=1)[:, :k]
    return m.distance(np.take_along_axis(e, order, axis=1)), order


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "cosine"])
@pytest.mark.parametrize("method", ["exact", "kdtree"])
def test_metrics_equal_brute_force_with_ties(metric, method, backend):
    """Integer grid points (many exact ties, in every metric) and a duplicated row: the
    same distances and indices as the brute force, bit for bit (float64), for the compiled
    kernels, which sum in dimension order as the brute force does; the NumPy reference
    (einsum) and other backends sum in another order, so their near-ties may swap within
    TOL."""
    if method == "kdtree" and backend != "numpy":
        pytest.skip("the tree is one method whatever the backend")
    rng = np.random.default_rng(7)
    R = rng.integers(-3, 4, size=(300, 4)).astype(np.float64)
    R[R.sum(axis=1) == 0] += 1.0  # cosine needs nonzero rows (sum 0 also catches all-zero)
    R[17] = R[3]
    Q = np.r_[R[:20], rng.integers(-3, 4, size=(20, 4)) + 0.5]
    D, I = fastzsl.knn(Q, R, 7, metric=metric, backend=backend, method=method)
    D_ref, I_ref = _brute_force(Q, R, 7, metric)
    if backend not in ("cython", "numba") and method == "exact":
        from fastzsl.testing import TOL
        assert_knn_equal(D, I, D_ref, I_ref, **TOL[np.dtype(np.float64)])
        return
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_array_equal(D, D_ref)


def test_metrics_agree_with_scipy(rng):
    """The distances are scipy's (within float64 rounding: the cosine distance from unit
    rows differs from scipy's formula by a few ulps of 1)."""
    from scipy.spatial.distance import cdist
    R, Q = rng.normal(size=(200, 9)), rng.normal(size=(30, 9))
    for metric in ("sqeuclidean", "euclidean", "cosine"):
        D, I = fastzsl.knn(Q, R, 5, metric=metric, backend="numpy")
        np.testing.assert_allclose(D, np.take_along_axis(cdist(Q, R, metric), I, axis=1),
                                   rtol=1e-12, atol=1e-14)


def test_metric_errors_and_zero_rows(rng):
    R = rng.normal(size=(50, 3))
    with pytest.raises(ValueError, match="unsupported metric 'manhattan'.*cosine"):
        fastzsl.knn(R, R, 3, metric="manhattan")
    R[[4, 9]] = 0.0
    with pytest.raises(ValueError, match=r"nonzero rows: reference rows \[4, 9\]"):
        fastzsl.knn(R[:3] + 1, R, 3, metric="cosine")
    with pytest.raises(ValueError, match=r"queries rows \[0\]"):
        fastzsl.ExactIndex(R[10:], metric="cosine").search(np.zeros((1, 3)), 2)


def test_metric_index_keeps_the_rows_given_and_old_pickles_load(rng):
    import pickle
    from fastzsl.neighbors import ExactIndex
    R = rng.normal(size=(80, 5))
    index = ExactIndex(R, metric="cosine", method="exact")
    np.testing.assert_array_equal(index.reference, R)
    D, I = index.search(R[:5], 3, exclude_self=False)
    np.testing.assert_array_equal(I[:, 0], np.arange(5))
    old = ExactIndex(R, method="exact")
    state = dict(old.__dict__)
    del state["metric"], state["_rows"]  # an index pickled before metrics
    restored = ExactIndex.__new__(ExactIndex)
    restored.__setstate__(state)
    np.testing.assert_array_equal(restored.search(R[:5], 3)[1], old.search(R[:5], 3)[1])
    assert pickle.loads(pickle.dumps(index)).search(R[:5], 3)[1].tolist() == I.tolist()
