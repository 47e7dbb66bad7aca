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
    # float64 both: cKDTree's sqrt squared again adds 4u to the 2 gamma_d of two sums
    assert_knn_equal(D, I, dist**2, idx, **TOL[np.dtype(np.float64)])


def test_exclude_self_equals_ckdtree_with_duplicates(rng):
    X = rng.integers(0, 4, size=(400, 3)).astype(np.float64)  # many exact duplicates and ties
    k = 10
    D, I = fastzsl.knn(X, X, k, exclude_self=True, backend="numpy")
    dist, idx = cKDTree(X).query(X, k=k + 1)
    # Drop each point itself from cKDTree's answer (or the last entry where ties hid it).
    has_self = (idx == np.arange(len(X))[:, None])
    keep = np.where(has_self.any(axis=1, keepdims=True), ~has_self, np.arange(k + 1) < k)
    ref_D, ref_I = (dist**2)[keep].reshape(-1, k), idx[keep].reshape(-1, k)
    assert_knn_equal(D, I, ref_D, ref_I, **TOL[np.dtype(np.float64)])


def test_ties_go_to_lower_index(backend):
    R = np.zeros((10, 2))  # all identical: every distance ties
    D, I = fastzsl.knn(np.zeros((3, 2)), R, 4, backend=backend)
    assert (I == np.arange(4)).all() and (D == 0).all()


def test_k_equal_to_n_reference_returns_everything(backend, rng):
    R = rng.normal(size=(37, 3))
    D, I = fastzsl.knn(R[:5], R, 37, backend=backend)
    assert (np.sort(I, axis=1) == np.arange(37)).all()
    assert (np.diff(D, axis=1) >= 0).all()


# ---------------------------------------------------------------- method="kdtree"
def _brute(Q, R, k, self_offset):
    """The brute-force answer the tree must give bit for bit: the Cython direct kernel
    where it is built (the NumPy reference sums in another order: within TOL only)."""
    try:
        from fastzsl._ext import knn_cpu
    except ImportError:
        return None
    return knn_cpu.knn_direct(Q, R, k, self_offset)


def _assert_tree_is_brute_force(Q, R, k, exclude_self, dtype):
    D, I = fastzsl.knn(Q, R, k, exclude_self=exclude_self, method="kdtree")
    assert D.dtype == dtype and I.dtype == np.int64
    brute = _brute(Q, R, k, 0 if exclude_self else -1)
    if brute is not None:
        np.testing.assert_array_equal(D, brute[0])
        np.testing.assert_array_equal(I, brute[1])
    D_ref, I_ref = numpy_.knn(Q, R, k, 0 if exclude_self else -1)
    assert_knn_equal(D, I, D_ref, I_ref, **TOL[dtype])
    if exclude_self:
        assert not (I == np.arange(len(R))[:, None]).any(), "a point is its own neighbour"
    return D, I


@pytest.mark.parametrize("n_ref,n_q,d,k", [(2000, 300, 3, 10), (700, 50, 8, 1),
                                           (40, 33, 2, 40), (3000, 100, 1, 7)])
def test_kdtree_equals_brute_force(dtype, rng, n_ref, n_q, d, k):
    R, Q = _data(rng, n_ref, n_q, d, dtype)
    _assert_tree_is_brute_force(Q, R, k, False, dtype)


@pytest.mark.parametrize("k", [1, 6, 30, 299])
def test_kdtree_exclude_self_with_duplicates_and_lattice_ties(dtype, rng, k):
    X = rng.normal(size=(150, 4)).astype(dtype)
    X = np.concatenate([X, X[:100], X[:50]])  # triplicates and duplicates: k = n - 1 at 299
    _assert_tree_is_brute_force(X, X, k, True, dtype)
    lattice = rng.integers(0, 4, size=(600, 3)).astype(dtype)  # ties at the k-th distance
    _assert_tree_is_brute_force(lattice, lattice, min(k, 599), True, dtype)
    _assert_tree_is_brute_force(lattice[:40] + dtype.type(0.5), lattice, min(k, 600), False,
                                dtype)


def test_kdtree_near_ties_are_ranked_by_the_kernels_distance(dtype, rng):
    """Points on a sphere around the query (distances equal up to rounding, ordered
    differently by cKDTree's arithmetic) and tiny offsets: re-ranked exactly."""
    angles = rng.uniform(0, 2 * np.pi, size=500)
    R = np.c_[np.cos(angles), np.sin(angles)] * 3.0
    R = np.r_[R, R + 1e-7, np.zeros((3, 2))].astype(dtype)
    Q = np.zeros((4, 2), dtype=dtype)
    for k in (1, 3, 4, 50, 700):
        _assert_tree_is_brute_force(Q, R, k, False, dtype)


def test_auto_picks_the_tree_only_for_low_dimensions_and_no_named_backend(rng):
    from fastzsl.neighbors import KDTREE_MAX_DIM, KDTREE_MIN_N, ExactIndex
    low = rng.normal(size=(KDTREE_MIN_N, KDTREE_MAX_DIM))
    assert ExactIndex(low).method == "kdtree"
    assert ExactIndex(low, backend="numpy").method == "exact"
    assert ExactIndex(low[:-1]).method == "exact"
    assert ExactIndex(rng.normal(size=(KDTREE_MIN_N, KDTREE_MAX_DIM + 1))).method == "exact"
    assert fastzsl.LoOP(n_neighbors=5).fit(low).knn_method_ == "kdtree"
    assert fastzsl.LoOP(n_neighbors=5, knn="exact").fit(low).knn_method_ == "exact"


