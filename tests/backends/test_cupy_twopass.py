"""The cupy backend's two-pass kNN (fastzsl/backends/cupy/knn_twopass.py,
csrc/cuda/knn_twopass.cu) against the direct kernel (its oracle: equal bit for bit) and the
NumPy reference, under the CPU harness when there is no GPU (tests/cuda_host/).

Tiles, segments and lists are shrunk so tiny inputs cross tile and segment edges; the
screen's GEMM is also run with TF32-truncated inputs (cuBLAS's tensor-core mode), which
the CPU stand-in's float32 matmul would otherwise never exercise.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastzsl.backends import cupy as cupy_backend
from fastzsl.backends import numpy_
from fastzsl.backends.cupy import knn as knn_direct
from fastzsl.backends.cupy import knn_twopass as tp
from fastzsl.testing import TOL, assert_knn_equal

gpu = pytest.mark.gpu
DTYPES = (np.float32, np.float64)
K = cupy_backend.KERNELS


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(tp, "TILE_Q", 48)
    monkeypatch.setattr(tp, "TILE_R", 70)
    monkeypatch.setattr(tp, "SEGMENTS", 3)


def _tf32(x):
    """float32 ``x`` with its mantissa truncated to TF32's 10 bits."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


@pytest.fixture(params=sorted(tp.COMPUTE_TYPES))
def compute_type(request, monkeypatch):
    """Each screen compute type the module can run (the CPU stand-in's cuBLAS emulates it)."""
    monkeypatch.setattr(tp, "COMPUTE_TYPE", request.param)
    return request.param


def _both(Q, R, k, self_offset, monkeypatch):
    """(twopass D, I), (direct D, I) through the backend's public entry."""
    monkeypatch.setattr(tp, "KNN_METHOD", "twopass")
    two = K.knn(Q, R, k, self_offset)
    monkeypatch.setattr(tp, "KNN_METHOD", "direct")
    one = K.knn(Q, R, k, self_offset)
    return two, one


def _check(Q, R, k, self_offset, monkeypatch, dtype):
    (D, I), (D1, I1) = _both(Q, R, k, self_offset, monkeypatch)
    assert D.dtype == np.dtype(dtype) and I.dtype == np.int64
    np.testing.assert_array_equal(I, I1)  # the direct kernel's answer, bit for bit
    np.testing.assert_array_equal(D, D1)
    if self_offset < 0 or k < R.shape[0]:  # (k = n_ref with self excluded: -1 vs self index)
        assert_knn_equal(D, I, *numpy_.knn(Q, R, k, self_offset), **TOL[np.dtype(dtype)])
    return D, I


def _case(name, rng, dtype):
    if name == "random":
        R = rng.normal(size=(300, 6))
        Q = rng.normal(size=(100, 6))
    elif name == "duplicates":
        R = rng.normal(size=(100, 5))
        R = np.concatenate([R, R[:60], R[:30], R[:30]])  # exact ties across tiles and segments
        Q = R[::3].copy()
    elif name == "near_ties":  # exact ties on a grid, split by 1e-6: far inside the margin
        R = rng.integers(0, 3, size=(260, 8)) + rng.integers(0, 2, size=(260, 8)) * 1e-6
        Q = rng.integers(0, 3, size=(90, 8)) + rng.integers(0, 2, size=(90, 8)) * 1e-6
    elif name == "offset":  # large norms, small distances: wide margins, many candidates
        R = 500.0 + rng.normal(size=(250, 4))
        Q = 500.0 + rng.normal(size=(80, 4))
    else:
        raise ValueError(name)
    return Q.astype(dtype), R.astype(dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ["random", "duplicates", "near_ties", "offset"])
