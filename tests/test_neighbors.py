"""The kNN API: fastzsl.knn and the index objects (exact, faiss Flat and IVF), chunking,
progress, array kinds in and out. Backend equivalence is in tests/backends/test_knn.py."""
import numpy as np
import pytest

import fastzsl
from fastzsl.backends import numpy_
from fastzsl.testing import assert_knn_equal, gamma, unit_roundoff


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
