"""The cython backend's GEMM-form Gaussian kernel: where it hands over to the direct kernel
(norms that could overflow) and how few entries it recomputes on typical data."""
import numpy as np
import pytest

from fastzsl import gaussian_loglik
from fastzsl.backends import numpy_
from fastzsl.testing import TOL, backend_is_available, gaussian_problem, make_blobs


def _gemm_kernel():
    """The cython backend's GEMM-form entry point (returns its direct-evaluation count);
    the numba backend has only the direct kernel."""
    from fastzsl.backends import cython_
    if cython_.KERNELS is None:
        pytest.skip("cython backend not built")
    return cython_._gaussian_cpu.gaussian_loglik_gemm


@pytest.mark.parametrize("name", ["cython", "numba"])
def test_huge_norms_fall_back_to_the_direct_kernel(name, dtype, rng):
    """Norms that could overflow the product take cython's direct kernel; both compiled
    backends match the reference there."""
    scale = 1e19 if dtype == np.float32 else 1e152
    F, means, variances, log_weights = gaussian_problem(rng, 20, 3, 5, dtype)
    F, means = (F * scale).astype(dtype), (means * scale).astype(dtype)
    variances = variances * scale**2
    if name == "cython":
        assert _gemm_kernel()(F, means, variances, log_weights, np.full(3, np.inf), True) is None
    elif not backend_is_available(name):
        pytest.skip(f"the {name} backend is not available here (its package is not installed)")
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, np.full(3, np.inf), True)
    got = gaussian_loglik(F, means, variances, log_weights=log_weights, backend=name)
    np.testing.assert_allclose(got.loglik, ref[0], **TOL[dtype])
    np.testing.assert_array_equal(got.argmax, ref[2])


def test_the_gemm_form_recomputes_few_entries_on_typical_data(dtype):
    """On blobs (the benchmark's data) only the entries near each row's own class need
    the direct sum; the rest are certified by the bound."""
    gemm = _gemm_kernel()
    F, y = make_blobs(3000, 50, n_centers=200, seed=3, dtype=dtype)
    means = np.stack([F[y == c].mean(axis=0) for c in range(200)]).astype(dtype)
    for full in (False, True):
        out, n_direct = gemm(F, means, np.ones(200), np.zeros(200), np.full(200, np.inf), full)
        assert 0 < n_direct <= 2 * len(F), (full, n_direct)
