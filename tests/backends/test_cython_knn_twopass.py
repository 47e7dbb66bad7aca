"""Adversarial cases for the two-pass exact kNN of the cython backend (a GEMM screen, then
exact re-ranking).

The kernels keep candidates on ||r||^2 - 2 q.r computed with BLAS and re-rank the survivors
by direct differences; a margin too small would silently drop true neighbours. Every case
checks the result against the NumPy reference (within the usual tolerances, neighbour sets
up to ties) and bit for bit against the direct kernel ``knn_direct`` (exact differences,
no GEMM) and, when available, the numba backend (the same direct kernel); self-searches
also check the symmetric self-join ``knn_self`` bit for bit.
"""
import platform

import numpy as np
import pytest

import fastzsl
from fastzsl._platform import simd_flags
from fastzsl.backends import _knn_screen, numpy_
from fastzsl.testing import TOL, assert_knn_equal, backend_is_available

knn_cpu = pytest.importorskip("fastzsl._ext.knn_cpu", reason="cython extension not built")
from fastzsl.backends import cython_  # noqa: E402 (after the skip: needs the extension)

# Query blocks hold min(1024, ceil(n_q / (4 threads))) queries, at least 8; reference tiles
# hold 262144 / block rows (half for float64): e.g. 2048 queries on 2 threads make blocks of
# 256 and tiles of 1024 (512) rows, which the larger sizes below straddle.
EDGE_SIZES = [(1, 1), (127, 255), (128, 256), (129, 257), (255, 511), (256, 512), (257, 513),
              (130, 1025), (3, 2049), (2048, 1023), (2048, 1025), (2047, 2049)]
# The self-join's blocks hold 256 rows; 513..768 rows make an odd number of blocks.
SELF_SIZES = [1, 2, 255, 256, 257, 600, 1024, 1100]


def _check(Q, R, k, self_offset=-1):
    dtype = Q.dtype
    D, I = knn_cpu.knn(Q, R, k, self_offset)
    assert D.dtype == dtype and I.dtype == np.int64 and D.shape == I.shape == (len(Q), k)
    D_ref, I_ref = numpy_.knn(Q, R, k, self_offset)
    assert_knn_equal(D, I, D_ref, I_ref, **TOL[dtype])
    D_dir, I_dir = knn_cpu.knn_direct(Q, R, k, self_offset)
    np.testing.assert_array_equal(D, D_dir)
    np.testing.assert_array_equal(I, I_dir)
    # the backend's entry point: float64 through the float32 screen, the same bits
    D_s, I_s = cython_.knn(Q, R, k, self_offset, cython_.prepare(R))
    assert D_s.dtype == dtype
    np.testing.assert_array_equal(D_s, D_dir)
    np.testing.assert_array_equal(I_s, I_dir)
    if backend_is_available("numba"):
        from fastzsl.backends.numba.knn import knn as numba_knn
        D_nb, I_nb = numba_knn(Q, R, k, self_offset)
        np.testing.assert_array_equal(D, D_nb)
        np.testing.assert_array_equal(I, I_nb)
    if self_offset >= 0:
        own = np.arange(len(Q))[:, None] + self_offset
        assert not (I == own).any(), "a point is its own neighbour"
    if self_offset == 0 and Q is R:
        joined = knn_cpu.knn_self(Q, k)
        assert joined is not None, "knn_self declined a search it can do"
        np.testing.assert_array_equal(joined[0], D)
        np.testing.assert_array_equal(joined[1], I)
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


@pytest.mark.parametrize("k,first", [(5, 32), (40, 64)])
@pytest.mark.parametrize("past", [-1, 0, 1, 40])
def test_references_around_the_first_tile(dtype, rng, k, first, past):
    """Pass 1's first reference tile is as long as a list (k + 8 at d = 3, in whole panels
    of 32: ``first``); references ending just before, at and after it, with exact ties
    (a grid) and each query excluding itself, some inside the first tile, some after it."""
    n_r = first + past
    X = rng.integers(0, 3, size=(n_r, 3)).astype(dtype)
    _check(X[:60], X, min(k, n_r - 1), 0)
    _check(X[first - 10:], X, min(k, n_r - 1), first - 10)


@pytest.mark.parametrize("k", [5, 40])
@pytest.mark.parametrize("n_r", [64, 65, 129, 513, 1024, 1100])
def test_references_across_growing_tiles(dtype, rng, k, n_r):
    """After the first, pass 1's tiles (f32 tiles) grow, each as long as all before it (k =
    5: 32, 32, 64, 128, ..., k = 40: 64, 64, 128, ...), up to the full tile: with 40
    queries a block's full tile holds all of these references. Ties (a grid) spread over
    every tile, queries excluding themselves in early and late tiles."""
    X = rng.integers(0, 6, size=(n_r, 3)).astype(dtype)
    k = min(k, n_r - 1)
    _check(X[:40], X, k, 0)
    _check(X[n_r - 40:], X, k, n_r - 40)
    _check(X[::-1][:40].copy(), X, k)


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


