import numpy as np
import pytest

from fastzsl.backends import backend_status
from fastzsl.testing import BACKENDS, DTYPES, backend_is_available


def _backend_params():
    params = []
    status = backend_status()
    for name in BACKENDS:
        if backend_is_available(name):
            params.append(pytest.param(name, id=name))
        else:
            params.append(pytest.param(name, id=name, marks=pytest.mark.skip(
                reason=f"backend {name!r} unavailable: {status[name]}")))
    return params


@pytest.fixture(params=_backend_params())
def backend(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def torch_threads():
    """A context manager factory: ``with torch_threads(n):`` runs torch on n threads, so a
    test can check a result whatever the intra-op thread count splits the work into."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def run_on(n):
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return run_on


@pytest.fixture(scope="module")
def one_torch_thread():
    """Problems this small run on one thread; more threads only wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