@pytest.mark.parametrize("k", [1, 7])
def test_twopass_equals_direct_and_reference(cp, compute_type, small_tiles, monkeypatch, dtype, case, k):
    Q, R = _case(case, np.random.default_rng(len(case) * 10 + k), dtype)
    _check(Q, R, k, -1, monkeypatch, dtype)
    # exclude_self: the queries are reference rows 40.. (offset into the reference).
    _check(R[40:40 + len(Q)], R, k, 40, monkeypatch, dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_twopass_k_equals_n_ref(cp, small_tiles, monkeypatch, dtype):
    rng = np.random.default_rng(5)
    R = rng.normal(size=(90, 3)).astype(dtype)
    R[50:60] = R[:10]
    _check(R[:33], R, 90, -1, monkeypatch, dtype)  # every row, sorted
    _check(R, R, 89, 0, monkeypatch, dtype)  # every other row
    D, I = _check(R, R, 90, 0, monkeypatch, dtype)  # one short: +inf / -1, as the direct kernel
    assert (I[:, -1] == -1).all() and np.isinf(D[:, -1]).all()


def _recording_direct(calls):
    def direct(Q, reference, k, self_offset):
        calls.append((Q.shape[0], k, self_offset))
        return knn_direct._knn_device(Q, reference, k, self_offset)
    return direct


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_overflowed_queries_fall_back_to_the_direct_kernel(cp, small_tiles, monkeypatch, dtype):
    rng = np.random.default_rng(11)
    R = rng.normal(size=(400, 5))
    R[100:300] = 3.0  # 200 exact copies of a far point: their lists fill with ties
    R = R.astype(dtype)
    Q = np.concatenate([R[:20], R[[100] * 5], R[300:320]])  # rows 20..24 overflow
    k = 6
    calls = []
    D, I = tp.knn(cp.asarray(Q), cp.asarray(R), k, -1, _recording_direct(calls))
    D1, I1 = knn_direct._knn_device(cp.asarray(Q), cp.asarray(R), k, -1)
    assert calls == [(5, k, -1)], calls  # exactly the tied queries, one launch
    np.testing.assert_array_equal(I.get(), I1.get())
    np.testing.assert_array_equal(D.get(), D1.get())
    assert (I.get()[20:25] == np.arange(100, 106)).all()
    # Self excluded, overflowed queries scattered (two groups of copies): one launch of
    # k + 1 with self included, self then dropped -- or, where self is not among the k + 1
    # (lower-index copies tie with it), the first k kept.
    calls.clear()
    R[20:25] = R[100]
    Qs = R[5:115]  # query rows 15..19 and 95..109 are copies; reference row = query row + 5
    D, I = tp.knn(cp.asarray(Qs), cp.asarray(R), k, 5, _recording_direct(calls))
    D1, I1 = knn_direct._knn_device(cp.asarray(Qs), cp.asarray(R), k, 5)
    assert calls == [(20, k + 1, -1)], calls
    np.testing.assert_array_equal(I.get(), I1.get())
    np.testing.assert_array_equal(D.get(), D1.get())


@gpu
@pytest.mark.parametrize("qb", [32, 4])
def test_filter_blocks_of_any_width_and_many_phases(cp, monkeypatch, qb):
    # Filter blocks of qb queries: 32 (8 threads per query, a phase of 64 rows: 300-row
    # segments take five, the last one partial), and 4 (the layout of long lists: 64
    # threads per query, 512-row phases); 70 queries leave partial blocks.
    k = 6
    L = tp._list_length(k, 10**6)
    monkeypatch.setattr(tp, "FILTER_SMEM_BYTES", 12 * (L * qb + 2048) + 8 * qb)
    assert tp._filter_layout(L)[0] == qb
    monkeypatch.setattr(tp, "TILE_R", 300)
    monkeypatch.setattr(tp, "SEGMENTS", 1)
    rng = np.random.default_rng(qb)
    R = rng.normal(size=(700, 5))
    R[650:] = R[:50]  # exact ties across tiles
    _check(R[:70].copy(), R, k, -1, monkeypatch, np.float64)
    R32 = R.astype(np.float32)
    _check(R32[100:170], R32, k, 100, monkeypatch, np.float32)


@gpu
def test_lists_of_exactly_k_overflow_every_query(cp, small_tiles, monkeypatch):
    monkeypatch.setattr(tp, "LIST_FACTOR", 1)
    monkeypatch.setattr(tp, "LIST_EXTRA", 0)
    monkeypatch.setattr(tp, "SEGMENTS", 1)  # one list of k: its last entry is within T
    rng = np.random.default_rng(2)
    R = rng.normal(size=(200, 4)).astype(np.float32)
    calls = []
    D, I = tp.knn(cp.asarray(R[:50]), cp.asarray(R), 3, 0, _recording_direct(calls))
    assert calls == [(50, 4, -1)]  # self excluded: k + 1 with self, then self dropped
    assert_knn_equal(D.get(), I.get(), *numpy_.knn(R[:50], R, 3, 0), **TOL[np.dtype(np.float32)])


@gpu
def test_norms_beyond_float32_go_to_the_direct_kernel(cp):
    rng = np.random.default_rng(4)
    R = rng.normal(size=(60, 3)) * 1e20  # squared norms ~1e40: float32 products would overflow
    calls = []
    D, I = tp.knn(cp.asarray(R[:10]), cp.asarray(R), 4, 0, _recording_direct(calls))
    assert calls == [(10, 4, 0)]
    assert_knn_equal(D.get(), I.get(), *numpy_.knn(R[:10], R, 4, 0), **TOL[np.dtype(np.float64)])


def _blobs(rng, n, d, centers):
    """benchmarks/bench_gpu.py's data: float32 points around 10 centres, spread 1."""
    labels = rng.integers(0, centers.shape[0], size=n)
    return (centers[labels] + rng.normal(size=(n, d))).astype(np.float32)


@gpu
def test_clustered_queries_rarely_fall_back(cp, compute_type, monkeypatch):
    # The benchmark's blobs (10 centres x 10 apart, d = 64, k = 20): far-apart clusters make
    # Qn + Rn ~ 100x a within-cluster distance, the case where a bound wider than the GEMM
    # that runs (TF32's, ~500x FP32's) puts a whole cluster in every window and sends
    # every query to the direct kernel. At most 1% may fall back, and the answer is the
    # direct kernel's; the last call says how many fell back and with which compute type.
    rng = np.random.default_rng(21)
    d, k = 64, 20
    centers = rng.normal(size=(10, d)) * 10
    R, Q = _blobs(rng, 1500, d, centers), _blobs(rng, 100, d, centers)
    # One list of L = 2k + 32 = 72 per query over three reference tiles: fewer than a
    # cluster's ~150 rows, so a window holding the cluster (TF32's bound) overflows every
    # query, as a full-size run's 8 lists of 72 per 2048-row tile do at 1M references.
    monkeypatch.setattr(tp, "TILE_R", 512)
    monkeypatch.setattr(tp, "SEGMENTS", 1)
    fake = getattr(cp, "IS_FAKE", False)
    if fake:
        cp.reset_counters()
    calls = []
    D, I = tp.knn(cp.asarray(Q), cp.asarray(R), k, -1, _recording_direct(calls))
    assert tp.LAST_CALL["compute_type"] == compute_type
    assert tp.LAST_CALL["overflow_rows"] == tp.LAST_OVERFLOW_ROWS <= 0.01 * len(Q), tp.LAST_CALL
    assert sum(n for n, *_ in calls) == tp.LAST_OVERFLOW_ROWS
    D1, I1 = knn_direct._knn_device(cp.asarray(Q), cp.asarray(R), k, -1)
    np.testing.assert_array_equal(I.get(), I1.get())
    np.testing.assert_array_equal(D.get(), D1.get())
    if fake:  # the screen ran as its bound assumes: pinned FP32 cuBLAS, or the fused kernel
        kernels = {name for name, *_ in cp.launches}
        if compute_type == "fp32":
            assert {ct for *_, ct in cp.cuda.cublas.calls} == {
                cp.cuda.cublas.CUBLAS_COMPUTE_32F_PEDANTIC}
            assert "twopass_filter" in kernels and "twopass_fused_3xtf32" not in kernels
        else:
            assert not cp.cuda.cublas.calls and "twopass_filter" not in kernels
            assert [n for n, *_ in cp.launches].count("twopass_fused_3xtf32") == 1


@gpu
@pytest.mark.parametrize("where", ["query", "reference"])
def test_nan_input_goes_to_the_direct_kernel(cp, monkeypatch, where):
    # max(1.0, nan) is 1.0: a NaN must fail the norm guard itself, whichever side it is on.
    rng = np.random.default_rng(3)
    R = rng.normal(size=(80, 4))
    Q = rng.normal(size=(12, 4))
    (Q if where == "query" else R)[5, 2] = np.nan
    calls = []
    D, I = tp.knn(cp.asarray(Q), cp.asarray(R), 3, -1, _recording_direct(calls))
    assert calls == [(12, 3, -1)] and tp.LAST_CALL["method"].startswith("direct")
    D1, I1 = knn_direct._knn_device(cp.asarray(Q), cp.asarray(R), 3, -1)
    np.testing.assert_array_equal(I.get(), I1.get())
    np.testing.assert_array_equal(D.get(), D1.get())


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_host_reference_is_prepared_in_chunks(cp, small_tiles, monkeypatch, dtype):
    # A host reference is uploaded chunk by chunk, and centring and casting make float64
    # temporaries of one chunk at most: device memory stays near the reference's own size.
    if not getattr(cp, "IS_FAKE", False):
        pytest.skip("counts the CPU stand-in's uploads and casts")
    d, chunk = 6, 40
    monkeypatch.setattr(tp, "PREP_CHUNK_BYTES", chunk * 8 * d)
    rng = np.random.default_rng(7)
    R = rng.normal(size=(230, d)).astype(dtype)
    Q = R[:30].copy()
    uploads, casts = [], []
    to_cupy = tp._to_cupy
    monkeypatch.setattr(tp, "_to_cupy", lambda x, dt=None: uploads.append(len(x)) or to_cupy(x, dt))
    astype = cp.ndarray.astype

    def recording_astype(self, dt, copy=True):
        out = astype(self, dt, copy)
        if np.dtype(dt) == np.float64 and out is not self:
            casts.append(out.shape[0])
        return out

    monkeypatch.setattr(cp.ndarray, "astype", recording_astype)
    D, I = tp.knn(cp.asarray(Q), R, 5, 0, knn_direct._knn_device)
    assert uploads == [40] * 5 + [30], uploads
    assert casts and max(casts) <= chunk, casts
    assert_knn_equal(D.get(), I.get(), *numpy_.knn(Q, R, 5, 0), **TOL[np.dtype(dtype)])


@gpu
def test_last_call_reports_phase_times(cp, small_tiles, monkeypatch):
    monkeypatch.setattr(tp, "TIME_PHASES", True)
    rng = np.random.default_rng(1)
    R = rng.normal(size=(150, 5)).astype(np.float32)
    tp.knn(cp.asarray(R[:20]), cp.asarray(R), 4, 0, knn_direct._knn_device)
    phases = tp.LAST_CALL["phase_s"]
    assert set(phases) >= {"prepare", "gemm", "filter", "rerank"}, phases
    assert all(t >= 0 for t in phases.values())
    monkeypatch.setattr(tp, "KNN_METHOD", "direct")
    K.knn(R[:20], R, 4, 0)
    assert tp.LAST_CALL["method"] == "direct" and tp.LAST_CALL["phase_s"] is None


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (1.0, 300.0), (1e-3, 1e4), (1e-20, 0.0)])
def test_error_bound_holds_for_an_fp32_screen(monkeypatch, dtype, scale, offset):
    # |screened - exact| <= B for every pair, where the screen is the GEMM the bound is
    # proven for: inputs rounded to float32, products summed in float32 (NumPy's float32
    # matmul, any order). A TF32 screen breaks the same bound: the compute type must be the
    # one the bound assumes, which is why the module pins it.
    monkeypatch.setattr(tp, "_cupy", lambda: np)  # error_bound is plain array arithmetic
    rng = np.random.default_rng(9)
    d = 64
    X = (offset + scale * rng.normal(size=(200, d))).astype(dtype)
    Q, R = X[:50], X[50:]
    qn = (Q.astype(np.float64) ** 2).sum(1)
    rn = (R.astype(np.float64) ** 2).sum(1)
    diff = Q.astype(np.float64)[:, None, :] - R.astype(np.float64)[None, :, :]
    exact = (diff * diff).sum(-1)
    c, a = tp.error_bound(qn, float(rn.max()), d, "fp32")
    B = c * (qn[:, None] + rn[None, :]) + a[:, None]

    def screened(q32, r32):
        g = np.matmul(q32, r32.T)
        return (qn[:, None] + rn[None, :]) - 2.0 * g.astype(np.float64)

    Q32, R32 = Q.astype(np.float32), R.astype(np.float32)
    err = np.abs(screened(Q32, R32) - exact)
    assert (err <= B).all(), float((err / B).max())
    if scale >= 1e-3:  # not vacuous: FP32 errors reach a part of it, TF32 ones exceed it
        assert (err / B).max() > 1e-3
        assert (np.abs(screened(_tf32(Q32), _tf32(R32)) - exact) > B).any()


