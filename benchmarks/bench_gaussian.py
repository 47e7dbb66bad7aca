"""Isotropic Gaussian log-likelihoods: fastzsl.gaussian_loglik vs the bare GEMM and SciPy.

Two groups, d=50, float32 blobs around C class centres (seed 3), with per-class means and
variances estimated from them:

- ``gaussian n=100000 C=100 d=50`` (n = 10 * N_q; 10_000 with --quick): fastzsl
  ``gaussian_loglik(F, means, variances, full=False)`` (row reductions only: max, argmax,
  logsumexp, all-below-threshold; no (n, C) matrix) and ``full=True`` (the matrix too),
  per backend (cython, numba, numpy); the per-class SciPy loop on all rows.
- ``gaussian n=1000000 C=1000 d=50`` (the target shape; n=50_000 with --quick):
  ``full=False`` only (the float32 matrix alone would be 4 GB), cython and numba (the
  NumPy backend would take minutes per round); the SciPy loop on the first
  ``SCIPY_SUBSET`` rows (a tenth with --quick), its times scaled by n / SCIPY_SUBSET (``time_scale`` in
  extra_info, applied and labelled by report.py).

Baseline of both: NumPy float32 ``F @ means.T``, the bare GEMM any log-likelihood needs (a
lower bound, not a log-likelihood; at the target size it writes a 4 GB matrix). The row
"sgemm in blocks" runs the same product through a reused (8192, C) buffer, the same
arithmetic without that memory traffic.

- ``gaussian regime ...`` (the regime table): cython ``full=False`` against the same product
  (in the input dtype) in 8192-row blocks, for far classes (rows drawn around means 4
  standard deviations apart per coordinate: one class per row matters) and broad ones (rows
  and means standard normal, variances 0.5-2: every class lies within a few dozen nats, so
  every one is a logsumexp term), C in 10, 1000, 10000, d in 16, 50, 512, float32 and
  float64. Rows n give about 2e9 (--quick: 2e8) multiply-adds per product.

Rounds are interleaved within each group (conftest ``bench``: A B C, A B C, ...; the group's
first test checks and times all its rows).

Correctness before time: every fastzsl result is compared with the NumPy backend's on the
first N_CHECK rows (fastzsl.testing.TOL for float32; argmax/all_below exact), SciPy's
matrix with the NumPy backend's matrix (rtol 1e-4), and the GEMM with a float64 product
(rtol 1e-4).
"""
import numpy as np
import pytest

import fastzsl
from fastzsl.testing import (
    TOL, assert_within_bound, backend_is_available, gamma, make_blobs, matmul_error_bound,
    unit_roundoff,
)

from _harness import Candidate

N_CHECK = 2000  # rows compared before timing
SCIPY_SUBSET = 20_000  # rows the SciPy loop runs on in the target group
BLOCK = 8192


def _shapes(cfg):
    """(n, C, full matrix wanted, NumPy backend timed) per group."""
    return {"small": (cfg.n_gauss, cfg.n_classes), "target": (cfg.n_gauss_target, 1000)}


@pytest.fixture(scope="session", params=["small", "target"])
def gauss_data(request, cfg):
    """Points around C class centres, per-class means, variances, log-priors, thresholds."""
    n, C = _shapes(cfg)[request.param]
    F, y = make_blobs(n, cfg.d, n_centers=C, seed=3, dtype=cfg.dtype)
    order = np.argsort(y, kind="stable")
    counts = np.bincount(y, minlength=C)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    means = np.add.reduceat(F[order].astype(np.float64), starts) / counts[:, None]
    sq = ((F - means[y].astype(cfg.dtype)).astype(np.float64) ** 2).sum(axis=1)
    variances = np.bincount(y, weights=sq, minlength=C) / (counts * cfg.d)
    # thresholds near the median own-class log-likelihood, so all_below is a real test
    thresholds = np.full(C, -0.5 * cfg.d * (1 + np.log(2 * np.pi * variances.mean())))
    log_weights = np.log(counts / counts.sum())
    return request.param, F, means.astype(cfg.dtype), variances, log_weights, thresholds


