"""fastzsl.faiss against faiss itself (a faiss-style script run on both), and against an
exact float64 NumPy reference."""
import numpy as np
import pytest

from fastzsl import faiss as fz
from fastzsl.testing import gamma

D_WIDTH = 24
U32 = 2.0 ** -24  # float32 unit roundoff


def _data(seed=0, n=700, nq=40, d=D_WIDTH):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)).astype(np.float32),
            rng.normal(size=(nq, d)).astype(np.float32))


def _reference(xq, xb, metric):
    """Exact scores in float64 (float32 inputs: each product and difference is exact, the
    sums' error is ~d 2^-53 of their size) and the stable order: ties to the lower index."""
    q, b = xq.astype(np.float64), xb.astype(np.float64)
    if metric == fz.METRIC_L2:
        scores = ((q[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
        return scores, np.argsort(scores, axis=1, kind="stable")
    scores = q @ b.T
    return scores, np.argsort(-scores, axis=1, kind="stable")


def _tolerance(xq, xb, metric):
    """faiss's float32 error bound per query: it computes |x|^2 + |y|^2 - 2 x.y (L2) or x.y
    (IP) with float32 GEMM, each within about (d + 2) u (|x|^2 + |y|^2) resp. d u |x||y|;
    twice that for safety, plus fastzsl's one float32 rounding (far smaller)."""
    qn = np.linalg.norm(xq.astype(np.float64), axis=1)
    bn = np.linalg.norm(xb.astype(np.float64), axis=1).max()
    d = xq.shape[1]
    if metric == fz.METRIC_L2:
        return 2 * (d + 2) * U32 * (qn ** 2 + bn ** 2)
    return 2 * (d + 2) * U32 * qn * bn


def faiss_style_script(faiss, xb, xq, k):
    """What a faiss user writes; run unchanged on ``faiss`` and on ``fastzsl.faiss``."""
    out = {}
    for name, make in (("l2", faiss.IndexFlatL2), ("ip", faiss.IndexFlatIP)):
        index = make(xb.shape[1])
        out[name, "fresh"] = (index.d, index.ntotal, index.is_trained)
        index.add(xb[:300])
        out[name, "first"] = index.search(xq, k)
        index.add(xb[300:].astype(np.float64))  # faiss converts other floats
        out[name, "ntotal"] = index.ntotal
        out[name, "all"] = index.search(xq, k)
        index.reset()
        out[name, "reset"] = index.ntotal
        index.add(xb[:3])
        out[name, "short"] = index.search(xq[:5], 6)  # fewer rows than k
    out["knn", "l2"] = faiss.knn(xq, xb, k)
    out["knn", "ip"] = faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
    return out


def _assert_same_neighbours(D_ours, I_ours, D_theirs, I_theirs, xq, xb, metric):
    """Equal wherever faiss's float32 error cannot reorder: any neighbour of ours that
    faiss lists elsewhere (or not at all) is within faiss's error of where faiss has it."""
    scores, _ = _reference(xq, xb, metric)
    tol = _tolerance(xq, xb, metric)[:, None]
    error = np.abs(D_ours.astype(np.float64) - D_theirs)
    assert (error < tol).all(), (error / tol).max()
    differ = I_ours != I_theirs
    assert differ.mean() < 0.05, "more than the odd near-tie differs"
    rows, cols = np.nonzero(differ)
    gap = np.abs(scores[rows, I_ours[rows, cols]] - scores[rows, I_theirs[rows, cols]])
    assert (gap < 2 * tol[rows, 0]).all()


def test_a_faiss_script_gives_faiss_answers():
    faiss = pytest.importorskip("faiss", reason="faiss-cpu is the oracle")
    xb, xq = _data()
    k = 10
    theirs = faiss_style_script(faiss, xb, xq, k)
    ours = faiss_style_script(fz, xb, xq, k)
    assert theirs.keys() == ours.keys()
    for key in theirs:
        if not isinstance(theirs[key], tuple) or not hasattr(theirs[key][0], "dtype"):
            assert ours[key] == theirs[key], key
            continue
        (D_ours, I_ours), (D_theirs, I_theirs) = ours[key], theirs[key]
        assert D_ours.dtype == D_theirs.dtype == np.float32, key
        assert I_ours.dtype == I_theirs.dtype == np.int64, key
        assert D_ours.shape == D_theirs.shape and I_ours.shape == I_theirs.shape, key
        metric = fz.METRIC_INNER_PRODUCT if "ip" in key else fz.METRIC_L2
        rows = xb[:300] if key[1] == "first" else xb[:3] if key[1] == "short" else xb
        queries = xq[:5] if key[1] == "short" else xq
        found = min(D_ours.shape[1], rows.shape[0])
        # the padding beyond ntotal: faiss's exact values
        np.testing.assert_array_equal(I_ours[:, found:], I_theirs[:, found:])
        np.testing.assert_array_equal(D_ours[:, found:], D_theirs[:, found:])
        _assert_same_neighbours(D_ours[:, :found], I_ours[:, :found], D_theirs[:, :found],
                                I_theirs[:, :found], queries, rows, metric)


@pytest.mark.parametrize("make", [fz.IndexFlatL2, fz.IndexFlatIP])
def test_results_are_the_exact_ranking_with_ties_to_the_lower_index(make):
    xb, xq = _data(seed=1, n=200)
    xb = np.r_[xb, xb[:50], 3 * xb[50:60]]  # duplicates (ties), then larger norms (IP's M grows)
    index = make(D_WIDTH)
    index.add(xb[:200])
    index.search(xq, 5)  # a cached index, which the next add must refresh
    index.add(xb[200:])
    D, I = index.search(xq, 20)
    scores, order = _reference(xq, xb, index.metric_type)
    np.testing.assert_array_equal(I, order[:, :20])
    # One float32 rounding of a double score; inner products come from the augmented
    # distance M^2 + |q|^2 - |q' - b'|^2 in double, whose cancellation leaves at most
    # gamma_(d+4) (M^2 + |q|^2) times a few (two sums, the halving): 4 gamma_(d+4) below.
    big = max(float((A.astype(np.float64) ** 2).sum(axis=1).max()) for A in (xb, xq))
    np.testing.assert_allclose(D, np.take_along_axis(scores, order[:, :20], axis=1),
                               rtol=2 * U32, atol=4 * gamma(D_WIDTH + 4, np.float64) * 2 * big)
    # the duplicates tie exactly and both copies are listed, lower index first
    top = order[:, :20]
    tied = np.isin(top, np.arange(50)) & np.isin(top + 200, top)
    assert tied.sum() >= 5
    np.testing.assert_array_equal(fz.knn(xq, xb, 7, metric=index.metric_type)[1], order[:, :7])


def test_search_after_add_equals_a_fresh_index_and_rows_are_copied():
    xb, xq = _data(seed=2, n=120)
    grown = fz.IndexFlatL2(D_WIDTH)
    for part in np.array_split(xb, 4):
        grown.add(part)
        grown.search(xq, 3)
    rows = xb.copy()
    fresh = fz.IndexFlatL2(D_WIDTH)
    fresh.add(rows)
    rows[:] = 0  # the caller's array changes; the index keeps the rows it was given
    for a, b in zip(grown.search(xq, 9), fresh.search(xq, 9)):
        np.testing.assert_array_equal(a, b)


def test_padding_attributes_and_output_arrays():
    index = fz.IndexFlatIP(3)
    assert (index.d, index.ntotal, index.is_trained) == (3, 0, True)
    D, I = index.search(np.ones((2, 3), np.float32), 4)
    assert (I == -1).all() and (D == -np.finfo(np.float32).max).all()
    index.add(np.eye(3))
    D_out, I_out = np.empty((1, 5), np.float32), np.empty((1, 5), np.int64)
    D, I = index.search(np.array([[1.0, 2.0, 3.0]]), 5, D=D_out, I=I_out)
    assert D is D_out and I is I_out
    assert I.tolist() == [[2, 1, 0, -1, -1]] and D[0, :3].tolist() == [3.0, 2.0, 1.0]
    D, I = index.search(np.empty((0, 3)), 2)
    assert D.shape == I.shape == (0, 2)
    index.add(np.empty((0, 3)))
    assert index.ntotal == 3


def test_bad_input_names_the_problem():
    index = fz.IndexFlatL2(4)
    with pytest.raises(ValueError, match="3 features, but an index of d=4"):
        index.add(np.ones((2, 3)))
    index.add(np.ones((2, 4)))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(np.ones((1, 4)), 0)
    with pytest.raises(ValueError, match="NaN or infinity"):
        index.search(np.array([[0.0, np.nan, 0.0, 0.0]]), 1)
    with pytest.raises(ValueError, match="d must be a positive integer"):
        fz.IndexFlatL2(0)
    with pytest.raises(ValueError, match="metric .METRIC_L2 or METRIC_INNER_PRODUCT. must be one of"):
        fz.knn(np.ones((1, 4)), np.ones((2, 4)), 1, metric=2)
    with pytest.raises(ValueError, match="params"):
        index.search(np.ones((1, 4)), 1, params=object())
    assert fz.METRIC_L2 == 1 and fz.METRIC_INNER_PRODUCT == 0  # faiss's values


def test_metric_constants_equal_faiss():
    faiss = pytest.importorskip("faiss", reason="faiss-cpu is the oracle")
    assert (fz.METRIC_L2, fz.METRIC_INNER_PRODUCT) == (faiss.METRIC_L2,
                                                       faiss.METRIC_INNER_PRODUCT)
    assert fz.PAD_L2 == faiss.IndexFlatL2(2).search(np.ones((1, 2), np.float32), 1)[0][0, 0]
