"""Kernel results on 1 and 2 threads: what the thread count may and may not change."""
import numpy as np
import pytest

from fastzsl import gaussian_loglik, knn, loop_fit
from fastzsl.backends import available_backends
from fastzsl.testing import TOL, make_blobs


@pytest.mark.parametrize("backend", available_backends())
def test_results_do_not_depend_on_the_thread_count(backend):
    """kNN is decided and summed in double per pair, so its answers are the same bits on 1
    or 2 threads; the Gaussian reductions and LoOP within the backends' derived tolerance
    (their sums may be split across threads)."""
    X, _ = make_blobs(700, 9, n_centers=5, seed=4)
    means = X[:6].copy()
    runs = {}
    for n_jobs in (1, 2):
        D, I = knn(X[:150], X, 7, backend=backend, n_jobs=n_jobs)
        g = gaussian_loglik(X, means, np.ones(6), backend=backend, n_jobs=n_jobs)
        fit = loop_fit(*knn(X, X, 7, exclude_self=True, backend=backend, n_jobs=n_jobs),
                       backend=backend, n_jobs=n_jobs)
        runs[n_jobs] = (D, I, g, fit)
    (D1, I1, g1, f1), (D2, I2, g2, f2) = runs[1], runs[2]
    np.testing.assert_array_equal(D1, D2)
    np.testing.assert_array_equal(I1, I2)
    tol32, tol64 = TOL[np.dtype(np.float32)], TOL[np.dtype(np.float64)]
    for a, b in ((g1.loglik, g2.loglik), (g1.max, g2.max), (g1.logsumexp, g2.logsumexp)):
        np.testing.assert_allclose(a, b, **tol32)
    np.testing.assert_array_equal(g1.argmax, g2.argmax)
    np.testing.assert_allclose(f1.probabilities, f2.probabilities, **tol64)
