"""Fixtures shared by the backend suites."""
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


@pytest.fixture(params=["auto", "blas", "portable"])
def f32_tiles(request):
    """The products of the cython kNN (float32) and Gaussian (both dtypes) kernels by each
    route (knn_cpu.set_f32_tiles: BLAS, the AVX-512 tiles, their portable form), restored
    after."""
    knn_cpu = pytest.importorskip("fastzsl._ext.knn_cpu", reason="cython extension not built")
    before = knn_cpu.f32_tiles_mode()
    knn_cpu.set_f32_tiles(request.param)
    yield request.param
    knn_cpu.set_f32_tiles(before)
