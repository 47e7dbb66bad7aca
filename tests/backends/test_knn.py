"""kNN: every backend against the NumPy reference (same inputs; float64 1e-10 relative,
float32 1e-4: fastzsl.testing.TOL), and the reference against scipy's cKDTree. Distances
must agree within the tolerance and neighbour sets up to ties (assert_knn_equal)."""
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