def test_kdtree_rerank_of_every_backend(dtype, rng, backend):
    """Each backend's re-rank (the NumPy one where the extension is not built) sums in
    dimension order like the kernels: the tree then gives the brute-force answer."""
    from fastzsl.neighbors import KDTreeSearch
    kernels = fastzsl.backends.get_backend(backend)
    if kernels.rerank is None:
        pytest.skip(f"the {backend} backend has no re-rank")
    X = rng.integers(0, 3, size=(400, 5)).astype(dtype)
    X[:, 0] += rng.normal(size=400).astype(dtype)
    want = fastzsl.knn(X, X, 9, exclude_self=True, method="kdtree")
    got = KDTreeSearch(X, rerank=kernels.rerank).search_all(X, 9, exclude_self=True)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


# ---------------------------------------------------------------- few queries (Cython split path)
@pytest.mark.parametrize("n_jobs", [1, 2, 3])
@pytest.mark.parametrize("n_q,k", [(1, 1), (1, 20), (5, 7), (9, 60), (16, 3), (100, 20),
                                 (256, 5), (257, 5)])
def test_few_queries_split_across_threads_are_bit_identical(dtype, rng, n_jobs, n_q, k):
    """Few queries (up to SPLIT_MAX_QUERIES = 256; 257 take the query blocks) split the
    reference across threads and merge their lists: the direct kernel's answer bit for bit,
    with the index's cached norms or without, duplicates (more than a list holds) spread
    over several tiles, and a self offset."""
    knn_cpu = pytest.importorskip("fastzsl._ext.knn_cpu")
    R = rng.normal(size=(9000, 24)).astype(dtype)
    R[3000:3100] = R[0]
    R[8000:8090] = R[0]
    Q = np.r_[R[:1], rng.normal(size=(n_q, 24)).astype(dtype)][:n_q]
    index = fastzsl.ExactIndex(R, method="exact")
    for offset in (-1, 0):
        want = knn_cpu.knn_direct(Q, R, k, offset)
        with fastzsl.backends.thread_limits(n_jobs, backend="cython"):
            got = [knn_cpu.knn(Q, R, k, offset),
                   knn_cpu.knn(Q, R, k, offset, knn_cpu.reference_norms(R))]
            if offset < 0:
                got.append(index.search(Q, k))
        for D, I in got:
            np.testing.assert_array_equal(D, want[0])
            np.testing.assert_array_equal(I, want[1])


def test_exact_index_reference_is_read_only(rng):
    R = rng.normal(size=(50, 3))
    index = fastzsl.ExactIndex(R)
    with pytest.raises(ValueError, match="read-only"):
        index.reference[0, 0] = 1.0
    assert R.flags.writeable  # the caller's array is left alone


def test_kdtree_chunked_search_in_tree_order_equals_one_call(rng, monkeypatch):
    from fastzsl import neighbors
    X = rng.integers(0, 5, size=(500, 3)).astype(np.float64)
    X[:, 0] += rng.normal(size=500)
    want = [fastzsl.knn(X, X, 7, exclude_self=True, method="kdtree"),
            fastzsl.knn(X[:80] + 0.5, X, 7, method="kdtree")]
    monkeypatch.setattr(neighbors._kdtree, "TREE_CHUNK", 64)
    got = [fastzsl.knn(X, X, 7, exclude_self=True, method="kdtree", progress=True),
           fastzsl.knn(X[:80] + 0.5, X, 7, method="kdtree")]
    for (D1, I1), (D2, I2) in zip(want, got):
        np.testing.assert_array_equal(D1, D2)
        np.testing.assert_array_equal(I1, I2)
    _assert_tree_is_brute_force(X, X, 7, True, np.dtype(np.float64))


def test_unit_rows_equal_numpy_reference(backend, dtype, rng):
    """A backend's cosine transform (KernelSet.unit_rows) against the NumPy reference on the
    same rows. Norms summed in another order agree within (d + 1) u' relative (u' = 2^-53;
    sums of d positive squares, then a square root), so after the division float64 results
    agree within (d + 2) u' relative, and float32 results (values that close, rounded once)
    within one unit in the last place; rows of zeros are flagged and stay zeros."""
    from fastzsl.backends import resolve
    from fastzsl.neighbors._metrics import _unit_rows_reference
    unit_rows = resolve(backend).unit_rows
    if unit_rows is None:
        pytest.skip(f"backend {backend!r} has no unit_rows (the NumPy reference serves it)")
    n, d = 2000, 300
    X = rng.normal(size=(n, d)) * np.exp(rng.uniform(-30, 30, size=(n, 1)))  # norms e^+-30
    X[rng.uniform(size=(n, d)) < 0.3] = 0  # sparse rows too
    X[[3, 1500]] = 0
    X = X.astype(dtype)
    U, zero = unit_rows(X)
    U_ref, zero_ref = _unit_rows_reference(X, np)
    assert U.dtype == dtype and U.shape == X.shape
    np.testing.assert_array_equal(zero, zero_ref)
    assert zero.sum() == 2 and (U[zero] == 0).all()
    if dtype == np.float32:
        assert (np.abs(U.astype(np.float64) - U_ref) <= np.spacing(np.abs(U_ref))).all()
    else:
        np.testing.assert_allclose(U, U_ref, rtol=(d + 2) * 2.0**-53, atol=0)
    # a strided view (copied to contiguous rows first): the same rows
    np.testing.assert_array_equal(unit_rows(X[::7])[0], U[::7])
