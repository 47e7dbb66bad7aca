"""The CPU harness that runs the CUDA kernels without a GPU (tests/cuda_host/).

When CuPy is not installed, tests/cuda_host/plugin.py puts the stand-in ``fake_cupy`` in
``sys.modules["cupy"]`` and the cupy backend's tests (test_cupy.py, the cupy
parametrizations of test_knn/test_loop/test_gaussian) run the shipped kernel text on host
threads. These tests check the harness itself: that it is what runs, that it is strict
about launches, and that its AddressSanitizer and ThreadSanitizer builds catch a
shared-memory overrun and a missing barrier (each in a subprocess that preloads the
sanitizer runtime).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastzsl.backends.cupy import _loader

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake():
    cupy = sys.modules.get("cupy")
    if not getattr(cupy, "IS_FAKE", False):
        pytest.skip("the CPU harness is not in use (CuPy is installed, or no C++ compiler)")
    cupy.reset_counters()
    return cupy


def test_the_backend_runs_the_loader_text_on_the_harness(fake, monkeypatch):
    from fastzsl.backends import get_backend

    K = get_backend("cupy")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    monkeypatch.setattr(_loader, "_load", _loader._load.__wrapped__)  # no memoised module
    K.knn(X, X, 4, 0)
    assert [name for name, *_ in fake.launches] == ["knn_f64"]
    assert fake.sources == [_loader.kernel_source("knn_cuda")]  # compiled verbatim
    from tests.cuda_host import harness

    lib = harness.build(_loader.kernel_source("knn_cuda"))
    assert set(lib.names) == {"knn_f32", "knn_f64", "knn_merge_f32", "knn_merge_f64"}


def test_numpy_in_numpy_out_transfers(fake):
    from fastzsl.backends import get_backend

    K = get_backend("cupy")
    X = np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32)
    K.knn(X, X, 3, -1)
    # Queries and reference up, D and I down; nothing else crosses.
    assert fake.transfers == {"to_device": 2, "to_host": 2}


def test_launch_arguments_are_type_checked(fake):
    module = fake.RawModule(code=_loader.kernel_source("loop_cuda"), options=_loader.OPTIONS)
    kernel = module.get_function("loop_probability")
    plof, prob = fake.zeros(4, np.float64), fake.empty(4, np.float64)
    with pytest.raises(TypeError, match="argument 1 \\(int64\\)"):
        kernel((1,), (32,), (plof, np.int32(4), np.float64(1.0), prob))
    with pytest.raises(TypeError, match="argument 3 \\(float64\\*\\)"):
        kernel((1,), (32,), (plof, np.int64(4), np.float64(1.0), fake.empty(4, np.float32)))
    kernel((1,), (32,), (plof, np.int64(4), np.float64(1.0), prob))
    assert (prob.get() == 0).all()


def test_dynamic_shared_memory_over_48k_needs_the_attribute(fake):
    module = fake.RawModule(code=_loader.kernel_source("loop_cuda"), options=_loader.OPTIONS)
    kernel = module.get_function("loop_probability")
    args = (fake.zeros(1, np.float64), np.int64(1), np.float64(1.0), fake.empty(1, np.float64))
    with pytest.raises(RuntimeError, match="CUDA_ERROR_INVALID_VALUE"):
        kernel((1,), (32,), args, shared_mem=49 * 1024)
    kernel.max_dynamic_shared_size_bytes = 49 * 1024
    kernel((1,), (32,), args, shared_mem=49 * 1024)


def _run_driver(kind, mutant, timeout=300):
    from tests.cuda_host import harness

    env = harness.sanitizer_env(kind)
    proc = subprocess.run([sys.executable, "-m", "tests.cuda_host.sanitizer_driver", mutant],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("kind", ["address", "thread"])
def test_sanitized_kernels_run_clean(fake, kind):
    code, output = _run_driver(kind, "none")
    assert code == 0 and output.strip().endswith("ok"), output[-4000:]


def test_address_sanitizer_catches_a_shared_memory_overrun(fake):
    code, output = _run_driver("address", "small-smem")
    assert code == 66 and "AddressSanitizer: heap-buffer-overflow" in output, output[-4000:]
    assert "knn_cuda.cu" in output  # the report points into the kernel source


def test_thread_sanitizer_catches_a_missing_barrier(fake):
    code, output = _run_driver("thread", "no-barrier")
    assert code == 66 and "ThreadSanitizer: data race" in output, output[-4000:]


def test_a_barrier_not_reached_by_every_thread_is_reported(fake, monkeypatch):
    # A __syncthreads() inside `if (threadIdx.x == 0)`: on a GPU a hang or worse; here the
    # harness reports the barrier site and returns an error for the launch.
    source = _loader.kernel_source("loop_cuda")
    marker = "fastzsl::block_reduce_sum_count<REDUCE_THREADS>(s, c);\n    if (tid == 0) {\n"
    assert source.count(marker) == 2
    broken = source.replace(marker, marker + "        __syncthreads();\n", 1)
    module = fake.RawModule(code=broken, options=_loader.OPTIONS)
    kernel = module.get_function("loop_nplof_partial")
    plof = fake.asarray(np.ones(300))
    args = (plof, np.int64(300), fake.empty(1, np.float64), fake.empty(1, np.int64))
    # Reported by whichever comes second: the barrier or a thread's return.
    expected = r"loop_cuda.cu:\d+: .*__syncthreads\(\) .*thread.* of the block returned"
    with pytest.raises(RuntimeError, match=expected):
        kernel((1,), (_loader.REDUCE_THREADS,), args)


def test_gpu_check_tiny_runs_on_the_cpu(fake, tmp_path):
    # benchmarks/gpu_check.sh end to end with FASTZSL_CUDA_HOST=1 (its two pytest steps are
    # this test suite, so they are left out): the script and bench_gpu.py work, every case
    # runs in the order planned, and the results, the log and the step records are copied to
    # $OUT. The timings mean nothing.
    import json
    import os

    results, out = tmp_path / "results", tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, FASTZSL_CUDA_HOST="1", GPU_CHECK_SKIP_TESTS="1", BENCH_ARGS="--tiny",
               RESULTS_DIR=str(results), OUT=str(out), PYTHON=sys.executable)
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for folder in (results, out):
        result = json.loads((folder / "gpu.json").read_text())
        assert "CPU execution" in result["sizes"] and "cuda_host" in result["device"]
        assert list(result["cases"]) == ["preflight", "methods", "gaussian", "knn_loop",
                                         "big_reference"]
        assert all("error" not in case for case in result["cases"].values())
        for name in ("gpu.md", "gpu_check.log", "gpu_check_steps.json"):
            assert (folder / name).is_file(), name
    log = (out / "gpu_check.log").read_text()
    assert "TIME fastzsl_knn_twopass" in log and "TIME compile knn_twopass" in log


def test_a_missing_barrier_gives_wrong_results_without_sanitizers(fake):
    # The default build runs a block's threads as fibers in thread order, so a thread that
    # reads a tile before the barrier that publishes it reads unwritten (NaN) memory.
    import os

    env = dict(os.environ, FASTZSL_CUDA_HOST_SANITIZE="")
    proc = subprocess.run([sys.executable, "-m", "tests.cuda_host.sanitizer_driver", "no-barrier"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "AssertionError" in proc.stderr, proc.stdout + proc.stderr
