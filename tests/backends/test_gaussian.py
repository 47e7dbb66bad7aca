"""Gaussian log-likelihoods: every backend against the NumPy reference (fastzsl.testing.TOL),
the reference against scipy, and inputs built so that the cython GEMM form's error bound
matters (large offsets, points at means, near-ties): its decisions must still equal the
reference's, on both of its routes where the classes fit one vector."""
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from fastzsl import gaussian_loglik
from fastzsl.backends import numpy_
from fastzsl.backends import backend_status
from fastzsl.testing import BACKENDS, TOL, backend_is_available, gamma, gaussian_problem


@pytest.fixture(params=[*BACKENDS, "cython-gemm-route"])
def backend(request):
    """Every backend, and the cython one again on its GEMM form: most problems here have
    classes that fit one vector, which it otherwise takes by direct differences."""
    name = request.param
    if name == "cython-gemm-route":
        name = "cython"
        if backend_is_available(name):
            request.getfixturevalue("gemm_route")
    if not backend_is_available(name):
        pytest.skip(f"backend {name!r} unavailable: {backend_status()[name]}")
    return name


def test_numpy_reference_equals_scipy(rng):
    F, means, variances, _ = gaussian_problem(rng, 30, 4, 6, np.float64)
    L = numpy_.gaussian_loglik(F, means, variances, np.zeros(4), np.full(4, np.inf), True)[0]
    for c in range(4):
        expected = multivariate_normal(means[c], variances[c] * np.eye(6)).logpdf(F)
        # two same-signed float64 terms (2 pi v > 1): relative gamma_(2d + 4) each side
        np.testing.assert_allclose(L[:, c], expected, rtol=2 * gamma(2 * 6 + 4, np.float64))


@pytest.mark.parametrize("n,C,d", [(1, 1, 1), (77, 13, 50), (1030, 3, 7)])
@pytest.mark.parametrize("full", [True, False])
def test_backend_equals_numpy_reference(backend, dtype, rng, n, C, d, full):
    F, means, variances, log_weights = gaussian_problem(rng, n, C, d, dtype)
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, np.full(C, np.inf), True)
    # Thresholds between data values (never equal to one), so "below" cannot flip on rounding.
    thresholds = np.median(ref[0], axis=0).astype(np.float64) + 1e-3
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
    got = gaussian_loglik(F, means, variances, log_weights=log_weights, thresholds=thresholds,
                          full=full, backend=backend)
    if full:
        assert got.loglik.dtype == dtype and got.loglik.shape == (n, C)
        np.testing.assert_allclose(got.loglik, ref[0], **TOL[dtype])
    else:
        assert got.loglik is None
    np.testing.assert_allclose(got.max, ref[1], **TOL[dtype])
    np.testing.assert_array_equal(got.argmax, ref[2])
    np.testing.assert_allclose(got.logsumexp, ref[3], **TOL[dtype])
    np.testing.assert_array_equal(got.all_below, ref[4])


def test_reductions_match_their_definitions(backend, rng):
    F, means, variances, log_weights = gaussian_problem(rng, 200, 7, 5, np.float64)
    thresholds = np.full(7, -9.0)
    r = gaussian_loglik(F, means, variances, log_weights=log_weights, thresholds=thresholds,
                        backend=backend)
    np.testing.assert_allclose(r.max, r.loglik.max(axis=1), **TOL[np.dtype(np.float64)])
    np.testing.assert_array_equal(r.argmax, r.loglik.argmax(axis=1))
    np.testing.assert_allclose(r.logsumexp, logsumexp(r.loglik + log_weights, axis=1),
                               **TOL[np.dtype(np.float64)])
    np.testing.assert_array_equal(r.all_below, (r.loglik < thresholds).all(axis=1))
    assert 0 < r.all_below.sum() < 200


def test_zero_weight_classes_are_ignored_by_logsumexp(backend, rng):
    F, means, variances, _ = gaussian_problem(rng, 20, 3, 4, np.float64)
    log_weights = np.array([-np.inf, 0.0, -np.inf])
    r = gaussian_loglik(F, means, variances, log_weights=log_weights, backend=backend)
    np.testing.assert_allclose(r.logsumexp, r.loglik[:, 1], **TOL[np.dtype(np.float64)])


