"""Isotropic Gaussian log-likelihoods: fastzsl.gaussian_loglik vs the bare GEMM and SciPy.

Group ``gaussian n=.. C=100 d=50`` (n = 10 * N_q: 100_000, or 10_000 with --quick):

- fastzsl ``gaussian_loglik(F, means, variances, full=False)`` (row reductions only: max,
  argmax, logsumexp, all-below-threshold; no (n, C) matrix) and ``full=True`` (the matrix
  too), per backend (cython, numba, numpy);
- baseline: NumPy float32 ``F @ means.T``, the bare GEMM any log-likelihood needs (a
  lower bound, not a log-likelihood);
- the per-class loop ``scipy.stats.multivariate_normal(mean_c, var_c * I).logpdf(F)``
  (the frozen distributions are built outside the timer; float64 output).

Correctness before time: every fastzsl result is compared with the NumPy backend's on the
same inputs (fastzsl.testing.TOL for float32; argmax/all_below exact), SciPy's matrix with
the NumPy backend's matrix (rtol 1e-4), and the GEMM with a float64 product (rtol 1e-4).
"""
import numpy as np
import pytest

import fastzsl
from fastzsl.testing import TOL, backend_is_available, make_blobs

N_CHECK = 2000  # rows compared before timing


@pytest.fixture(scope="session")
def gauss_data(cfg):
    """Semantic-space points around C class centres, per-class means and variances."""
    F, y = make_blobs(cfg.n_gauss, cfg.d, n_centers=cfg.n_classes, seed=3, dtype=cfg.dtype)
    C = cfg.n_classes
    counts = np.bincount(y, minlength=C)
    sums = np.zeros((C, cfg.d))
    np.add.at(sums, y, F.astype(np.float64))
    means = sums / counts[:, None]
    sq = ((F - means[y]) ** 2).sum(axis=1)
    variances = np.bincount(y, weights=sq, minlength=C) / (counts * cfg.d)
    # thresholds near the median own-class log-likelihood, so all_below is a real test
    thresholds = np.full(C, -0.5 * cfg.d * (1 + np.log(2 * np.pi * variances.mean())))
    log_weights = np.log(counts / counts.sum())
    return F, means.astype(cfg.dtype), variances, log_weights, thresholds


@pytest.fixture(scope="session")
def gauss_expected(gauss_data):
    F, means, variances, log_weights, thresholds = gauss_data
    return fastzsl.gaussian_loglik(F[:N_CHECK], means, variances, log_weights=log_weights,
                                   thresholds=thresholds, full=True, backend="numpy")


def _group(cfg):
    return f"gaussian n={cfg.n_gauss} C={cfg.n_classes} d={cfg.d}"


@pytest.mark.parametrize("full", [False, True], ids=["reductions", "full"])
@pytest.mark.parametrize("backend", ["cython", "numba", "numpy"])
def test_gaussian_loglik(backend, full, bench, cfg, gauss_data, gauss_expected):
    if not backend_is_available(backend):
        pytest.skip(f"backend {backend!r} unavailable")
    F, means, variances, log_weights, thresholds = gauss_data

    def run(X):
        return fastzsl.gaussian_loglik(X, means, variances, log_weights=log_weights,
                                       thresholds=thresholds, full=full, backend=backend)

    got, ref = run(F[:N_CHECK]), gauss_expected
    tol = TOL[np.dtype(cfg.dtype)]
    if full:
        np.testing.assert_allclose(got.loglik, ref.loglik, **tol)
    else:
        assert got.loglik is None
    np.testing.assert_allclose(got.max, ref.max, **tol)
    np.testing.assert_allclose(got.logsumexp, ref.logsumexp, **tol)
    np.testing.assert_array_equal(got.argmax, ref.argmax)
    np.testing.assert_array_equal(got.all_below, ref.all_below)
    what = "full=True (matrix + reductions)" if full else "full=False (reductions only)"
    bench(lambda: run(F), group=_group(cfg),
          label=f"fastzsl gaussian_loglik {what} ({backend})", peer="fastzsl",
          backend=backend, full=full, n=cfg.n_gauss, C=cfg.n_classes, d=cfg.d)


def test_gemm_baseline(bench, cfg, gauss_data):
    F, means = gauss_data[:2]
    np.testing.assert_allclose(F[:N_CHECK] @ means.T,
                               F[:N_CHECK].astype(np.float64) @ means.T.astype(np.float64),
                               rtol=1e-4, atol=1e-2)
    bench(lambda: F @ means.T, group=_group(cfg),
          label="baseline: NumPy float32 F @ means.T (bare GEMM)", baseline=True,
          peer="numpy", n=cfg.n_gauss, C=cfg.n_classes, d=cfg.d)


def test_scipy_loop(bench, cfg, gauss_data, gauss_expected):
    from scipy.stats import multivariate_normal
    F, means, variances = gauss_data[:3]
    eye = np.eye(cfg.d)
    frozen = [multivariate_normal(m.astype(np.float64), v * eye)
              for m, v in zip(means, variances)]

    def run(X):
        return np.column_stack([dist.logpdf(X) for dist in frozen])

    np.testing.assert_allclose(run(F[:N_CHECK]), gauss_expected.loglik, rtol=1e-4)
    bench(lambda: run(F), group=_group(cfg),
          label="scipy.stats.multivariate_normal(mean, var*I).logpdf, loop over classes",
          peer="scipy", n=cfg.n_gauss, C=cfg.n_classes, d=cfg.d)