@pytest.fixture(scope="session")
def gauss_expected(gauss_data):
    _, F, means, variances, log_weights, thresholds = gauss_data
    return fastzsl.gaussian_loglik(F[:N_CHECK], means, variances, log_weights=log_weights,
                                   thresholds=thresholds, full=True, backend="numpy")


def _group(F, means):
    return f"gaussian n={F.shape[0]} C={means.shape[0]} d={F.shape[1]}"


def _loglik_candidate(backend, full, cfg, gauss_data, gauss_expected):
    which, F, means, variances, log_weights, thresholds = gauss_data
    if not backend_is_available(backend):
        return f"backend {backend!r} unavailable"
    if which == "target" and (full or backend == "numpy"):
        return "target size: reductions only (4 GB matrix), compiled backends only"

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
    return Candidate(f"fastzsl gaussian_loglik {what} ({backend})", lambda: run(F),
                     extra=dict(peer="fastzsl", backend=backend, full=full, n=F.shape[0],
                                C=means.shape[0], d=cfg.d))


def _gemm_baseline(cfg, gauss_data):
    _, F, means = gauss_data[:3]
    assert_within_bound(F[:N_CHECK] @ means.T,
                        F[:N_CHECK].astype(np.float64) @ means.T.astype(np.float64),
                        matmul_error_bound(F[:N_CHECK], means.T, F.dtype), "GEMM baseline")
    return Candidate("baseline: NumPy float32 F @ means.T (bare GEMM)", lambda: F @ means.T,
                     True, dict(peer="numpy", n=F.shape[0], C=means.shape[0], d=cfg.d))


def _gemm_in_blocks(cfg, gauss_data):
    _, F, means = gauss_data[:3]
    out = np.empty((BLOCK, means.shape[0]), dtype=F.dtype)

    def run():
        for start in range(0, F.shape[0], BLOCK):
            stop = min(start + BLOCK, F.shape[0])
            np.dot(F[start:stop], means.T, out=out[:stop - start])
        return out

    run()
    last = (F.shape[0] - 1) // BLOCK * BLOCK
    # the same product in other blocks: each within gamma_d |F| |M| of the exact one
    assert_within_bound(out[:F.shape[0] - last], F[last:] @ means.T,
                        2 * matmul_error_bound(F[last:], means.T, F.dtype), "blocked GEMM")
    return Candidate(f"sgemm in blocks of {BLOCK} rows into one reused buffer (same product)",
                     run, extra=dict(peer="numpy", n=F.shape[0], C=means.shape[0], d=cfg.d))


def _scipy_loop(cfg, gauss_data, gauss_expected):
    from scipy.stats import multivariate_normal
    which, F, means, variances = gauss_data[:4]
    eye = np.eye(cfg.d)
    frozen = [multivariate_normal(m.astype(np.float64), v * eye)
              for m, v in zip(means, variances)]

    def run(X):
        return np.column_stack([dist.logpdf(X) for dist in frozen])

    # scipy sums two same-signed float64 terms (asserted: 2 pi v > 1): relative
    # gamma_(2d) in float64; the reference is rounded once to the input dtype
    assert (2 * np.pi * variances > 1).all()
    np.testing.assert_allclose(run(F[:N_CHECK]), gauss_expected.loglik,
                               rtol=2 * unit_roundoff(F.dtype) + gamma(2 * cfg.d, np.float64))
    label = "scipy.stats.multivariate_normal(mean, var*I).logpdf, loop over classes"
    rows, scale = F.shape[0], 1.0
    subset = SCIPY_SUBSET // 10 if cfg.quick else SCIPY_SUBSET
    if which == "target" and F.shape[0] > subset:
        rows, scale = subset, F.shape[0] / subset
        label += f" (first {rows} rows, times x{scale:g})"
    X = F[:rows]
    return Candidate(label, lambda: run(X),
                     extra=dict(peer="scipy", time_scale=scale, rows_timed=rows, n=F.shape[0],
                                C=means.shape[0], d=cfg.d))


CASES = ["gemm", "gemm-blocks", "scipy"] + [f"{b}-{'full' if full else 'reductions'}"
                                            for b in ("cython", "numba", "numpy")
                                            for full in (False, True)]