# Relative margin beyond which a decision must equal the reference's: the accuracy target
# plus the direct sum's own rounding (float32 decisions are always taken on direct values).
DECISION_MARGIN = {np.dtype(np.float32): 1e-12, np.dtype(np.float64): 2.0**-40 + 1e-13}


def _adversarial(kind, dtype, rng):
    """(F, means, variances, log_weights) for one hard case."""
    d, C = 23, 9
    if kind == "offset":  # a large common offset: ||F||^2 >> ||F - mu||^2
        offset = 1e3 if dtype == np.float32 else 1e6
        means = offset + rng.normal(size=(C, d))
        F = offset + rng.normal(size=(301, d))
    elif kind == "at_means":  # points equal to means (distance exactly 0), duplicated means
        means = rng.normal(scale=5.0, size=(C, d))
        means[4] = means[1]
        F = np.r_[means, means, rng.normal(scale=5.0, size=(40, d))]
    elif kind == "near_ties":  # points midway between pairs of means: ties up to rounding
        centre = rng.normal(scale=3.0, size=(C // 2, d))
        step = rng.normal(scale=0.5, size=(C // 2, d))
        means = np.r_[centre + step, centre - step, centre[:1] + 7.0]
        F = np.r_[centre, centre + 1e-7 * step, centre - 1e-9 * step,
                  rng.normal(scale=3.0, size=(30, d))]
    else:
        raise ValueError(kind)
    F, means = F.astype(dtype), means.astype(dtype)
    variances = np.full(C, 0.7)
    variances[::3] = 1.3  # unequal variances make ties depend on the log-normaliser too
    if kind == "near_ties":
        variances[:] = 0.9
    log_weights = np.log(rng.dirichlet(np.ones(C)))
    return F, means, variances, log_weights


def _reference_margins(L, thresholds):
    """Per row: the gap between the best and the second-best class, and the smallest
    distance to a threshold, relative to |L| (the reference's own decision margins)."""
    top2 = np.sort(L, axis=1)[:, -2:] if L.shape[1] > 1 else np.c_[L - np.inf, L]
    gap = (top2[:, 1] - top2[:, 0]) / np.maximum(np.abs(top2[:, 1]), 1e-300)
    near = np.min(np.abs(L - thresholds) / np.maximum(np.abs(L), 1e-300), axis=1)
    return gap, near


@pytest.mark.parametrize("kind", ["offset", "at_means", "near_ties"])
def test_adversarial_inputs_match_the_reference(backend, dtype, rng, kind):
    F, means, variances, log_weights = _adversarial(kind, dtype, rng)
    C = means.shape[0]
    L_ref = numpy_.gaussian_loglik(F, means, variances, log_weights, np.full(C, np.inf),
                                   True)[0].astype(np.float64)
    # thresholds exactly at reference values, and a hair either side of them
    pick = L_ref[np.arange(C) % F.shape[0], np.arange(C)]
    for thresholds in (pick, pick * (1 + 1e-9), pick * (1 - 1e-9)):
        ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
        got = gaussian_loglik(F, means, variances, log_weights=log_weights,
                              thresholds=thresholds, backend=backend)
        np.testing.assert_allclose(got.loglik, ref[0], **TOL[dtype])
        np.testing.assert_allclose(got.max, ref[1], **TOL[dtype])
        np.testing.assert_allclose(got.logsumexp, ref[3], **TOL[dtype])
        # the reference computes its float32 L in float64 before rounding: compare with that
        L64 = numpy_.gaussian_loglik(F.astype(np.float64), means.astype(np.float64),
                                     variances, log_weights, thresholds, True)[0]
        gap, near = _reference_margins(L64, thresholds)
        decided = gap > DECISION_MARGIN[dtype]
        np.testing.assert_array_equal(got.argmax[decided], ref[2][decided])
        # where the reference's top two are within the margin, either of them is right
        tied = ~decided
        best = L64[tied].max(axis=1)
        assert (L64[tied, got.argmax[tied]]
                >= best - 4 * DECISION_MARGIN[dtype] * np.abs(best)).all()
        clear = near > DECISION_MARGIN[dtype]
        np.testing.assert_array_equal(got.all_below[clear], ref[4][clear])
        if kind != "offset":  # duplicated means and exact ties: the first index, as NumPy
            np.testing.assert_array_equal(got.argmax, ref[2])


def test_exact_ties_take_the_first_class(backend, dtype, rng):
    means = rng.normal(size=(5, 8)).astype(dtype)
    means[3] = means[1]
    means[4] = means[1]
    F = np.r_[means[[1, 1, 2]], rng.normal(size=(3, 8)).astype(dtype)]
    got = gaussian_loglik(F, means, np.ones(5), backend=backend)
    assert got.argmax[0] == 1 and got.argmax[1] == 1 and got.argmax[2] == 2
    np.testing.assert_array_equal(got.argmax, got.loglik.argmax(axis=1))


def test_reductions_do_not_depend_on_the_matrix_being_asked_for(backend, dtype, rng):
    """full=True and full=False give the same reductions bit for bit, and (float64) the
    all_below flags equal ``loglik < thresholds`` even with thresholds taken from the
    matrix itself: the estimator reads its thresholds off earlier calls."""
    for kind in ("offset", "at_means", "near_ties"):
        F, means, variances, log_weights = _adversarial(kind, dtype, rng)
        first = gaussian_loglik(F, means, variances, log_weights=log_weights, backend=backend)
        thresholds = np.asarray(first.loglik, dtype=np.float64)[
            np.arange(means.shape[0]) * 7 % F.shape[0], np.arange(means.shape[0])]
        full = gaussian_loglik(F, means, variances, log_weights=log_weights,
                               thresholds=thresholds, full=True, backend=backend)
        reduced = gaussian_loglik(F, means, variances, log_weights=log_weights,
                                  thresholds=thresholds, full=False, backend=backend)
        for name in ("max", "argmax", "logsumexp", "all_below"):
            np.testing.assert_array_equal(getattr(full, name), getattr(reduced, name),
                                          err_msg=f"{kind}: {name}")
        if dtype == np.float64:
            np.testing.assert_array_equal(first.loglik, full.loglik)
            np.testing.assert_array_equal(full.all_below,
                                          (full.loglik < thresholds).all(axis=1))
            np.testing.assert_array_equal(full.argmax, full.loglik.argmax(axis=1))
            np.testing.assert_array_equal(full.max, full.loglik.max(axis=1))


def test_a_row_gets_the_same_values_alone_and_in_a_batch(backend, rng):
    F, means, variances, log_weights = _adversarial("offset", np.float64, rng)
    F = np.r_[F, F, F]  # several tiles
    batch = gaussian_loglik(F, means, variances, log_weights=log_weights, backend=backend)
    for i in (0, 5, 300, 301, len(F) - 1):
        alone = gaussian_loglik(F[i:i + 1], means, variances, log_weights=log_weights,
                                backend=backend)
        np.testing.assert_array_equal(alone.loglik[0], batch.loglik[i])
        assert alone.logsumexp[0] == batch.logsumexp[i]


@pytest.mark.parametrize("log_weights", [[-np.inf, 0.0, -np.inf, 0.5], [-np.inf] * 4,
                                         [-1e300, 0.0, 3.0, -np.inf]])
def test_logsumexp_with_zero_weights(backend, dtype, rng, log_weights):
    F, means, variances, _ = gaussian_problem(rng, 37, 4, 6, dtype)
    log_weights = np.array(log_weights)
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, np.full(4, np.inf), True)
    got = gaussian_loglik(F, means, variances, log_weights=log_weights, backend=backend)
    np.testing.assert_allclose(got.logsumexp, ref[3], **TOL[dtype])


def test_many_classes_near_the_maximum(backend, dtype, rng):
    """Every class within a few nats of the best: the logsumexp needs all the terms."""
    means = rng.normal(scale=0.05, size=(300, 4)).astype(dtype)
    F = rng.normal(scale=0.05, size=(50, 4)).astype(dtype)
    variances = rng.uniform(0.5, 2.0, size=300)
    log_weights = np.log(rng.dirichlet(np.ones(300)))
    thresholds = np.full(300, -3.0)
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
    got = gaussian_loglik(F, means, variances, log_weights=log_weights, thresholds=thresholds,
                          backend=backend)
    np.testing.assert_allclose(got.logsumexp, ref[3], **TOL[dtype])
    np.testing.assert_array_equal(got.argmax, ref[2])
    np.testing.assert_array_equal(got.all_below, ref[4])