def _tf32_rna(x):
    """float32 ``x`` rounded to TF32 (10 mantissa bits), ties away from zero (cvt.rna)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (1.0, 300.0), (1e-3, 1e4), (1e-20, 0.0)])
def test_error_bound_holds_for_a_3xtf32_screen(monkeypatch, scale, offset):
    # The fused kernel's GEMM: each float32 input split into TF32 hi + lo, the products
    # lo.hi + hi.lo + hi.hi (exact in float) summed in float; the bound holds, is ~6x the
    # FP32 one (not 500x, as TF32's), and the errors reach a part of it.
    monkeypatch.setattr(tp, "_cupy", lambda: np)
    rng = np.random.default_rng(19)
    d = 64
    X = (offset + scale * rng.normal(size=(200, d))).astype(np.float32)
    Q, R = X[:50], X[50:]
    qn = (Q.astype(np.float64) ** 2).sum(1)
    rn = (R.astype(np.float64) ** 2).sum(1)
    diff = Q.astype(np.float64)[:, None, :] - R.astype(np.float64)[None, :, :]
    exact = (diff * diff).sum(-1)
    c, a = tp.error_bound(qn, float(rn.max()), d, "3xtf32")
    c32, _ = tp.error_bound(qn, float(rn.max()), d, "fp32")
    assert 3 < c / c32 < 10
    B = c * (qn[:, None] + rn[None, :]) + a[:, None]
    qh, rh = _tf32_rna(Q), _tf32_rna(R)
    ql, rl = _tf32_rna(Q - qh), _tf32_rna(R - rh)
    g = (np.matmul(ql, rh.T) + np.matmul(qh, rl.T)) + np.matmul(qh, rh.T)
    screened = (qn[:, None] + rn[None, :]) - 2.0 * g.astype(np.float64)
    err = np.abs(screened - exact)
    assert (err <= B).all(), float((err / B).max())
    if scale >= 1e-3:
        assert (err / B).max() > 1e-3


_MMA_SOURCE = """
extern "C" __global__ void mma_product(const float* A, const float* B, const float* C,
                                       float* D) {
    // One warp: D = A B + C, A 16 x 8, B 8 x 8, C and D 16 x 8 (row-major in memory), the
    // fragments loaded as the PTX ISA lays them out for mma.m16n8k8 .tf32.
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    const unsigned a[4] = {to_tf32(A[g * 8 + t]), to_tf32(A[(g + 8) * 8 + t]),
                           to_tf32(A[g * 8 + t + 4]), to_tf32(A[(g + 8) * 8 + t + 4])};
    const unsigned b[2] = {to_tf32(B[t * 8 + g]), to_tf32(B[(t + 4) * 8 + g])};
    float d[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t],
                  C[(g + 8) * 8 + 2 * t + 1]};
    mma_tf32_m16n8k8(d, a, b);
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
}
"""


def test_harness_mma_follows_the_ptx_fragment_layout(cp):
    # The CPU harness's mma.sync.m16n8k8 TF32 on fragments loaded per the PTX ISA layout:
    # the product of the TF32-rounded matrices (small integers x powers of two: exact).
    if not getattr(cp, "IS_FAKE", False):
        pytest.skip("checks the CPU harness's emulation")
    from fastzsl.backends.cupy import _loader

    prelude = "".join(f"#define {name} {value}\n" for name, value in _loader.defines().items())
    module = cp.RawModule(code=prelude + _loader._expand("common.cuh", ()) + _MMA_SOURCE)
    rng = np.random.default_rng(4)
    A = (rng.integers(-50, 50, size=(16, 8)) * 2.0**-3).astype(np.float32)
    B = (rng.integers(-50, 50, size=(8, 8)) * 2.0**5).astype(np.float32)
    C = rng.integers(-9, 9, size=(16, 8)).astype(np.float32)
    A[3, 5] = 1.0 + 2.0**-12  # not a TF32 value: rounds to 1.0
    D = cp.empty((16, 8), dtype=np.float32)
    module.get_function("mma_product")((1,), (32,), tuple(cp.asarray(x) for x in (A, B, C)) + (D,))
    A[3, 5] = 1.0
    np.testing.assert_array_equal(D.get(), A.astype(np.float64) @ B + C)


def test_method_switch_and_size_rule(monkeypatch):
    Q = np.zeros((1000, 64), np.float32)
    small = np.zeros((100, 64), np.float32)
    monkeypatch.setattr(tp, "KNN_METHOD", "auto")
    assert not tp.chosen(Q, small, 10)  # 6.4e6 terms: the direct kernel
    big = np.broadcast_to(np.float32(0), (2**20, 64))  # shape only; no memory
    assert tp.chosen(Q[:200], big, 10)  # 1.3e10 terms: two-pass
    assert not tp.chosen(Q[:200], big, tp.TWOPASS_MAX_K + 1)
    monkeypatch.setattr(tp, "KNN_METHOD", "twopass")
    assert tp.chosen(Q, small, 10)
    assert not tp.chosen(Q, small, 101)  # k > n_ref: the direct path raises
    monkeypatch.setattr(tp, "KNN_METHOD", "direct")
    assert not tp.chosen(Q, big, 10)
    assert not tp.chosen(Q[:10], big, 5000)  # lists too long for the filter's shared memory
    monkeypatch.setattr(tp, "KNN_METHOD", "fast")
    with pytest.raises(ValueError, match="KNN_METHOD"):
        tp.chosen(Q, small, 10)


_SANITIZED_RUN = """
import sys
import numpy as np
from tests.cuda_host import fake_cupy
sys.modules["cupy"] = fake_cupy
from fastzsl.backends import cupy as backend, numpy_
from fastzsl.backends.cupy import knn_twopass as tp
from fastzsl.testing import TOL, assert_knn_equal
tp.KNN_METHOD, tp.TILE_Q, tp.TILE_R, tp.SEGMENTS, tp.LIST_EXTRA = "twopass", 40, 90, 3, 0
rng = np.random.default_rng(0)
for dtype, tp.COMPUTE_TYPE in ((np.float32, "fp32"), (np.float64, "3xtf32")):
    R = rng.normal(size=(250, 9)).astype(dtype)
    R[200:] = R[0]
    tol = TOL[np.dtype(dtype)]
    assert_knn_equal(*backend.KERNELS.knn(R[:70], R, 5, -1), *numpy_.knn(R[:70], R, 5, -1), **tol)
    assert_knn_equal(*backend.KERNELS.knn(R, R, 8, 0), *numpy_.knn(R, R, 8, 0), **tol)