def test_more_near_ties_than_a_rescan_keeps(dtype, rng):
    # float32: 2600 points within the rounding margin of the query's neighbours (more than
    # the 2048 candidates a rescan collects) at lower indices than the true neighbours, so
    # only the direct-scan fallback finds them.
    base = np.full(4, 100.0)
    near = base + rng.integers(1, 3, size=(2600, 4)) * 1e-2
    X = np.concatenate([near, np.repeat(base[None], 10, axis=0),
                        rng.normal(size=(30, 4))]).astype(dtype)
    D, I = _check(X[2600:2610], X, 6)
    assert ((I >= 2600) & (I < 2610)).all() and (D == 0).all()
    _check(X, X, 3, 0)


def test_tiny_values_underflow(dtype, rng):
    # float32 squares of 1e-22 underflow in the gemm; the re-rank is in double.
    X = (rng.normal(size=(600, 12)) * 1e-22).astype(dtype)
    _check(X, X, 5, 0)


def test_huge_values_fall_back_exactly(dtype, rng):
    # Norms near the float32 overflow: the kernel must not lose neighbours to inf - inf.
    big = 1e18 if dtype == np.float32 else 1e150
    X = (rng.normal(size=(300, 10)) * big).astype(dtype)
    _check(X[:], X, 4, 0)  # (a view: _check would ask knn_self, which must decline here)
    assert knn_cpu.knn_self(X, 4) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("where", [0, 150, 299])
def test_rows_that_are_not_finite_are_refused_by_the_norms(dtype, rng, bad, where):
    """reference_norms and knn_self decline a row whose norm is not finite wherever it is
    (a NaN before finite rows once slipped through the largest-norm search), and knn's
    answers stay the direct kernel's (such rows are never neighbours; the public API
    refuses them before)."""
    X = rng.normal(size=(300, 6)).astype(dtype)
    X[where, 2] = bad
    assert knn_cpu.reference_norms(X) is None
    assert knn_cpu.knn_self(X, 3) is None
    Q = rng.normal(size=(20, 6)).astype(dtype)
    for got, direct in zip(knn_cpu.knn(Q, X, 4, -1), knn_cpu.knn_direct(Q, X, 4, -1)):
        np.testing.assert_array_equal(got, direct)
    assert not (knn_cpu.knn(Q, X, 4, -1)[1] == where).any()


@pytest.mark.parametrize("n", SELF_SIZES)
def test_self_join_block_edges(dtype, rng, n):
    X = rng.normal(size=(n, 7)).astype(dtype)
    for k in sorted({k for k in (1, 6, n - 1) if 1 <= k <= n - 1}):
        _check(X, X, k, 0)
    # More neighbours than points (the public API refuses it; the kernels pad with inf, -1).
    D, I = knn_cpu.knn_self(X, n + 2)
    D_ref, I_ref = knn_cpu.knn(X, X, n + 2, 0)
    assert np.isinf(D[:, -3:]).all() and (I[:, -3:] == -1).all()
    np.testing.assert_array_equal(D, D_ref)
    np.testing.assert_array_equal(I, I_ref)


def test_self_join_clustered_ties_and_duplicates(dtype, rng):
    # Blocks of near-identical points (near-ties everywhere) plus exact duplicates.
    centres = rng.normal(size=(5, 12)) * 50
    X = (centres[rng.integers(5, size=700)] + rng.normal(size=(700, 12)) * 1e-3).astype(dtype)
    X = np.concatenate([X, X[::3]])
    _check(X, X, 15, 0)


