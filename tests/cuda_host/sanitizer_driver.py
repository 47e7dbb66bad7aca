"""Run the cupy backend's kernels once over small problems on the CPU harness, for the
sanitizer tests (tests/backends/test_cuda_host.py), in a process that preloads the
sanitizer runtime: ``python -m tests.cuda_host.sanitizer_driver [mutant]``.

Mutants break the kernels or their launch on purpose, to show the sanitizers catch it:
``small-smem`` launches with 16 bytes less dynamic shared memory than the kernels use;
``no-barrier`` deletes the barrier between staging a tile and reading it (knn_cuda.cu).
Exit status 0 and "ok" when every result equals the NumPy reference.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from . import fake_cupy

MUTANTS = ("none", "small-smem", "no-barrier")


def _mutate(mutant):
    from fastzsl.backends.cupy import _launch, _loader

    if mutant == "small-smem":
        launch = _launch._launch

        def smaller(kernel, grid, block, args, shared_mem=0):
            launch(kernel, grid, block, args, max(0, shared_mem - 16))

        for module in ("knn", "gaussian"):
            setattr(sys.modules[f"fastzsl.backends.cupy.{module}"], "_launch", smaller)
    elif mutant == "no-barrier":
        source = _loader.kernel_source

        def without_barrier(name):
            text = source(name)
            if name == "knn_cuda":
                marker = "            __syncthreads();\n            accumulate_sqdist"
                assert marker in text
                text = text.replace(marker, "            accumulate_sqdist")
            return text

        _loader.kernel_source = without_barrier


def main(mutant="none"):
    if mutant not in MUTANTS:
        raise SystemExit(f"mutant: one of {MUTANTS}")
    sys.modules["cupy"] = fake_cupy
    from fastzsl.backends import cupy as backend, numpy_
    from fastzsl.backends.cupy import _launch, knn as knn_mod
    from fastzsl.testing import TOL, assert_knn_equal

    _mutate(mutant)
    K = backend.KERNELS
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        tol = TOL[np.dtype(dtype)]
        R = rng.normal(size=(300, 40)).astype(dtype)
        Q = rng.normal(size=(45, 40)).astype(dtype)
        assert_knn_equal(*K.knn(Q, R, 7, -1), *numpy_.knn(Q, R, 7, -1), **tol)
        knn_mod.FORCE_GLOBAL_LISTS = True  # lists in global scratch,
        knn_mod.MIN_SPLIT_ROWS = 64  # the reference split over blocks, then merged,
        _launch.RESIDENT_ROWS_BYTES = 0  # queries re-staged per tile
        assert_knn_equal(*K.knn(Q, R, 5, -1), *numpy_.knn(Q, R, 5, -1), **tol)
        knn_mod.FORCE_GLOBAL_LISTS, knn_mod.MIN_SPLIT_ROWS = False, 2048
        D, I = numpy_.knn(R, R, 6, 0)
        for got, ref in zip(K.loop_fit(D, I, 3.0), numpy_.loop_fit(D, I, 3.0)):
            np.testing.assert_allclose(got, ref, **TOL[np.dtype(np.float64)])
        F = rng.normal(size=(70, 20)).astype(dtype)
        M = rng.normal(size=(35, 20)).astype(dtype)
        var, lw, thr = rng.uniform(0.5, 2, 35), np.log(rng.dirichlet(np.ones(35))), np.zeros(35)
        ref = numpy_.gaussian_loglik(F, M, var, lw, thr, True)
        for resident_bytes in (0, 48 * 1024):  # rows re-staged per tile, then resident
            _launch.RESIDENT_ROWS_BYTES = resident_bytes
            got = K.gaussian_loglik(F, M, var, lw, thr, True)
            for a, b in zip(got, ref):
                np.testing.assert_allclose(a, b, **tol)
    assert not math.isnan(float(K.loop_fit(D, I, 3.0)[2]))
    print("ok")


if __name__ == "__main__":
    main(*sys.argv[1:])
