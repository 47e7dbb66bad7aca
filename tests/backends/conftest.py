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
