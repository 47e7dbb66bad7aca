"""The cupy backend on a GPU, against the NumPy reference.

Every test here needs CuPy and a CUDA device, or the CPU harness that stands in for both
when CuPy is not installed (tests/cuda_host/: the same kernel text compiled with g++, each
CUDA thread a fiber or host thread, behind a stand-in for CuPy); without either it is skipped with
the reason. The generic equivalence tests in tests/test_knn.py, tests/test_loop.py and
tests/test_gaussian.py also run over backend ``cupy``; these cover its own paths (tile and
block edges, reference chunks and splits, lists in global memory, CuPy and torch arrays).
Run them alone with ``python -m pytest tests/backends/test_cupy.py -m gpu``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import fastzsl
from fastzsl.backends import cupy as cupy_backend
from fastzsl.backends import numpy_
from fastzsl.backends.cupy import _launch, knn
from fastzsl.testing import TOL, assert_knn_equal

DTYPES = (np.float32, np.float64)

gpu = pytest.mark.gpu


K = cupy_backend.KERNELS


def _data(rng, n_ref, n_q, d, dtype):
    return rng.normal(size=(n_ref, d)).astype(dtype), rng.normal(size=(n_q, d)).astype(dtype)


def _check_knn(D, I, D_ref, I_ref, dtype):
    assert D.dtype == np.dtype(dtype) and I.dtype == np.int64
    assert_knn_equal(D, I, D_ref, I_ref, **TOL[np.dtype(dtype)])


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_knn_exclude_self_with_duplicates_k128(cp, dtype):
    # k=128: the top-k lists shrink the block to 32 queries (tests/test_knn.py has the
    # same test with k = 1, 6, 299 over every backend).
    rng = np.random.default_rng(7)
    X = rng.normal(size=(150, 4)).astype(dtype)
    X = np.concatenate([X, X[:100], X[:50]])  # triplicates and duplicates; n = 300
    D, I = K.knn(X, X, 128, 0)
    assert isinstance(D, np.ndarray) and isinstance(I, np.ndarray)
    _check_knn(D, I, *numpy_.knn(X, X, 128, 0), dtype)
    assert not (I == np.arange(len(X))[:, None]).any(), "a point is its own neighbour"


@gpu
def test_knn_ties_go_to_lower_index(cp):
    D, I = K.knn(np.zeros((3, 2)), np.zeros((100, 2)), 40, -1)
    assert (I == np.arange(40)).all() and (D == 0).all()
    D, I = K.knn(np.zeros((100, 2)), np.zeros((100, 2)), 5, 0)  # self skipped, then lowest
    expected = np.array([[j for j in range(7) if j != i][:5] for i in range(100)])
    assert (I == expected).all() and (D == 0).all()


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("chunk", [1, 33, 100, 512])
def test_knn_reference_in_chunks(cp, monkeypatch, dtype, chunk):
    monkeypatch.setattr(knn, "REF_CHUNK_ROWS", chunk)
    rng = np.random.default_rng(chunk)
    X = rng.integers(0, 3, size=(1000, 5)).astype(dtype)  # many exact ties across chunks
    Q = rng.integers(0, 3, size=(70, 5)).astype(dtype)
    _check_knn(*K.knn(Q, X, 17, -1), *numpy_.knn(Q, X, 17, -1), dtype)
    # Self exclusion with an offset: queries are reference rows 250..399.
    _check_knn(*K.knn(X[250:400], X, 17, 250), *numpy_.knn(X[250:400], X, 17, 250), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("chunk", [None, 700])
def test_knn_reference_split_across_blocks(cp, monkeypatch, dtype, chunk):
    monkeypatch.setattr(knn, "MIN_SPLIT_ROWS", 40)
    monkeypatch.setattr(knn, "SPLIT_TARGET_BLOCKS_PER_SM", 64)
    monkeypatch.setattr(knn, "REF_CHUNK_ROWS", chunk)
    assert knn._n_splits(50, 2500, 128, 1) > 1
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2500, 9)).astype(dtype)
    X[1500:1600] = X[:100]  # duplicates in different splits
    _check_knn(*K.knn(X[:50], X, 30, 0), *numpy_.knn(X[:50], X, 30, 0), dtype)
    _check_knn(*K.knn(X[1450:1650], X, 3, 1450), *numpy_.knn(X[1450:1650], X, 3, 1450), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("k", [5, 128])
def test_knn_lists_in_global_memory(cp, monkeypatch, dtype, k):
    monkeypatch.setattr(knn, "FORCE_GLOBAL_LISTS", True)
    rng = np.random.default_rng(k)
    R, Q = _data(rng, 900, 130, 20, dtype)
    _check_knn(*K.knn(Q, R, k, -1), *numpy_.knn(Q, R, k, -1), dtype)
    _check_knn(*K.knn(R, R, k, 0), *numpy_.knn(R, R, k, 0), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_knn_queries_restaged_per_tile(cp, monkeypatch, dtype):
    monkeypatch.setattr(_launch, "RESIDENT_ROWS_BYTES", 0)
    rng = np.random.default_rng(21)
    R, Q = _data(rng, 700, 150, 40, dtype)
    _check_knn(*K.knn(Q, R, 12, -1), *numpy_.knn(Q, R, 12, -1), dtype)
    _check_knn(*K.knn(R, R, 12, 0), *numpy_.knn(R, R, 12, 0), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_knn_cupy_in_cupy_out(cp, dtype):
    rng = np.random.default_rng(11)
    R, Q = _data(rng, 500, 40, 16, dtype)
    D, I = K.knn(cp.asarray(Q), cp.asarray(R), 9, -1)
    assert isinstance(D, cp.ndarray) and isinstance(I, cp.ndarray)
    _check_knn(D.get(), I.get(), *numpy_.knn(Q, R, 9, -1), dtype)


@gpu
def test_knn_torch_cuda_in_torch_out(cp):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    rng = np.random.default_rng(12)
    R, Q = _data(rng, 300, 20, 8, np.float32)
    D, I = K.knn(torch.from_numpy(Q).cuda(), torch.from_numpy(R).cuda(), 4, -1)
    assert isinstance(D, torch.Tensor) and D.is_cuda and D.dtype == torch.float32
    assert I.dtype == torch.int64
    _check_knn(D.cpu().numpy(), I.cpu().numpy(), *numpy_.knn(Q, R, 4, -1), np.float32)


@gpu
def test_public_api_with_backend_cupy(cp):
    rng = np.random.default_rng(13)
    R, Q = _data(rng, 400, 30, 6, np.float64)
    D, I = fastzsl.knn(Q, R, 5, backend="cupy")
    _check_knn(D, I, *numpy_.knn(Q, R, 5, -1), np.float64)
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        D, I = fastzsl.knn(torch.from_numpy(Q).cuda(), torch.from_numpy(R).cuda(), 5,
                           backend="cupy")
        assert isinstance(D, torch.Tensor) and D.is_cuda
        _check_knn(D.cpu().numpy(), I.cpu().numpy(), *numpy_.knn(Q, R, 5, -1), np.float64)


# LoOP: float64 arithmetic, 1e-10.
LOOP_TOL = TOL[np.dtype(np.float64)]


def _loop_data(rng, dtype):
    X = rng.normal(size=(400, 3))
    X[:30] = X[0]  # a clump of duplicates: zero pdists, 0/0 PLOFs
    X[30:40] = X[40:50]
    X = X.astype(dtype)
    new = np.concatenate([rng.normal(size=(60, 3)), X[:5], [[9.0, 9.0, 9.0]]]).astype(dtype)
    return X, new


def _assert_fit_equal(got, ref):
    for a, b in zip(got[:2], ref[:2]):
        np.testing.assert_allclose(a, b, **LOOP_TOL)
    assert isinstance(got[2], float)
    np.testing.assert_allclose(got[2], ref[2], **LOOP_TOL)
    np.testing.assert_allclose(got[3], ref[3], **LOOP_TOL)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("k", [1, 10, 40])
def test_loop_fit_and_score_equal_numpy_reference(cp, dtype, k):
    rng = np.random.default_rng(k)
    X, new = _loop_data(rng, dtype)
    D, I = numpy_.knn(X, X, k, 0)
    ref = numpy_.loop_fit(D, I, 3.0)
    got = K.loop_fit(D, I, 3.0)
    _assert_fit_equal(got, ref)
    Dq, Iq = numpy_.knn(new, X, k, -1)
    for ev in (math.nan, 0.7, 0.0):
        expected = numpy_.loop_score(Dq, Iq, ref[0], ref[2], 3.0, ev)
        np.testing.assert_allclose(K.loop_score(Dq, Iq, ref[0], ref[2], 3.0, ev), expected,
                                   **LOOP_TOL)


@gpu
def test_loop_zero_conventions(cp):
    X = np.zeros((21, 2))
    X[-1] = 5.0  # one point away from 20 identical ones
    D, I = numpy_.knn(X, X, 3, 0)
    ref = numpy_.loop_fit(D, I, 2.0)
    got = K.loop_fit(D, I, 2.0)
    _assert_fit_equal(got, ref)
    assert got[1][-1] == np.inf and (got[1][:-1] == 0).all() and got[2] == 0.0
    assert got[3][-1] == 1.0 and (got[3][:-1] == 0).all()


@gpu
def test_loop_cupy_in_cupy_out(cp):
    rng = np.random.default_rng(5)
    X, new = _loop_data(rng, np.float64)
    D, I = numpy_.knn(X, X, 8, 0)
    got = K.loop_fit(cp.asarray(D), cp.asarray(I), 3.0)
    assert all(isinstance(a, cp.ndarray) for a in (got[0], got[1], got[3]))
    _assert_fit_equal([a.get() if isinstance(a, cp.ndarray) else a for a in got],
                      numpy_.loop_fit(D, I, 3.0))
    Dq, Iq = numpy_.knn(new, X, 8, -1)
    ref = numpy_.loop_fit(D, I, 3.0)
    prob = K.loop_score(cp.asarray(Dq), cp.asarray(Iq), cp.asarray(ref[0]), ref[2], 3.0,
                        math.nan)
    assert isinstance(prob, cp.ndarray)
    np.testing.assert_allclose(prob.get(), numpy_.loop_score(Dq, Iq, ref[0], ref[2], 3.0,
                                                             math.nan), **LOOP_TOL)


def _gaussian_problem(rng, n, C, d, dtype):
    F = rng.normal(size=(n, d)).astype(dtype)
    means = rng.normal(size=(C, d)).astype(dtype)
    variances = rng.uniform(0.5, 2.0, size=C)
    log_weights = np.log(rng.dirichlet(np.ones(C)))
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, np.full(C, np.inf), True)
    # Thresholds between data values, so "below" cannot flip on rounding.
    thresholds = np.median(ref[0], axis=0).astype(np.float64) + 1e-3
    return F, means, variances, log_weights, thresholds


def _assert_gaussian_equal(got, ref, dtype, full):
    tol = TOL[np.dtype(dtype)]
    if full:
        assert got[0].dtype == np.dtype(dtype) and got[0].shape == ref[0].shape
        np.testing.assert_allclose(got[0], ref[0], **tol)
    else:
        assert got[0] is None
    assert got[1].dtype == np.dtype(dtype) and got[3].dtype == np.dtype(dtype)
    assert got[2].dtype == np.int64 and got[4].dtype == np.bool_
    np.testing.assert_allclose(got[1], ref[1], **tol)
    np.testing.assert_array_equal(got[2], ref[2])
    np.testing.assert_allclose(got[3], ref[3], **tol)
    np.testing.assert_array_equal(got[4], ref[4])


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("n,C,d", [(1, 1, 1), (77, 13, 50), (1030, 3, 7), (300, 70, 33),
                                   (129, 33, 17), (65, 64, 16), (50, 40, 300)])
@pytest.mark.parametrize("resident", [True, False], ids=["resident", "restaged"])
def test_gaussian_equals_numpy_reference(cp, monkeypatch, dtype, full, n, C, d, resident):
    if not resident:
        monkeypatch.setattr(_launch, "RESIDENT_ROWS_BYTES", 0)
    rng = np.random.default_rng(n + C + d)
    F, means, variances, log_weights, thresholds = _gaussian_problem(rng, n, C, d, dtype)
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
    got = K.gaussian_loglik(F, means, variances, log_weights, thresholds, full)
    _assert_gaussian_equal(got, ref, dtype, full)


@gpu
def test_gaussian_zero_weight_classes_and_thresholds(cp):
    rng = np.random.default_rng(1)
    F, means, variances, _, _ = _gaussian_problem(rng, 40, 35, 4, np.float64)
    log_weights = np.full(35, -np.inf)
    log_weights[33] = 0.0  # only one class counts, past the first 32-class tile
    thresholds = np.full(35, -np.inf)
    thresholds[::2] = np.inf
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
    got = K.gaussian_loglik(F, means, variances, log_weights, thresholds, False)
    _assert_gaussian_equal(got, ref, np.float64, False)
    np.testing.assert_allclose(got[3], ref[0][:, 33], rtol=1e-12)
    assert not got[4].any()
    # Every weight -inf: logsumexp is -inf, as scipy's.
    with np.errstate(divide="ignore"):
        ref = numpy_.gaussian_loglik(F, means, variances, np.full(35, -np.inf), thresholds, True)
    got = K.gaussian_loglik(F, means, variances, np.full(35, -np.inf), thresholds, True)
    assert np.isneginf(got[3]).all() and np.isneginf(ref[3]).all()


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gaussian_cupy_in_cupy_out(cp, dtype):
    rng = np.random.default_rng(2)
    F, means, variances, log_weights, thresholds = _gaussian_problem(rng, 200, 40, 12, dtype)
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
    got = K.gaussian_loglik(cp.asarray(F), cp.asarray(means), cp.asarray(variances),
                            cp.asarray(log_weights), cp.asarray(thresholds), True)
    assert all(isinstance(a, cp.ndarray) for a in got)
    _assert_gaussian_equal([a.get() for a in got], ref, dtype, True)


# --- edge cases of the kernels' arithmetic ---
# A known defect of the kernels would be a strict xfail here, so that a fix shows as XPASS.
# float32 input is summed in double and every decision is taken on the doubles, as the
# reference does: near-ties that float sums would round together, and sums that would
# overflow float beyond |difference| ~1.8e19. float32 outputs are rounded from the doubles
# (to inf beyond float's range, as the reference's are, hence the errstate: NumPy warns on
# that cast, CuPy does not).


@gpu
@pytest.mark.parametrize("chunk", [None, 1], ids=["one_launch", "merged_chunks"])
def test_knn_float32_ties_are_decided_on_the_double_sums(cp, monkeypatch, chunk):
    # 1 + 2**-24 (row 0) rounds to 1.0 in float, a tie with row 1 that the lower
    # index would win; in double row 1 is nearer. With one-row chunks the merges decide.
    monkeypatch.setattr(knn, "REF_CHUNK_ROWS", chunk)
    Q = np.zeros((1, 2), dtype=np.float32)
    R = np.array([[1.0, 2.0**-12], [1.0, 0.0]], dtype=np.float32)
    D_ref, I_ref = numpy_.knn(Q, R, 2, -1)
    D, I = K.knn(Q, R, 2, -1)
    assert I_ref.tolist() == I.tolist() == [[1, 0]]
    assert D.dtype == np.float32 and D.tolist() == D_ref.tolist() == [[1.0, 1.0]]


@gpu
@pytest.mark.parametrize("chunk", [None, 37], ids=["one_launch", "merged_chunks"])
def test_knn_float32_screen_recomputes_every_near_tie_in_double(cp, monkeypatch, chunk):
    # float32 input is screened on float sums, exact only after the double recompute: rows
    # whose float sums tie (1 - 2^-24 + 2^-48 and 1 - 2^-24 both round to 1 - 2^-24; 1 and
    # 1 + 2^-24 to 1) while their double sums differ, shuffled so that most arrive when the
    # lists are full and the screen alone decides whether they are recomputed.
    monkeypatch.setattr(knn, "REF_CHUNK_ROWS", chunk)
    rng = np.random.default_rng(12)
    kinds = np.array([[1.0, 2.0**-12], [1.0, 0.0], [1.0 - 2.0**-24, 2.0**-12],
                      [1.0 - 2.0**-24, 0.0], [1.0, 2.0**-11], [1.0 - 2.0**-23, 2.0**-12]])
    R = kinds[rng.integers(0, len(kinds), size=150)]
    R[::7] *= 3.0  # farther rows in between
    R = R.astype(np.float32)
    Q = np.zeros((3, 2), dtype=np.float32)
    Q[1, 0] = 2.0**-13
    for k in (1, 4, 23):
        D_ref, I_ref = numpy_.knn(Q, R, k, -1)
        D, I = K.knn(Q, R, k, -1)
        assert I.tolist() == I_ref.tolist()
        np.testing.assert_array_equal(D, D_ref)


@gpu
@pytest.mark.parametrize("chunk", [None, 1], ids=["one_launch", "merged_chunks"])
def test_knn_float32_beyond_float_range_keeps_the_order(cp, monkeypatch, chunk):
    monkeypatch.setattr(knn, "REF_CHUNK_ROWS", chunk)
    Q = np.zeros((1, 1), dtype=np.float32)
    R = np.array([[4e19], [3e19], [2e19]], dtype=np.float32)
    with np.errstate(over="ignore"):
        D_ref, I_ref = numpy_.knn(Q, R, 3, -1)
        D, I = K.knn(Q, R, 3, -1)
    assert I.tolist() == I_ref.tolist() == [[2, 1, 0]]
    assert D.tolist() == D_ref.tolist() == [[np.inf] * 3]


@gpu
def test_gaussian_float32_beyond_float_range_keeps_the_argmax(cp):
    F = np.zeros((1, 1), dtype=np.float32)
    means = np.array([[4e19], [3e19]], dtype=np.float32)  # both squared beyond 3.4e38
    args = (F, means, np.ones(2), np.log(np.full(2, 0.5)), np.full(2, -np.inf), False)
    with np.errstate(over="ignore"):
        ref = numpy_.gaussian_loglik(*args)
        got = K.gaussian_loglik(*args)
    assert ref[2][0] == got[2][0] == 1
    assert ref[1][0] == got[1][0] == -np.inf  # the max, rounded to float32


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("chunk", [None, 2], ids=["one_launch", "merged_chunks"])
def test_knn_nan_distances_sort_last(cp, monkeypatch, dtype, chunk):
    # Direct backend calls (the public API rejects NaN): NumPy's stable
    # sort puts NaN last, after +inf, lower index first among NaNs.
    monkeypatch.setattr(knn, "REF_CHUNK_ROWS", chunk)
    R = np.array([[np.nan], [5.0], [1.0], [np.nan], [3.0], [2.0]], dtype=dtype)
    Q = np.zeros((1, 1), dtype=dtype)
    for k in (3, 6):
        D_ref, I_ref = numpy_.knn(Q, R, k, -1)
        D, I = K.knn(Q, R, k, -1)
        assert I.tolist() == I_ref.tolist()
        np.testing.assert_array_equal(D, D_ref)


@gpu
@pytest.mark.parametrize("k", [0, -1])
def test_knn_rejects_k_below_one(cp, k):
    X = np.zeros((10, 2))
    with pytest.raises(ValueError, match="k"):
        K.knn(X, X, k, -1)


@gpu
def test_gaussian_rejects_zero_dimensions(cp):
    with pytest.raises(ValueError, match="dimension"):
        K.gaussian_loglik(np.zeros((3, 0)), np.zeros((2, 0)), np.ones(2), np.zeros(2),
                          np.zeros(2), False)


@gpu
def test_loop_rejects_missing_neighbours(cp):
    # The kNN kernel writes index -1 where fewer than k candidates exist; LoOP must not read
    # ref_pdist[-1] for it.
    D = np.ones((3, 2))
    I = np.array([[1, 2], [0, 2], [0, -1]])
    with pytest.raises(ValueError, match="-1"):
        K.loop_fit(D, I, 3.0)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gaussian_nan_policy_is_numpys(cp, dtype):
    # A NaN log-likelihood (here a NaN mean) is the row's max, and the
    # first NaN class its argmax, as NumPy's max/argmax; logsumexp NaN; all_below False.
    rng = np.random.default_rng(4)
    F, means, variances, log_weights, _ = _gaussian_problem(rng, 40, 37, 5, dtype)
    means[[2, 34]] = np.nan
    thresholds = np.full(37, np.inf)
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
    got = K.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
    assert np.isnan(ref[1]).all() and (ref[2] == 2).all()
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[2], ref[2])
    np.testing.assert_array_equal(got[3], ref[3])
    np.testing.assert_array_equal(got[4], ref[4])


@gpu
@pytest.mark.parametrize("self_offset", [-1, 0])
def test_knn_global_scratch_is_capped_per_launch(cp, monkeypatch, self_offset):
    # The global top-k scratch grows with the queries; over SCRATCH_BYTES
    # the queries run in several launches, each within the cap, with the same answer.
    monkeypatch.setattr(knn, "FORCE_GLOBAL_LISTS", True)
    monkeypatch.setattr(knn, "SCRATCH_BYTES", knn.KNN_MAX_SPLITS * 128 * 6 * 12 * 2)
    fake = getattr(cp, "launches", None)
    if fake is not None:
        fake.clear()
    rng = np.random.default_rng(8)
    R = rng.normal(size=(700, 3))
    Q = R if self_offset == 0 else rng.normal(size=(600, 3))
    _check_knn(*K.knn(Q, R, 6, self_offset), *numpy_.knn(Q, R, 6, self_offset), np.float64)
    if fake is not None:  # the CPU harness records launches: 600+ queries, 256 per launch
        assert sum(name == "knn_f64" for name, *_ in fake) == 3


# --- benchmarks/gpu_check.sh (not marked gpu: its GPU-test step runs this file -m gpu) ---


def test_gpu_check_records_a_failing_step_and_still_runs_the_benchmark(tmp_path):
    # The script on the CPU harness (FASTZSL_CUDA_HOST=1, bench_gpu.py --tiny) with its
    # GPU-test step pointed at a failing test and its public-API step at a passing one: the
    # failure is recorded, the later steps still run and record theirs, the exit status is 1.
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not getattr(sys.modules.get("cupy"), "IS_FAKE", False):
        pytest.skip("the CPU harness is not in use (CuPy is installed, or no C++ compiler)")
    root = Path(__file__).resolve().parents[2]
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: stand-in\n")
    (tests / "test_failing.py").write_text(
        "import pytest\n\n@pytest.mark.gpu\ndef test_deliberately_fails():\n    assert False\n")
    (tests / "test_passing.py").write_text("def test_cupy_passes():\n    pass\n")
    results = tmp_path / "results"
    env = dict(os.environ, FASTZSL_CUDA_HOST="1", BENCH_ARGS="--tiny", RESULTS_DIR=str(results),
               PYTHON=sys.executable, GPU_CHECK_TESTS=str(tests / "test_failing.py"),
               GPU_CHECK_API_TESTS=str(tests / "test_passing.py"))
    env.pop("GPU_CHECK_SKIP_TESTS", None)
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    output = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 1, output
    steps = json.loads((results / "gpu_check_steps.json").read_text())
    assert [(s["step"], s["status"]) for s in steps] == [
        ("nvidia-smi", "skipped"), ("versions", "passed"), ("preflight", "passed"),
        ("bench-methods-gaussian", "passed"), ("gpu-tests", "failed"), ("api-tests", "passed"),
        ("bench-large", "passed")], output
    assert steps[4]["exit"] == 1 and all(s["exit"] == 0 for s in steps if s is not steps[4])
    md = (results / "gpu_check_steps.md").read_text()
    assert "| gpu-tests | failed | 1 |" in md and "| bench-large | passed | 0 |" in md
    cases = json.loads((results / "gpu.json").read_text())["cases"]  # every part ran, in order
    assert list(cases) == ["preflight", "methods", "gaussian", "knn_loop", "big_reference"]
    assert "gpu_check: step 'gpu-tests' FAILED" in proc.stderr