def test_self_join_reports_progress_to_the_end(rng):
    X = rng.normal(size=(1300, 5)).astype(np.float32)
    seen = []
    D, I = knn_cpu.knn_self(X, 3, seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == 1.0
    D_ref, I_ref = knn_cpu.knn(X, X, 3, 0)
    np.testing.assert_array_equal(I, I_ref)


@pytest.mark.parametrize("cuts", [(0, 1, 500, 901), (0, 256, 257, 700, 1000)],
                         ids=["odd ranges", "a block edge"])
def test_self_join_in_pairs_of_row_ranges_gives_the_same_bits(dtype, rng, cuts):
    """SelfJoin: every pair of ranges of a partition once, in any order (here reversed),
    then each range finished: the rows of knn_self, bit for bit (clustered points with
    duplicates, so near-ties cross the ranges' edges; ranges of unequal block counts both
    ways round). Bad ranges and lists are refused."""
    centres = rng.normal(size=(4, 10)) * 20
    X = (centres[rng.integers(4, size=900)] + rng.normal(size=(900, 10))).astype(dtype)
    X = np.concatenate([X, X[::7]])
    D, I = knn_cpu.knn_self(X, 6)
    join = knn_cpu.SelfJoin.open(X, 6)
    ranges = list(zip(cuts, cuts[1:] + (len(X),)))
    lists = [join.new_lists(b - a) for a, b in ranges]
    for a in reversed(range(len(ranges))):
        for b in reversed(range(a, len(ranges))):
            join.pair(ranges[a], ranges[b], lists[a], lists[b])
    for (start, stop), done in zip(ranges, lists):
        Dr, Ir = join.finish((start, stop), done)
        np.testing.assert_array_equal(Dr, D[start:stop])
        np.testing.assert_array_equal(Ir, I[start:stop])
    with pytest.raises(ValueError, match="overlap"):
        join.pair((0, 10), (5, 20), join.new_lists(10), join.new_lists(15))
    for bad in ((0, 0), (-1, 3), (5, len(X) + 1)):
        with pytest.raises(ValueError, match="rows must be"):
            join.finish(bad, join.new_lists(3))
    with pytest.raises(ValueError, match="lists of rows 0..9 must be"):
        join.finish((0, 10), join.new_lists(11))


def test_self_join_declines_over_its_memory_cap(rng, monkeypatch):
    X = rng.normal(size=(500, 5)).astype(np.float32)
    monkeypatch.setattr(knn_cpu, "SELF_JOIN_MAX_BYTES", 1000)
    assert knn_cpu.knn_self(X, 3) is None
    # ... and the public search still answers, through the chunked kernel.
    D, I = fastzsl.knn(X, X, 3, exclude_self=True, backend="cython")
    np.testing.assert_array_equal(I, knn_cpu.knn(X, X, 3, 0)[1])


def test_public_self_search_uses_the_self_join(rng, monkeypatch):
    from fastzsl import neighbors
    X = rng.normal(size=(900, 6)).astype(np.float32)
    calls = []
    real = neighbors._exact._self_join
    monkeypatch.setattr(neighbors._exact, "_self_join", lambda *a: calls.append(1) or real(*a))
    D, I = fastzsl.ExactIndex(X, backend="cython").search(X, 5, exclude_self=True,
                                                          progress=True)
    assert calls, "ExactIndex.search(exclude_self=True) did not use knn_self"
    D_ref, I_ref = knn_cpu.knn(X, X, 5, 0)
    np.testing.assert_array_equal(D, D_ref)
    np.testing.assert_array_equal(I, I_ref)


@pytest.mark.parametrize("name", ["knn", "knn_direct", "knn_self"])
def test_other_dtypes_are_refused(name):
    X = np.ones((4, 3), dtype=np.int64)
    args = (X, 2) if name == "knn_self" else (X, X, 2, -1)
    with pytest.raises(TypeError, match="supports float32 and float64, not int64"):
        getattr(knn_cpu, name)(*args)


# ---------------------------------------------------------------- longer lists at high d
# knn's pass-1 lists hold k + max(8, d sqrt(k) / 48) candidates (knn_twopass.pxi _list_len):
# 67 for k = 20 at d = 512, against 28 before. The margin M grows with d u (Q + R): at
# d = 512 with a large common offset it spans dozens of near-tied rows.
@pytest.mark.parametrize("k", [20, 100])
def test_high_dim_blobs(dtype, k):
    # The benchmark's data at a small size: blobs far from the origin (||x||^2 / the k-th
    # distance ~ 60), many rows within the margin of each query's k-th neighbour.
    from fastzsl.testing import make_blobs
    X, _ = make_blobs(4300, 512, seed=1, dtype=dtype)
    _check(X[4000:], X[:4000], k)
    _check(X[4000:4001], X[:4000], k)  # one query: the split path (2+ threads)


@pytest.mark.parametrize("n_near", [30, 60, 66, 67, 68, 200, 2100])
def test_high_dim_near_ties_around_the_list_length(dtype, rng, n_near):
    # n_near rows all within the float32 margin of each other (squared distance 0.46 +- 0.03
    # at ||x||^2 = 5e6, M ~ 1.2) at LOW indices, so they fill the pass-1 lists first; the
    # true neighbours (squared distance <= 0.05), a duplicate pair among them, come after.
    # Fewer near-ties than the list (67 for k = 20): answered from the lists alone; more:
    # rescanned; more than 2048: the direct scan.
    d, k = 512, 20
    base = np.full(d, 100.0)
    near = base + rng.normal(size=(n_near, d)) * 0.03
    true = base + rng.normal(size=(k - 1, d)) * 0.01
    far = base + rng.normal(size=(500, d))
    R = np.concatenate([near, true, true[:1], far]).astype(dtype)
    Q = np.concatenate([base[None], base[None] + rng.normal(size=(7, d)) * 1e-3]).astype(dtype)
    D, I = _check(Q, R, k)
    if dtype == np.float32:  # the neighbours are the k true rows (ties: lower index first)
        assert ((I >= n_near) & (I < n_near + k)).all()
    _check(Q[:1], R, k)  # the split path
    _check(R[:300], R, k, 0)


# ------------------------------------------------------------- float64 through the float32 screen
def _screen_calls(monkeypatch):
    """Counts the float64 kernel calls the screen falls back to."""
    calls = []
    real = knn_cpu.knn

    class Spy:
        def __getattr__(self, name):
            return getattr(knn_cpu, name)

        def knn(self, Q, R, k, self_offset, prepared=None):
            if Q.dtype == np.float64:
                calls.append(len(Q))
            return real(Q, R, k, self_offset, prepared)
    return Spy(), calls


def test_screen_certifies_typical_queries_without_the_float64_kernel(rng, monkeypatch):
    spy, calls = _screen_calls(monkeypatch)
    R = rng.normal(size=(3000, 40))
    Q = rng.normal(size=(500, 40))
    for self_offset, queries in ((-1, Q), (0, R)):
        D, I = _knn_screen.knn(spy, queries, R, 10, self_offset)
        D_dir, I_dir = knn_cpu.knn_direct(queries, R, 10, self_offset)
        np.testing.assert_array_equal(D, D_dir)
        np.testing.assert_array_equal(I, I_dir)
    assert calls == []


@pytest.mark.parametrize("n_merged", [3, 200])
def test_rows_that_float32_merges_are_answered_by_float64(rng, n_merged, monkeypatch):
    """Twenty reference rows per point, 1e-13 apart (one row in float32), more than the
    screen lists: it cannot order them, fails its certificate, and the float64 kernel
    answers (one by one for a few queries, in one call for many), bit for bit."""
    spy, calls = _screen_calls(monkeypatch)
    base = rng.normal(size=(50, 16))
    R = np.concatenate([base * (1 + 1e-13 * i) for i in range(20)] + [rng.normal(size=(400, 16))])
    Q = base[np.arange(n_merged) % 50] + 1e-9
    D, I = _knn_screen.knn(spy, Q, R, 2, -1)
    D_dir, I_dir = knn_cpu.knn_direct(Q, R, 2, -1)
    np.testing.assert_array_equal(D, D_dir)
    np.testing.assert_array_equal(I, I_dir)
    assert calls == ([1] * n_merged if n_merged <= _knn_screen.FALLBACK_ONE_BY_ONE
                     else [n_merged]), calls


@pytest.mark.parametrize("n,d", [(0, 5), (1, 1), (255, 7), (256, 7), (3001, 50), (40, 0)])
def test_rounded_rows_are_astype_and_reference_norms(rng, n, d):
    """The screen's float32 copy and its norms in one parallel pass: bit for bit NumPy's
    rounding and reference_norms of the rounded rows (one thread below 256 rows there),
    subnormals and values that round to zero included."""
    X = rng.normal(size=(n, d)) * np.exp(rng.uniform(-110, 40, size=(n, 1)))
    X32, prepared = knn_cpu.rounded_rows(X)
    np.testing.assert_array_equal(X32, X.astype(np.float32))
    assert X32.dtype == np.float32 and X32.flags.c_contiguous
    rn, rmax = knn_cpu.reference_norms(X.astype(np.float32))
    np.testing.assert_array_equal(prepared[0], rn)
    assert prepared[0].dtype == np.float32 and prepared[1] == rmax


@pytest.mark.parametrize("bad", [1e39, np.inf, np.nan])
@pytest.mark.parametrize("where", [0, 299])
def test_rounded_rows_beyond_float32_are_refused(rng, bad, where):
    X = rng.normal(size=(300, 4))
    X[where, 1] = bad
    with np.errstate(over="ignore"):
        expected = X.astype(np.float32)
    X32, prepared = knn_cpu.rounded_rows(X)
    assert prepared is None
    np.testing.assert_array_equal(X32, expected)


def test_screen_beyond_float32_range_and_old_prepared_form(rng):
    """Values beyond float32's range run the float64 kernel; a prepared value in the old
    form (the float64 norms alone, as a pickled index may hold) still works."""
    R = rng.normal(size=(300, 8)) * 1e39
    Q = rng.normal(size=(20, 8)) * 1e39
    D, I = cython_.knn(Q, R, 5, -1, cython_.prepare(R))
    D_dir, I_dir = knn_cpu.knn_direct(Q, R, 5, -1)
    np.testing.assert_array_equal(I, I_dir)
    np.testing.assert_array_equal(D, D_dir)
    R = rng.normal(size=(300, 8))
    D, I = cython_.knn(R[:20], R, 5, 0, knn_cpu.reference_norms(R))
    D_dir, I_dir = knn_cpu.knn_direct(R[:20], R, 5, 0)
    np.testing.assert_array_equal(I, I_dir)
    np.testing.assert_array_equal(D, D_dir)


# ------------------------------------------ the float32 screen in one kernel (knn_screen32)
# Shapes of the query-block path (more than 256 queries): lists from the first, grown and
# last tiles, d from 1 to 300 (past the AVX2 tiles' 256: BLAS products under "auto").
SCREEN32_SIZES = [(600, 50, 1), (700, 3001, 7), (2048, 1025, 16), (1000, 5000, 128),
                  (600, 2000, 300)]


def _screen32_data(rng, kind, n_q, n_r, d):
    if kind == "grid":  # exact ties at every distance
        return (rng.integers(-2, 3, (n_q, d)).astype(float),
                rng.integers(-2, 3, (n_r, d)).astype(float))
    scale = 1.0 if kind == "normal" else 10.0 ** rng.uniform(-20, 15, size=(n_r, 1))
    R = rng.normal(size=(n_r, d)) * scale
    Q = R[rng.integers(0, n_r, n_q)] + rng.normal(size=(n_q, d)) * 1e-3 * np.abs(R).max()
    return (rng.normal(size=(n_q, d)) if kind == "normal" else Q), R


@pytest.mark.parametrize("n_q,n_r,d", SCREEN32_SIZES)
@pytest.mark.parametrize("kind", ["normal", "grid", "scales"])
def test_screen32_rows_are_the_float64_kernels(rng, f32_tiles, n_q, n_r, d, kind):
    """Every row knn_screen32 answers is the float64 kernel's, bit for bit (ties at the
    k-th distance and the own row left out included), its pass 1 on each tile kernel or on
    BLAS (the tile rounded into rows); typical rows all get answered."""
    Q, R = _screen32_data(rng, kind, n_q, n_r, d)
    for queries, k, self_offset in ((Q, 1, -1), (Q, 10, -1), (R[:n_q], 10, 0)):
        assert knn_cpu.screen32_applies(len(queries), n_r, k, d)
        D, I, failed = knn_cpu.knn_screen32(queries, R, k, self_offset,
                                            knn_cpu.rounded_norms(R))
        assert failed.dtype == bool and failed.shape == (len(queries),)
        D_dir, I_dir = knn_cpu.knn_direct(queries, R, k, self_offset)
        np.testing.assert_array_equal(D[~failed], D_dir[~failed])
        np.testing.assert_array_equal(I[~failed], I_dir[~failed])
        if kind == "normal":
            assert not failed.any()
        D, I = cython_.knn(queries, R, k, self_offset)  # the failed rows answered too
        np.testing.assert_array_equal(D, D_dir)
        np.testing.assert_array_equal(I, I_dir)


@pytest.mark.parametrize("n_merged", [10, 600])
def test_screen32_reports_rows_that_float32_merges(rng, n_merged, monkeypatch):
    """Twenty reference rows per point 1e-13 apart (one row in float32), more than a list
    holds: knn_screen32 reports those queries failed, and the one-shot search answers them
    by the float64 kernel (one by one for a few, in one call for many), bit for bit."""
    spy, calls = _screen_calls(monkeypatch)
    base = rng.normal(size=(50, 16))
    R = np.concatenate([base * (1 + 1e-13 * i) for i in range(20)]
                       + [rng.normal(size=(400, 16))])
    Q = rng.normal(size=(600, 16)) * 3
    Q[:n_merged] = base[np.arange(n_merged) % 50] + 1e-9
    D, I, failed = knn_cpu.knn_screen32(Q, R, 2, -1, knn_cpu.rounded_norms(R))
    assert failed[:n_merged].all()
    D, I = _knn_screen.knn(spy, Q, R, 2, -1)
    D_dir, I_dir = knn_cpu.knn_direct(Q, R, 2, -1)
    np.testing.assert_array_equal(D, D_dir)
    np.testing.assert_array_equal(I, I_dir)
    n_failed = int(failed.sum())
    assert calls == ([1] * n_failed if n_failed <= _knn_screen.FALLBACK_ONE_BY_ONE
                     else [600]), calls


def test_one_shot_screen_makes_no_float32_copy(rng, monkeypatch):
    """A one-shot float64 search of the query-block path rounds the reference tile by tile
    (knn_screen32): no float32 copy, no float64 kernel call."""
    spy, calls = _screen_calls(monkeypatch)
    copies = []
    monkeypatch.setattr(type(spy), "rounded_rows", lambda self, X: copies.append(1),
                        raising=False)
    R = rng.normal(size=(3000, 40))
    Q = rng.normal(size=(700, 40))
    assert knn_cpu.screen32_applies(700, 3000, 10, 40)
    D, I = _knn_screen.knn(spy, Q, R, 10, -1)
    D_dir, I_dir = knn_cpu.knn_direct(Q, R, 10, -1)
    np.testing.assert_array_equal(D, D_dir)
    np.testing.assert_array_equal(I, I_dir)
    assert copies == [] and calls == []


def test_float64_index_makes_its_float32_copy_only_for_few_queries(rng):
    """An index over float64 rows searches many queries by knn_screen32 without a float32
    copy; the first search of a few (the split path) makes it, later ones reuse it; every
    answer the float64 kernel's, bit for bit."""
    R = rng.normal(size=(3000, 24))
    prepared = cython_.prepare(R)
    assert isinstance(prepared, _knn_screen.ScreenPrepared)
    for n_q in (700, 5, 600, 3):
        Q = rng.normal(size=(n_q, 24))
        D, I = cython_.knn(Q, R, 10, -1, prepared)
        D_dir, I_dir = knn_cpu.knn_direct(Q, R, 10, -1)
        np.testing.assert_array_equal(D, D_dir)
        np.testing.assert_array_equal(I, I_dir)
        if n_q == 700:
            assert prepared.reference32 is None
        if n_q == 5:
            copy = prepared.reference32
            np.testing.assert_array_equal(copy, R.astype(np.float32))
    assert prepared.reference32 is copy


def test_screen32_declines_norms_too_large_for_float32_products(rng):
    """Rows whose squared norms pass float32's range (here about 1e38) but not their
    values: knn_screen32 declines (None) and the one-shot search runs the float64 kernel."""
    R = rng.normal(size=(3000, 8)) * 1e18
    Q = rng.normal(size=(700, 8)) * 1e18
    prepared32 = knn_cpu.rounded_norms(R)
    if prepared32 is not None:
        assert knn_cpu.knn_screen32(Q, R, 5, -1, prepared32) is None
    D, I = cython_.knn(Q, R, 5, -1)
    D_dir, I_dir = knn_cpu.knn_direct(Q, R, 5, -1)
    np.testing.assert_array_equal(I, I_dir)
    np.testing.assert_array_equal(D, D_dir)


@pytest.mark.parametrize("n,d", [(0, 5), (1, 1), (255, 7), (256, 7), (3001, 50), (40, 0)])
def test_rounded_norms_are_those_of_the_rounded_rows(rng, n, d):
    """knn_screen32's norms without the copy: bit for bit rounded_rows' (subnormals and
    values that round to zero included), None beyond float32's range."""
    X = rng.normal(size=(n, d)) * np.exp(rng.uniform(-110, 40, size=(n, 1)))
    _, expected = knn_cpu.rounded_rows(X)
    rn, rmax = knn_cpu.rounded_norms(X)
    np.testing.assert_array_equal(rn, expected[0])
    assert rn.dtype == np.float32 and rmax == expected[1]
    if n and d:
        X[n // 2, 0] = 1e39
        assert knn_cpu.rounded_norms(X) is None


def test_self_join_with_many_pairs_per_round_gives_the_same_bits(rng):
    """40k rows (157 blocks: rounds of 79 pairs, shared among the threads; and ranges of
    59 / 59 / 40 blocks): the whole join and the join in pairs of ranges equal knn."""
    X = rng.normal(size=(40_000, 4)).astype(np.float32)
    D_ref, I_ref = knn_cpu.knn(X, X, 5, 0)
    D, I = knn_cpu.knn_self(X, 5)
    np.testing.assert_array_equal(D, D_ref)
    np.testing.assert_array_equal(I, I_ref)
    join = knn_cpu.SelfJoin.open(X, 5)
    ranges = [(0, 15_000), (15_000, 30_000), (30_000, 40_000)]
    lists = [join.new_lists(b - a) for a, b in ranges]
    for a in range(3):
        for b in range(a, 3):
            join.pair(ranges[a], ranges[b], lists[a], lists[b])
    for (start, stop), done in zip(ranges, lists):
        Dr, Ir = join.finish((start, stop), done)
        np.testing.assert_array_equal(Dr, D_ref[start:stop])
        np.testing.assert_array_equal(Ir, I_ref[start:stop])


@pytest.mark.parametrize("n_q,n_r", [(1, 1), (11, 31), (12, 32), (13, 33), (130, 1025),
                                     (2047, 2049)])
def test_every_pass1_route_gives_the_same_bits(f32_tiles, rng, n_q, n_r):
    """float32 queries and references through BLAS, the vector tiles (AVX-512, AVX2) and
    their portable form: the same neighbours and distances as the direct kernel (pass 2
    re-ranks exactly; the tiles only have to stay within the pass-1 bound), at block, panel
    and micro-tile edges (12 or 6 query rows, 32 reference rows)."""
    Q = rng.standard_normal((n_q, 50)).astype(np.float32)
    R = rng.standard_normal((n_r, 50)).astype(np.float32)
    _check(Q, R, min(5, n_r))
    if n_q == n_r > 1:
        _check(R, R, min(5, n_r - 1), self_offset=0)


@pytest.mark.parametrize("kernel", ["portable", "avx512", "avx2"])
@pytest.mark.parametrize("na,n,d", [(1, 1, 1), (11, 33, 7), (12, 32, 50), (25, 65, 128),
                                    (7, 100, 1), (30, 40, 300), (13, 20, 1100)])
def test_tile_products_stay_within_the_gemm_bound(kernel, na, n, d, dtype, rng):
    """The tiles' dot products (float32: pass 1's; float64: the Gaussian kernel's) against
    exact ones: within gamma_d sum |a_t r_t| (any summation order, FMA or not), the bound
    pass 1's margin and the Gaussian bound are derived from; every row count up to a
    micro-tile (12 rows AVX-512, 6 AVX2) and panels cut short, and d past one pass of
    components (FZ_TILE_KC: 512 float32, 256 float64). The reference is float64 for float32
    inputs (its own error is far below the bound) and long double for float64 ones, whose
    rounding to float64 adds u' sum |a_t r_t|."""
    from fastzsl.testing import assert_within_bound, matmul_error_bound, unit_roundoff
    if kernel != "portable" and kernel not in knn_cpu.tile_kernels():
        pytest.skip(f"this CPU has no {kernel}")
    A = rng.standard_normal((na, d)).astype(dtype)
    R = rng.standard_normal((n, d)).astype(dtype)
    got = knn_cpu.tile_products(A, R, kernel)
    wide = np.float64 if dtype == np.float32 else np.longdouble
    exact = A.astype(wide) @ R.T.astype(wide)
    bound = matmul_error_bound(A, R.T, dtype)
    if dtype == np.float64:
        bound = bound + unit_roundoff(np.float64) * (np.abs(A) @ np.abs(R.T))
    assert got.shape == (na, n) and got.dtype == dtype
    assert_within_bound(got, exact, bound, f"{np.dtype(dtype).name} tiles")


@pytest.mark.parametrize("na,n,d", [(6, 32, 50), (25, 65, 128), (13, 20, 1100)])
def test_the_avx2_and_avx512_tiles_form_the_same_products(na, n, d, dtype, rng):
    """Both vector micro-kernels sum each product by FMAs in component order, so they agree
    bit for bit (only where the CPU has both)."""
    if knn_cpu.tile_kernels() != ("avx512", "avx2"):
        pytest.skip("this CPU lacks AVX-512F or AVX2")
    A = rng.standard_normal((na, d)).astype(dtype)
    R = rng.standard_normal((n, d)).astype(dtype)
    np.testing.assert_array_equal(knn_cpu.tile_products(A, R, "avx2"),
                                  knn_cpu.tile_products(A, R, "avx512"))


def test_the_auto_tiles_are_the_widest_the_cpu_has():
    """tile_kernels() are the micro-kernels the CPU's flags allow (AVX-512F; AVX2 with FMA),
    "auto" picks the widest (else BLAS), and a vector mode the CPU lacks is refused, naming
    it."""
    flags = simd_flags()
    kinds = knn_cpu.tile_kernels()
    if flags is not None and platform.machine() in ("x86_64", "AMD64"):
        assert kinds == tuple(k for k, needs in (("avx512", {"avx512f"}),
                                                  ("avx2", {"avx2", "fma"}))
                              if needs <= flags)
    with knn_cpu.using_f32_tiles("auto") as kind:
        assert kind == (kinds[0] if kinds else "blas")
        for kernel in ("avx512", "avx2"):
            if kernel not in kinds:
                with pytest.raises(ValueError, match=f"no {kernel.upper()} with FMA"):
                    knn_cpu.set_f32_tiles(kernel)
                assert knn_cpu.f32_tiles_kind() == kind  # left as it was
    with pytest.raises(ValueError, match="kernel must be"):
        knn_cpu.tile_products(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32),
                              True)


def test_using_f32_tiles_restores_the_mode_before():
    with knn_cpu.using_f32_tiles("portable"):
        with knn_cpu.using_f32_tiles("blas") as kind:
            assert kind == "blas" and knn_cpu.f32_tiles_mode() == "blas"
        assert knn_cpu.f32_tiles_mode() == "portable"
        with pytest.raises(ValueError, match="mode must be"):
            with knn_cpu.using_f32_tiles("fast"):
                pass
        assert knn_cpu.f32_tiles_mode() == "portable"


def test_an_unknown_f32_tile_mode_is_refused():
    with pytest.raises(ValueError, match="FASTZSL_TILES"):
        knn_cpu.set_f32_tiles("fast")


def test_the_tile_mode_comes_from_fastzsl_tiles_or_its_first_name():
    """FASTZSL_TILES sets the products' route at import; FASTZSL_F32_TILES, its first name,
    still does where FASTZSL_TILES is unset or empty."""
    assert knn_cpu.tile_mode_from_env({}) == "auto"
    assert knn_cpu.tile_mode_from_env({"FASTZSL_TILES": " BLAS "}) == "blas"
    assert knn_cpu.tile_mode_from_env({"FASTZSL_F32_TILES": "portable"}) == "portable"
    assert knn_cpu.tile_mode_from_env({"FASTZSL_TILES": "blas",
                                       "FASTZSL_F32_TILES": "portable"}) == "blas"
    assert knn_cpu.tile_mode_from_env({"FASTZSL_TILES": "",
                                       "FASTZSL_F32_TILES": "portable"}) == "portable"


@pytest.mark.parametrize("kernel", ["portable", "avx2"])
@pytest.mark.parametrize("nq,n,d", [(1, 1, 1), (2, 5, 7), (3, 6, 8), (4, 3, 9), (5, 35, 16),
                                    (10, 101, 50), (16, 37, 300)])
def test_dot_products_stay_within_the_gemm_bound(kernel, nq, n, d, rng):
    """fz_f32_dots (the split path's products for a few float32 queries: eight components
    per FMA, the lanes added up at the end, the last d % 8 by masked loads) against exact
    ones: within gamma_d sum |q_t r_t|, the bound of any summation order; every block
    remainder (4 references, 3 queries) and tail length."""
    from fastzsl.testing import assert_within_bound, matmul_error_bound
    if kernel == "avx2" and "avx2" not in knn_cpu.tile_kernels():
        pytest.skip("this CPU has no AVX2 with FMA")
    Q = rng.standard_normal((nq, d)).astype(np.float32)
    R = rng.standard_normal((n, d)).astype(np.float32)
    got = knn_cpu.dot_products(Q, R, kernel)
    exact = Q.astype(np.float64) @ R.T.astype(np.float64)
    assert got.shape == (nq, n) and got.dtype == np.float32
    assert_within_bound(got, exact, matmul_error_bound(Q, R.T, np.float32),
                        f"fz_f32_dots ({kernel})")


@pytest.mark.parametrize("mode", ["auto", "blas"])
@pytest.mark.parametrize("d", [1, 7, 9, 50])
@pytest.mark.parametrize("n_q", [2, 3, 5, 16, 17])
def test_few_float32_queries_by_the_dots_equal_the_direct_kernel(mode, d, n_q, rng):
    """The split path's products for 2-16 float32 queries (fz_f32_dots where the f32 tiles
    run; BLAS under "blas", and from 17 queries): the direct kernel's answer bit for bit,
    with duplicates of a query spread over several tiles, grid ties and a self offset."""
    R = rng.integers(-2, 3, size=(5000, d)).astype(np.float32)
    R[:, 0] += rng.standard_normal(5000).astype(np.float32)
    R[1000:1030] = R[0]
    R[4000:4030] = R[0]
    Q = np.r_[R[:1], rng.standard_normal((n_q, d)).astype(np.float32)][:n_q]
    with knn_cpu.using_f32_tiles(mode):
        _check(Q, R, 7)
        _check(R[:n_q], R, 7, self_offset=0)