print("ok")
"""


@pytest.mark.parametrize("kind", ["address", "thread"])
def test_twopass_kernels_run_clean_under_sanitizers(cp, kind):
    # Out-of-bounds list, tile or row access (ASan), or two threads touching one query's
    # lists or one phase buffer unsynchronised (TSan), stops the run, in the tiled filter
    # (float32) and the fused kernel (float64); the lists overflow for the copied rows too.
    if not getattr(cp, "IS_FAKE", False):
        pytest.skip("the sanitizers instrument the CPU harness only")
    from tests.cuda_host import harness

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _SANITIZED_RUN], cwd=root,
                          env=harness.sanitizer_env(kind), capture_output=True, text=True,
                          timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and output.strip().endswith("ok"), output[-4000:]


def _bench_gpu():
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(root / "benchmarks"))
    return bench_gpu


@gpu
def test_benchmark_keeps_every_number_as_it_is_taken(cp, tmp_path, monkeypatch):
    # benchmarks/bench_gpu.py at tiny sizes (gpu_check.sh --tiny runs it too): the preflight
    # and the methods case compare two-pass and direct answers before timing; every kNN
    # timing carries its method, compute type and fallbacks; gpu.json on disk already holds
    # a timing when the next one starts, and a case that fails leaves the others' numbers.
    bench_gpu = _bench_gpu()
    methods = bench_gpu.CASE_FUNCTIONS["methods"]
    seen_on_disk = []

    def methods_then_fail(ctx, *sizes):
        methods(ctx, *sizes)
        on_disk = json.loads((tmp_path / "gpu.json").read_text())["cases"]["methods"]
        seen_on_disk.append(set(on_disk["times_s"]))
        raise RuntimeError("a failure after the methods case's timings")

    monkeypatch.setitem(bench_gpu.CASE_FUNCTIONS, "methods", methods_then_fail)
    assert bench_gpu.main(["--tiny", "--cases", "preflight,methods,gaussian",
                           "--out", str(tmp_path)]) == 1
    assert seen_on_disk == [{"fastzsl_knn_direct", "fastzsl_knn_twopass",
                             "fastzsl_knn_twopass_3xtf32"}]
    result = json.loads((tmp_path / "gpu.json").read_text())
    cases = result["cases"]
    assert "a failure after" in cases["methods"]["error"]
    assert cases["methods"]["correctness"]["twopass_equals_direct"]
    assert "fastzsl_gaussian_reductions" in cases["gaussian"]["times_s"]  # ran after it
    pre = cases["preflight"]
    assert pre["correctness"]["twopass_equals_direct"]
    assert set(pre["compile_s"]) == {"knn_cuda", "knn_twopass", "loop_cuda", "gaussian_cuda"}
    assert pre["compute_types"]["twopass_screen_default"] == tp.COMPUTE_TYPE
    phases = pre["knn"]["fastzsl_knn_twopass_with_phase_events"]["phase_s"]
    assert set(phases) >= {"gemm", "filter", "rerank"}
    phases = pre["knn"]["fastzsl_knn_twopass_3xtf32_with_phase_events"]["phase_s"]
    assert set(phases) >= {"fused_screen_filter", "rerank"}
    for case in (pre, cases["methods"]):
        for label in case["times_s"]:
            info = case["knn"][label]
            assert info["method"] in label and info["compute_type"]
            assert ("3xtf32" in label) == (info["compute_type"] == "3xtf32")
            assert isinstance(info["overflow_rows"], int) and info["queries"] > 0
    assert "| fastzsl_knn_twopass |" in (tmp_path / "gpu.md").read_text()
    assert tp.KNN_METHOD == "auto" and not tp.TIME_PHASES  # restored
