"""The CUDA kernels: compile checks that need only nvcc, and GPU tests against NumPy.

* ``test_nvcc_*`` compile every ``csrc/cuda/*.cu`` -- as ``fastzsl._cuda`` hands it to
  NVRTC, headers inlined -- with nvcc for sm_80 and sm_90, and fail on any error or
  warning. Skipped only when nvcc is on neither PATH nor /usr/local/cuda/bin.
* ``@pytest.mark.gpu`` tests run backend ``cupy`` against the NumPy reference; they are
  skipped, with the reason, when CuPy or a CUDA device is missing. Run them alone with
  ``python -m pytest tests/test_cuda.py -m gpu``.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastzsl
from fastzsl import _cuda
from fastzsl.backends import cupy_, numpy_, registered_backends
from fastzsl.testing import TOL, assert_knn_equal

CUDA_DIR = Path(__file__).resolve().parent.parent / "csrc" / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
CUDA_SOURCES = sorted(CUDA_DIR.glob("*.cu")) + sorted(CUDA_DIR.glob("*.cuh"))
ARCHS = ("sm_80", "sm_90")
DTYPES = (np.float32, np.float64)

gpu = pytest.mark.gpu


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    candidate = Path("/usr/local/cuda/bin/nvcc")
    return str(candidate) if candidate.is_file() else None


# --- without a GPU -----------------------------------------------------------------------


def test_cuda_sources_exist():
    assert {p.name for p in CU_FILES} >= {"knn_cuda.cu", "loop_cuda.cu", "gaussian_cuda.cu"}


@pytest.mark.parametrize("path", CUDA_SOURCES, ids=lambda p: p.name)
def test_sources_use_no_host_headers(path):
    # NVRTC (cupy.RawModule) has no host standard library: <cstdio>, <cmath>, ... fail there
    # even though nvcc accepts them.
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", path.read_text(), flags=re.S)  # code only
    assert not re.findall(r"^\s*#\s*include\s*<", text, flags=re.M), \
        f"{path.name} includes a system header, which NVRTC cannot compile"
    for macro in ("INFINITY", "NAN", "M_PI", "printf"):
        assert not re.search(rf"\b{macro}\b", text), f"{path.name} uses host-only {macro}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles_without_warnings(path, arch, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found on PATH nor in /usr/local/cuda/bin")
    # Exactly the text RawModule compiles (headers inlined, #line directives), same options.
    source = tmp_path / path.name
    source.write_text(_cuda.kernel_source(path.stem))
    cmd = [nvcc, *_cuda.OPTIONS, f"-arch={arch}", "--cubin", "-Werror", "all-warnings",
           "-o", str(tmp_path / f"{path.stem}.{arch}.cubin"), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not output, f"{' '.join(cmd)}\n{output}"


@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles_the_file_as_is(path, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found on PATH nor in /usr/local/cuda/bin")
    cmd = [nvcc, *_cuda.OPTIONS, "-arch=sm_80", "--ptx", "-Werror", "all-warnings",
           "-o", str(tmp_path / f"{path.stem}.ptx"), str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not output, f"{' '.join(cmd)}\n{output}"


def test_kernel_source_inlines_headers():
    text = _cuda.kernel_source("knn_cuda")
    assert text.startswith('#line 1 "knn_cuda.cu"')
    assert '#line 1 "common.cuh"' in text and "FASTZSL_COMMON_CUH" in text
    assert not re.search(r'^\s*#\s*include\s+"', text, flags=re.M)
    with pytest.raises(FileNotFoundError, match="not found"):
        _cuda.kernel_source("no_such_kernel")


def test_importing_the_backend_does_not_import_cupy():
    code = ("import sys, fastzsl._cuda, fastzsl.backends.cupy_ as m; "
            "assert 'cupy' not in sys.modules; ok, reason = m.is_available(); "
            "print(ok, reason)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(fastzsl.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.startswith("False"):
        assert "fastzsl[gpu]" in proc.stdout or "CUDA GPU" in proc.stdout, proc.stdout


# --- on a GPU ----------------------------------------------------------------------------


@pytest.fixture
def cp():
    ok, reason = cupy_.is_available()
    if not ok:
        pytest.skip(f"backend 'cupy' unavailable: {reason}")
    import cupy

    return cupy


K = cupy_.KERNELS
# (n_reference, n_queries, d, k): odd sizes crossing the 32-row / 32- and 16-dim tiles and
# the 128/64/32-query blocks; k from 1 to 128.
SIZES = [(50, 7, 3, 5), (1031, 77, 13, 20), (600, 129, 50, 1), (40, 33, 2, 40),
         (2000, 300, 70, 128), (700, 5, 33, 64), (97, 260, 1, 7), (37, 5, 3, 37),
         (200, 50, 300, 10)]  # d=300: queries re-staged per tile (not resident)


def _data(rng, n_ref, n_q, d, dtype):
    return rng.normal(size=(n_ref, d)).astype(dtype), rng.normal(size=(n_q, d)).astype(dtype)


def _check_knn(D, I, D_ref, I_ref, dtype):
    assert D.dtype == np.dtype(dtype) and I.dtype == np.int64
    assert_knn_equal(D, I, D_ref, I_ref, **TOL[np.dtype(dtype)])


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n_ref,n_q,d,k", SIZES)
def test_knn_equals_numpy_reference(cp, dtype, n_ref, n_q, d, k):
    rng = np.random.default_rng(n_ref * 1000 + d)
    R, Q = _data(rng, n_ref, n_q, d, dtype)
    D, I = K.knn(Q, R, k, -1)
    assert isinstance(D, np.ndarray) and isinstance(I, np.ndarray)
    _check_knn(D, I, *numpy_.knn(Q, R, k, -1), dtype)
    assert (np.diff(D, axis=1) >= 0).all()


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("k", [1, 6, 128, 299])
def test_knn_exclude_self_with_duplicates(cp, dtype, k):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(150, 4)).astype(dtype)
    X = np.concatenate([X, X[:100], X[:50]])  # triplicates and duplicates; n = 300
    D, I = K.knn(X, X, k, 0)
    _check_knn(D, I, *numpy_.knn(X, X, k, 0), dtype)
    assert not (I == np.arange(len(X))[:, None]).any(), "a point is its own neighbour"
    if k == 6:
        assert (D[:50, :2] == 0).all() and (D[:50, 2] > 0).all()


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
    monkeypatch.setattr(cupy_, "REF_CHUNK_ROWS", chunk)
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
    monkeypatch.setattr(cupy_, "MIN_SPLIT_ROWS", 40)
    monkeypatch.setattr(cupy_, "SPLIT_TARGET_BLOCKS_PER_SM", 64)
    monkeypatch.setattr(cupy_, "REF_CHUNK_ROWS", chunk)
    assert cupy_._n_splits(50, 2500, 128, 1) > 1
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2500, 9)).astype(dtype)
    X[1500:1600] = X[:100]  # duplicates in different splits
    _check_knn(*K.knn(X[:50], X, 30, 0), *numpy_.knn(X[:50], X, 30, 0), dtype)
    _check_knn(*K.knn(X[1450:1650], X, 3, 1450), *numpy_.knn(X[1450:1650], X, 3, 1450), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("k", [5, 128])
def test_knn_lists_in_global_memory(cp, monkeypatch, dtype, k):
    monkeypatch.setattr(cupy_, "FORCE_GLOBAL_LISTS", True)
    rng = np.random.default_rng(k)
    R, Q = _data(rng, 900, 130, 20, dtype)
    _check_knn(*K.knn(Q, R, k, -1), *numpy_.knn(Q, R, k, -1), dtype)
    _check_knn(*K.knn(R, R, k, 0), *numpy_.knn(R, R, k, 0), dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_knn_queries_restaged_per_tile(cp, monkeypatch, dtype):
    monkeypatch.setattr(cupy_, "RESIDENT_ROWS_BYTES", 0)
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
    if "cupy" not in registered_backends():
        pytest.skip("backend 'cupy' is not in fastzsl.backends._REGISTRY yet")
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
        monkeypatch.setattr(cupy_, "RESIDENT_ROWS_BYTES", 0)
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
