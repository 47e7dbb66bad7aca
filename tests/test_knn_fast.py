"""Adversarial cases for the GEMM-prefiltered exact kNN of the cython backend.

The kernel rejects candidates on ||q||^2 + ||r||^2 - 2 q.r computed with BLAS and re-ranks
the rest by direct differences; a margin too small would silently drop true neighbours.
Every case checks the result against the NumPy reference (within the usual tolerances,
neighbour sets up to ties) and bit for bit against the direct kernel ``knn_direct`` (the
pre-GEMM algorithm) and, when available, the numba backend (same distance formula).
"""
import numpy as np
import pytest

import fastzsl
from fastzsl.backends import numpy_
from fastzsl.testing import TOL, assert_knn_equal, backend_is_available

knn_cpu = pytest.importorskip("fastzsl._ext.knn_cpu", reason="cython extension not built")

# float32 tiles hold 1024 reference rows, float64 tiles 512; query blocks hold up to 128
# queries (fewer for small query sets, so every thread gets work).
EDGE_SIZES = [(1, 1), (127, 511), (128, 512), (129, 513), (257, 1023), (130, 1025), (3, 2049)]


def _check(Q, R, k, self_offset=-1):
    dtype = Q.dtype
    D, I = knn_cpu.knn(Q, R, k, self_offset)
    assert D.dtype == dtype and I.dtype == np.int64 and D.shape == I.shape == (len(Q), k)
    D_ref, I_ref = numpy_.knn(Q, R, k, self_offset)
    assert_knn_equal(D, I, D_ref, I_ref, **TOL[dtype])
    D_dir, I_dir = knn_cpu.knn_direct(Q, R, k, self_offset)
    np.testing.assert_array_equal(D, D_dir)
    np.testing.assert_array_equal(I, I_dir)
    if backend_is_available("numba"):
        from fastzsl.backends import numba_
        D_nb, I_nb = numba_.knn(Q, R, k, self_offset)
        np.testing.assert_array_equal(D, D_nb)
        np.testing.assert_array_equal(I, I_nb)
    if self_offset >= 0:
        own = np.arange(len(Q))[:, None] + self_offset
        assert not (I == own).any(), "a point is its own neighbour"
    return D, I


@pytest.mark.parametrize("n_q,n_r", EDGE_SIZES)
def test_block_and_tile_edges(dtype, rng, n_q, n_r):
    R = rng.normal(size=(n_r, 9)).astype(dtype)
    Q = rng.normal(size=(n_q, 9)).astype(dtype)
    _check(Q, R, min(5, n_r))


@pytest.mark.parametrize("d", [1, 2, 50, 130])
def test_dims(dtype, rng, d):
    R = rng.normal(size=(1100, d)).astype(dtype)
    Q = rng.normal(size=(150, d)).astype(dtype)
    _check(Q, R, 7)


@pytest.mark.parametrize("scale,offset", [(1e4, 1e-3), (1e6, 1e-2), (1e3, 1e-6)])
def test_near_duplicates_at_large_norm(dtype, rng, scale, offset):
    # Every point sits near the same large vector: the expansion cancels catastrophically.
    base = rng.normal(size=(1, 20)) * scale
    X = (base + rng.normal(size=(1300, 20)) * offset).astype(dtype)
    _check(X, X, 10, 0)
    _check(X[:200], X, 3)


def test_large_norm_clusters_far_apart(dtype, rng):
    centres = rng.normal(size=(4, 16)) * 1e5
    X = (centres[rng.integers(4, size=1500)] + rng.normal(size=(1500, 16)) * 1e-2).astype(dtype)
    _check(X, X, 12, 0)


def test_exact_duplicates(dtype, rng):
    X = rng.normal(size=(400, 6)).astype(dtype) * 100
    X = np.concatenate([X, X[:300], X[:150]])  # triplicates and duplicates
    D, I = _check(X, X, 6, 0)
    assert (D[:150, :2] == 0).all()
    D, I = _check(X, X, 1, 0)
    assert (D[:300, 0] == 0).all()


@pytest.mark.parametrize("k", [1, 17, 399])
def test_integer_grid_ties_with_self_exclusion(dtype, rng, k):
    # Many exact ties: order must go to the lower reference index.
    X = rng.integers(0, 4, size=(400, 3)).astype(dtype) + dtype.type(5000)
    _check(X, X, k, 0)


def test_k_is_n_minus_one_excluding_self(dtype, rng):
    X = rng.normal(size=(1030, 4)).astype(dtype)
    D, I = _check(X[:40], X, 1029, 0)
    assert (np.sort(I, axis=1) == np.array([np.delete(np.arange(1030), i) for i in range(40)])).all()


def test_self_offset_of_a_chunk(dtype, rng):
    X = rng.integers(-2, 3, size=(1500, 5)).astype(dtype)
    _check(X[700:950], X, 9, 700)


def test_all_identical(dtype):
    X = np.full((1100, 8), 3.0, dtype=dtype)
    D, I = _check(X[:130], X, 4)
    assert (D == 0).all() and (I == np.arange(4)).all()


def test_tiny_values_underflow(dtype, rng):
    # float32 squares of 1e-22 underflow in the gemm; the re-rank is in double.
    X = (rng.normal(size=(600, 12)) * 1e-22).astype(dtype)
    _check(X, X, 5, 0)


def test_huge_values_fall_back_exactly(dtype, rng):
    # Norms near the float32 overflow: the kernel must not lose neighbours to inf - inf.
    big = 1e18 if dtype == np.float32 else 1e150
    X = (rng.normal(size=(300, 10)) * big).astype(dtype)
    _check(X, X, 4, 0)


def test_public_api_blobs(dtype):
    X, _ = fastzsl.testing.make_blobs(3000, 50, seed=1, dtype=dtype)
    D, I = fastzsl.knn(X[2500:], X[:2500], 20, backend="cython")
    D_ref, I_ref = numpy_.knn(X[2500:], X[:2500], 20, -1)
    assert_knn_equal(D, I, D_ref, I_ref, **TOL[dtype])
    D_dir, I_dir = knn_cpu.knn_direct(X[2500:], X[:2500], 20, -1)
    np.testing.assert_array_equal(D, D_dir)
    np.testing.assert_array_equal(I, I_dir)
