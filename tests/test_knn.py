import numpy as np
import pytest
from scipy.spatial import cKDTree

import fastzsl
from fastzsl.backends import numpy_
from fastzsl.testing import TOL, assert_knn_equal

# Odd sizes that cross the kernels' block (32 queries) and tile (512 references) edges.
SIZES = [(50, 7, 3, 5), (1031, 77, 13, 20), (600, 129, 50, 1), (40, 33, 2, 40)]
# Sizes for the cupy kernel's edges too: its 32-row and 32/16-dim tiles, its 128/64/32-query
# blocks (k up to 128) and d = 300 (query rows re-staged per tile instead of resident).
SIZES += [(2000, 300, 70, 128), (700, 5, 33, 64), (97, 260, 1, 7), (37, 5, 3, 37),
          (200, 50, 300, 10)]


def _data(rng, n_ref, n_q, d, dtype):
    return (rng.normal(size=(n_ref, d)).astype(dtype), rng.normal(size=(n_q, d)).astype(dtype))


@pytest.mark.parametrize("n_ref,n_q,d,k", SIZES)
def test_backend_equals_numpy_reference(backend, dtype, rng, n_ref, n_q, d, k):
    R, Q = _data(rng, n_ref, n_q, d, dtype)
    D, I = fastzsl.knn(Q, R, k, backend=backend)
    D_ref, I_ref = numpy_.knn(Q, R, k, -1)
    assert D.dtype == dtype and I.dtype == np.int64
    assert_knn_equal(D, I, D_ref, I_ref, **TOL[dtype])


@pytest.mark.parametrize("k", [1, 6, 299])
def test_exclude_self_with_duplicates_equals_numpy_reference(backend, dtype, rng, k):
    X = rng.normal(size=(150, 4)).astype(dtype)
    X = np.concatenate([X, X[:100], X[:50]])  # triplicates and duplicates
    D, I = fastzsl.knn(X, X, k, exclude_self=True, backend=backend)
    D_ref, I_ref = numpy_.knn(X, X, k, 0)
    assert_knn_equal(D, I, D_ref, I_ref, **TOL[dtype])
    assert not (I == np.arange(len(X))[:, None]).any(), "a point is its own neighbour"
    if k == 6:
        # The first 50 points have two copies each: both at exactly zero distance.
        assert (D[:50, :2] == 0).all()
        assert (D[:50, 2] > 0).all()


def test_numpy_reference_equals_ckdtree(rng):
    R = rng.normal(size=(2000, 6))
    Q = rng.normal(size=(311, 6))
    D, I = fastzsl.knn(Q, R, 15, backend="numpy")
    dist, idx = cKDTree(R).query(Q, k=15)
    assert_knn_equal(D, I, dist**2, idx, rtol=1e-10, atol=1e-12)


def test_exclude_self_equals_ckdtree_with_duplicates(rng):
    X = rng.integers(0, 4, size=(400, 3)).astype(np.float64)  # many exact duplicates and ties
    k = 10
    D, I = fastzsl.knn(X, X, k, exclude_self=True, backend="numpy")
    dist, idx = cKDTree(X).query(X, k=k + 1)
    # Drop each point itself from cKDTree's answer (or the last entry where ties hid it).
    has_self = (idx == np.arange(len(X))[:, None])
    keep = np.where(has_self.any(axis=1, keepdims=True), ~has_self, np.arange(k + 1) < k)
    ref_D, ref_I = (dist**2)[keep].reshape(-1, k), idx[keep].reshape(-1, k)
    assert_knn_equal(D, I, ref_D, ref_I, rtol=1e-12, atol=1e-12)


def test_ties_go_to_lower_index(backend):
    R = np.zeros((10, 2))  # all identical: every distance ties
    D, I = fastzsl.knn(np.zeros((3, 2)), R, 4, backend=backend)
    assert (I == np.arange(4)).all() and (D == 0).all()


def test_k_equal_to_n_reference_returns_everything(backend, rng):
    R = rng.normal(size=(37, 3))
    D, I = fastzsl.knn(R[:5], R, 37, backend=backend)
    assert (np.sort(I, axis=1) == np.arange(37)).all()
    assert (np.diff(D, axis=1) >= 0).all()


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
    # faiss expands ||q||^2 - 2 q.r + ||r||^2 in float32: absolute error ~ eps * ||x||^2.
    assert_knn_equal(D, I, D_ref, I_ref, rtol=1e-4, atol=1e-4)


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
    monkeypatch.setattr(neighbors, "SEARCH_CHUNK", 64)
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
