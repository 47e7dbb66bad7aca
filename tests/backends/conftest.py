"""Fixtures shared by the backend suites."""
import contextlib

import pytest

from fastzsl.backends import cupy as cupy_backend


@pytest.fixture
def cp():
    """CuPy (or, without a GPU, the stand-in of tests/cuda_host); skips if neither loads."""
    ok, reason = cupy_backend.is_available()
    if not ok:
        pytest.skip(f"backend 'cupy' unavailable: {reason}")
    import cupy

    return cupy


@pytest.fixture(params=["auto", "blas", "avx2", "portable"])
def f32_tiles(request):
    """The products of the cython kNN (float32) and Gaussian (both dtypes) kernels by each
    route (knn_cpu.set_f32_tiles: the widest tiles the CPU has, BLAS, the AVX2 tiles, their
    portable form), restored after; "avx2" is skipped where the CPU lacks it, and where it
    is what "auto" picks."""
    knn_cpu = pytest.importorskip("fastzsl._ext.knn_cpu", reason="cython extension not built")
    if request.param == "avx2":
        if "avx2" not in knn_cpu.tile_kernels():
            pytest.skip("this CPU has no AVX2 with FMA")
        if knn_cpu.tile_kernels()[0] == "avx2":
            pytest.skip("'auto' runs the AVX2 tiles on this CPU")
    with knn_cpu.using_f32_tiles(request.param):
        yield request.param


@contextlib.contextmanager
def _gaussian_route(route):
    """The cython Gaussian kernel's route for classes that fit one vector, for the block:
    "gemm" (the GEMM form) or "direct" (direct differences in lanes, up to the largest d
    the route takes; gaussian_cpu.set_direct_route_max_d); the setting is restored after."""
    gaussian_cpu = pytest.importorskip("fastzsl._ext.gaussian_cpu",
                                       reason="cython extension not built")
    before = gaussian_cpu.set_direct_route_max_d(
        0 if route == "gemm" else gaussian_cpu.DIRECT_ROUTE_MAX_D)
    try:
        yield route
    finally:
        gaussian_cpu.set_direct_route_max_d(before)


@pytest.fixture(params=["gemm", "direct"])
def gaussian_route(request):
    """The cython Gaussian kernel on each of its routes for classes that fit one vector.
    Yields the route's name."""
    with _gaussian_route(request.param) as route:
        yield route


@pytest.fixture
def gemm_route():
    """The cython Gaussian kernel on its GEMM form, whatever the classes."""
    with _gaussian_route("gemm") as route:
        yield route


@pytest.fixture
def direct_route():
    """The cython Gaussian kernel on its direct route wherever it applies."""
    with _gaussian_route("direct") as route:
        yield route