@pytest.mark.parametrize("case", CASES)
def test_gaussian(case, bench, cfg, gauss_data, gauss_expected):
    """Every row of the group: the bare GEMM (baseline), the blocked GEMM, the SciPy loop,
    and fastzsl gaussian_loglik per backend, full=False ("reductions") and full=True."""
    _, F, means = gauss_data[:3]

    def build(stack):
        out = {"gemm": _gemm_baseline(cfg, gauss_data),
               "gemm-blocks": _gemm_in_blocks(cfg, gauss_data),
               "scipy": _scipy_loop(cfg, gauss_data, gauss_expected)}
        for c in CASES[3:]:
            backend, what = c.split("-")
            out[c] = _loglik_candidate(backend, what == "full", cfg, gauss_data,
                                       gauss_expected)
        return out

    bench(_group(F, means), case, build)


# ------------------------------------------------------------------ regime table
REGIME_CLASSES = (10, 1000, 10_000)
REGIME_DIMS = (16, 50, 512)
REGIMES = [(regime, C, d, dtype) for regime in ("broad", "far") for C in REGIME_CLASSES
           for d in REGIME_DIMS for dtype in ("float32", "float64")]


def _regime_problem(regime, C, d, dtype, quick):
    """(F, means, variances, log_weights) of one regime, seeded."""
    rng = np.random.default_rng(C + d)
    n = int(min(400_000, max(2_000, (2e8 if quick else 2e9) // (C * d))))
    if regime == "broad":
        means = rng.standard_normal((C, d))
        F = rng.standard_normal((n, d))
    else:
        means = 4.0 * rng.standard_normal((C, d))
        F = means[rng.integers(0, C, n)] + rng.standard_normal((n, d))
    variances = rng.uniform(0.5, 2.0, C)
    log_weights = np.log(rng.dirichlet(np.ones(C)))
    return F.astype(dtype), means.astype(dtype), variances, log_weights


@pytest.mark.parametrize("regime,C,d,dtype", REGIMES,
                         ids=[f"{r}-C{C}-d{d}-{t}" for r, C, d, t in REGIMES])
@pytest.mark.parametrize("case", ["blocks", "cython"])
def test_gaussian_regime(case, regime, C, d, dtype, bench, cfg):
    """One row of the regime table: cython full=False against the blocked product."""
    group = f"gaussian regime {regime} C={C} d={d} {dtype}"

    def build(stack):
        if not backend_is_available("cython"):
            return {"blocks": "cython backend unavailable", "cython": "unavailable"}
        F, means, variances, log_weights = _regime_problem(regime, C, d, dtype, cfg.quick)
        check = slice(0, 500)
        ref = fastzsl.gaussian_loglik(F[check], means, variances, log_weights=log_weights,
                                      backend="numpy")
        got = fastzsl.gaussian_loglik(F[check], means, variances, log_weights=log_weights,
                                      full=False, backend="cython")
        tol = TOL[np.dtype(dtype)]
        np.testing.assert_allclose(got.logsumexp, ref.logsumexp, **tol)
        np.testing.assert_allclose(got.max, ref.max, **tol)
        block = min(BLOCK, F.shape[0])
        out = np.empty((block, C), dtype=dtype)

        def blocks():
            for start in range(0, F.shape[0], block):
                stop = min(start + block, F.shape[0])
                np.dot(F[start:stop], means.T, out=out[:stop - start])
            return out

        extra = dict(n=F.shape[0], C=C, d=d, regime=regime, input_dtype=dtype)
        return {
            "blocks": Candidate(f"baseline: {dtype} product in blocks of {block} rows",
                                blocks, True, dict(extra, peer="numpy")),
            "cython": Candidate("fastzsl gaussian_loglik full=False (cython)",
                                lambda: fastzsl.gaussian_loglik(
                                    F, means, variances, log_weights=log_weights,
                                    full=False, backend="cython"),
                                extra=dict(extra, peer="fastzsl", backend="cython")),
        }

    # C = 10: calls of a few ms whose baseline swings 2x between rounds: more rounds
    bench(group, case, build, rounds=3 * cfg.rounds if C == 10 else None)
