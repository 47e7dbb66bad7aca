"""The cython backend's GEMM-form Gaussian kernel: where it hands over to the direct kernel
(norms that could overflow) and how few entries it recomputes on typical data."""
import numpy as np
import pytest

from fastzsl import gaussian_loglik
from fastzsl.backends import numpy_
from fastzsl.testing import TOL, backend_is_available, gamma, gaussian_problem, make_blobs


def _gemm_kernel():
    """The cython backend's GEMM-form entry point (returns its direct-evaluation count);
    the numba backend has only the direct kernel."""
    from fastzsl.backends import cython_
    if cython_.KERNELS is None:
        pytest.skip("cython backend not built")
    return cython_._gaussian_cpu.gaussian_loglik_gemm


def _direct_route(route, C, d):
    """Whether the cython kernel takes its direct route (every value by direct
    differences) for C classes in d dimensions under the ``gaussian_route`` fixture's
    ``route``."""
    from fastzsl._ext import gaussian_cpu
    return (route == "direct" and C <= gaussian_cpu.DIRECT_ROUTE_MAX_CLASSES
            and d <= gaussian_cpu.DIRECT_ROUTE_MAX_D)


def _far_float32(seed, C, d, n, scale, variances=(0.5, 2.0)):
    """Far classes in float32: means ``scale`` x standard normal, each row one unit from
    its class's mean (F, means, variances, log_weights, the rows' classes)."""
    rng = np.random.default_rng(seed)
    means = (scale * rng.standard_normal((C, d))).astype(np.float32)
    y = rng.integers(0, C, n)
    F = (means[y] + rng.standard_normal((n, d))).astype(np.float32)
    return (F, means, rng.uniform(*variances, C), np.log(rng.dirichlet(np.ones(C))), y)


def _centred_sqnorms(F, terms):
    """The kernel's squared norms of the rows, centred on the means' mean and rounded to
    F's dtype, summed in double."""
    centred = (F.astype(np.float64) - terms.center).astype(F.dtype).astype(np.float64)
    return (centred ** 2).sum(1)


@pytest.mark.parametrize("name", ["cython", "numba"])
def test_huge_norms_fall_back_to_the_direct_kernel(name, dtype, rng, gaussian_route):
    """Norms that could overflow the product take cython's direct kernel (its direct route
    needs no product: it keeps them); both compiled backends match the reference there."""
    scale = 1e19 if dtype == np.float32 else 1e152
    F, means, variances, log_weights = gaussian_problem(rng, 20, 3, 5, dtype)
    F, means = (F * scale).astype(dtype), (means * scale).astype(dtype)
    variances = variances * scale**2
    if name == "cython":
        out = _gemm_kernel()(F, means, variances, log_weights, np.full(3, np.inf), True)
        assert (out is not None) == _direct_route(gaussian_route, 3, 5)
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


@pytest.mark.parametrize("C, d", [(1, 3), (700, 200), (3000, 50)])
def test_class_terms_without_the_centred_copy_are_the_same(C, d, dtype, rng):
    """class_terms(keep_centred=False) (the tiles' route: they centre while packing) gives
    every term bit for bit as with the (C, d) copy, which is then not made; several blocks
    of CENTRE_BLOCK_ELEMS and a short last one included."""
    from fastzsl.backends._gaussian_gemm import class_terms
    means = (3.0 + rng.standard_normal((C, d))).astype(dtype)
    variances = rng.uniform(0.5, 2.0, C)
    kept, lean = class_terms(means, variances), class_terms(means, variances, keep_centred=False)
    assert lean.centred is None and kept.centred.shape == (C, d)
    np.testing.assert_array_equal(kept.centred, (means - kept.center).astype(dtype))
    for name in ("center", "sqnorm", "h", "k", "kh", "km", "log_norm"):
        np.testing.assert_array_equal(getattr(lean, name), getattr(kept, name), err_msg=name)
    assert (lean.acc, lean.tile, lean.norm_limit) == (kept.acc, kept.tile, kept.norm_limit)


@pytest.mark.parametrize("kind", ["double", "double-10", "double-9", "double-low", "float"])
def test_the_exp_polynomials_keep_their_error_bounds(kind):
    """The kernels' vectorised exp against libm on a dense grid of [-65, 0]: within the bound
    derived in _gaussian_gemm (EXP_POLY_EPS) plus libm's own error (1 ulp of the result)."""
    from fastzsl.backends._gaussian_gemm import EXP_POLY_EPS
    _gemm_kernel()
    from fastzsl.backends import cython_
    x = np.linspace(-65.0, 0.0, 400_001)
    # "float" rounds x to float32 before its polynomial (that error is in the kernel's sum)
    at = x.astype(np.float32).astype(np.float64) if kind == "float" else x
    got = cython_._gaussian_cpu.exp_poly(x, kind)
    rel = np.abs(got - np.exp(at)) / np.exp(at)
    assert rel.max() <= EXP_POLY_EPS[kind] + 2.0**-52


def test_the_log_polynomial_keeps_its_error_bound():
    """The 8-row lanes' vectorised log against long double on [1, 2^10) (dense near 1, at
    the mantissa's split at sqrt 2 and at powers of two): within the bound derived in
    _gaussian_gemm (LOG_POLY_EPS), which is the kernel's own constant."""
    from fastzsl.backends._gaussian_gemm import LOG_POLY_EPS
    _gemm_kernel()
    from fastzsl.backends import cython_
    assert cython_._gaussian_cpu.LOG_POLY_EPS == LOG_POLY_EPS
    rng = np.random.default_rng(0)
    powers = 2.0 ** np.arange(10)
    split = np.sqrt(2.0) * powers
    x = np.concatenate([
        np.linspace(1.0, 17.0, 400_001), np.exp(rng.uniform(0.0, np.log(1023.9), 200_000)),
        powers, np.nextafter(powers[1:], 0), np.nextafter(powers, np.inf),
        split, np.nextafter(split, 0), np.nextafter(split, np.inf)])
    got = cython_._gaussian_cpu.log_poly(x)
    exact = np.log(x.astype(np.longdouble))
    assert float(np.abs(got - exact).max()) <= LOG_POLY_EPS


def test_the_logsumexp_certificate_covers_the_worst_case_of_the_values():
    """FZ_CERTIFIED on random and adversarial terms (a light term carrying the largest bound,
    equal bounds, bounds up to and past 1 nat): values off by t_c in [-b_c, b_c] move
    log sum_c e_c e^t_c by at most max(log(sum e e^b / sum e), -log(sum e e^-b / sum e))
    (the extremes, in long double): the certificate never certifies a budget below that,
    and certifies 1.75 err / sum wherever bk <= 1 (the factor 1 + (e - 2) bk; the old 2
    did not)."""
    try:
        from fastzsl._ext.gaussian_cpu import lse_certified
    except ImportError:
        pytest.skip("gaussian_cpu is not built")
    rng = np.random.default_rng(11)
    # the ratio worst / (err / sum) nears phi(bk) for a light term carrying bk alone
    light = [(np.array([1.0, 1e-6]), np.array([0.0, bk]))
             for bk in np.linspace(0.01, 1.5, 150)]
    for trial in range(4000 + len(light)):
        if trial < len(light):
            e, b = light[trial]
        else:
            C = int(rng.integers(1, 9))
            e = np.exp(rng.uniform(-6.0, 0.0, C))
            scale = (1e-4, 0.05, 0.5, 1.0, 1.5)[trial % 5]
            b = scale * (np.ones(C) if trial % 3 == 0 else rng.uniform(0.0, 1.0, C))
        el, bl = e.astype(np.longdouble), b.astype(np.longdouble)
        worst = max(np.log((el * np.exp(bl)).sum() / el.sum()),
                    -np.log((el * np.exp(-bl)).sum() / el.sum()))
        err, total, bk = float((e * b).sum()), float(e.sum()), float(b.max())
        assert not lse_certified(err, total, float(worst) * (1 - 1e-9), bk), (e, b)
        if bk <= 1.0:
            assert lse_certified(err, total, 1.75 * err / total, bk), (e, b)


@pytest.mark.parametrize("regime", ["broad", "far"])
@pytest.mark.parametrize("d", [16, 50, 200, 512])
# C: classes screened one by one (<= 16), one logsumexp block (<= 64), several blocks
@pytest.mark.parametrize("C", [10, 40, 400])
def test_every_class_within_a_few_nats_takes_the_vectorised_sum(regime, d, C, dtype,
                                                                gaussian_route):
    """Broad classes (standard normal rows and means: every class is a logsumexp term) and
    far ones: the reductions equal the reference's (TOL, from the accuracy targets 2^-15 /
    2^-40 with room for the reference's own rounding), argmax exactly where the reference's
    top two are further apart than that, and the certified sum needs few direct values
    (broad float32 at d = 512: the terms' bounds are near the target, and the certificate's
    factor 1 + (e - 2) bk, not 2, lets most rows certify without any). The direct route
    (C = 10 at d <= 200) computes every value directly."""
    gemm = _gemm_kernel()
    rng = np.random.default_rng(d)
    n = 300
    scale = 1.0 if regime == "broad" else 4.0
    means = (scale * rng.standard_normal((C, d))).astype(dtype)
    y = rng.integers(0, C, n)
    F = (means[y] * (regime == "far") + rng.standard_normal((n, d))).astype(dtype)
    variances = rng.uniform(0.5, 2.0, C)
    log_weights = np.log(rng.dirichlet(np.ones(C)))
    thresholds = np.full(C, np.inf)
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
    (L, mx, am, lse, below), n_direct = gemm(F, means, variances, log_weights, thresholds,
                                             False)
    from fastzsl.backends._gaussian_gemm import ACC
    np.testing.assert_allclose(lse, ref[3], **TOL[dtype])
    # the certified accuracy itself, plus the output's rounding (the reference's is far less)
    np.testing.assert_allclose(lse, ref[3], atol=0,
                               rtol=ACC[np.dtype(dtype)] + np.finfo(dtype).eps)
    np.testing.assert_allclose(mx, ref[1], **TOL[dtype])
    top2 = np.sort(ref[0].astype(np.float64), axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4 * np.abs(top2[:, 1])
    np.testing.assert_array_equal(am[clear], ref[2][clear])
    if _direct_route(gaussian_route, C, d):
        assert n_direct == n * C
        return
    if dtype == np.float64 or d <= 50:
        limit = 3 * n
    elif regime == "far":  # float32, d >= 200: the own class's bound exceeds the target
        limit = n
    else:
        limit = n // 4
    assert n_direct <= limit, n_direct


def test_rows_far_from_every_class_whose_bounds_pass_one_nat(dtype, gaussian_route):
    """Rows far from every mean (3e3 standard deviations, 3e8 for float64): every value's
    bound beta is above 1 nat, where the logsumexp certificate's factor 1 + (e - 2) bk no
    longer holds and max beta certifies it instead (or the terms are refined).
    The reductions still equal the reference's, with equal and unequal variances, on
    either route."""
    gemm = _gemm_kernel()
    rng = np.random.default_rng(5)
    C, d, n = 12, 16, 200
    means = rng.standard_normal((C, d)).astype(dtype)
    scale = 3e3 if dtype == np.float32 else 3e8
    F = (scale * rng.standard_normal((n, d))).astype(dtype)
    variances = np.r_[rng.uniform(0.9, 1.1, C // 2), rng.uniform(0.02, 0.05, C - C // 2)]
    log_weights = np.log(rng.dirichlet(np.ones(C)))
    thresholds = np.full(C, np.inf)
    from fastzsl.backends._gaussian_gemm import class_terms
    terms = class_terms(means, variances)
    fn = _centred_sqnorms(F, terms)
    assert (terms.kh.max() * fn + terms.km.max() > 1.0).all()  # the regime under test
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
    (_, mx, am, lse, _), _ = gemm(F, means, variances, log_weights, thresholds, False)
    np.testing.assert_allclose(lse, ref[3], **TOL[dtype])
    np.testing.assert_allclose(mx, ref[1], **TOL[dtype])
    np.testing.assert_array_equal(am, ref[2])


@pytest.mark.parametrize("d", [1, 9, 40, 256])
def test_the_direct_route_takes_every_value_by_direct_differences(d, dtype, direct_route):
    """Far classes (scale 8: the GEMM form's bound is far above a direct sum's error
    there) with at most 16 classes: every value is a direct sum of squared differences in
    double, within gamma_(d + 6) of the exact value's terms (s h + |ln|, in long double),
    the argmax is the exact values' first largest and the count says every entry."""
    gemm = _gemm_kernel()
    rng = np.random.default_rng(d)
    C, n = 12, 203
    means = (8.0 * rng.standard_normal((C, d))).astype(dtype)
    F = (means[rng.integers(0, C, n)] + rng.standard_normal((n, d))).astype(dtype)
    variances = rng.uniform(0.5, 2.0, C)
    log_weights = np.log(rng.dirichlet(np.ones(C)))
    thresholds = np.full(C, np.inf)
    (L, mx, am, lse, _), n_direct = gemm(F, means, variances, log_weights, thresholds,
                                         True)
    assert n_direct == n * C
    diff = F.astype(np.longdouble)[:, None, :] - means.astype(np.longdouble)[None]
    sh = (diff ** 2).sum(-1) / (2 * variances.astype(np.longdouble))
    ln = 0.5 * d * np.log(2 * np.pi * variances.astype(np.longdouble))
    exact = -sh - ln
    bound = gamma(d + 6, np.float64) * (sh + np.abs(ln))
    assert (np.abs(L.astype(np.longdouble) - exact) <= bound + np.spacing(
        np.abs(L)).astype(np.longdouble) * (dtype == np.float32)).all()
    np.testing.assert_array_equal(am, np.argmax(exact, axis=1))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_the_direct_route_hands_over_a_value_that_is_not_finite_in_any_lane(bad, dtype,
                                                                            direct_route):
    """The direct route takes rows eight at a time (two halves of four lanes): a NaN or
    infinity in any of the eight rows hands the call over (None), and the public call
    then names F."""
    gemm = _gemm_kernel()
    rng = np.random.default_rng(7)
    F, means, variances, log_weights = gaussian_problem(rng, 16, 5, 9, dtype)
    thresholds = np.full(5, np.inf)
    for row in range(8, 16):  # the second group of eight rows, every lane
        G = F.copy()
        G[row, 4] = bad
        assert gemm(G, means, variances, log_weights, thresholds, False) is None, row
        with pytest.raises(ValueError, match="F"):
            gaussian_loglik(G, means, variances, log_weights=log_weights, backend="cython")


@pytest.mark.parametrize("zero_weights", [False, True])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("C", [10, 40])
def test_an_argmax_entry_beyond_the_accuracy_target_takes_its_direct_value(C, full,
                                                                          zero_weights,
                                                                          gaussian_route):
    """Far classes in float32: the row's own class has a product bound beta above the
    accuracy target (acc |L~|), so its value is the direct double sum rounded once to
    float32 (within 1 ulp of the float64 reference's), whether the classes fit the 8-row
    lanes of fz_gauss_lanes (C <= 16) or not, with the matrix or without. Small weights
    (-300 nats each) put |logsumexp| far above |L|: it certifies without direct values, so
    only the value's own bound can send the row to them; with every other class's weight
    zero, half the rows' own class is no logsumexp term at all. (The direct route, C = 10,
    computes every value directly.)"""
    from fastzsl.backends._gaussian_gemm import ACC, class_terms
    gemm = _gemm_kernel()
    F, means, variances, log_weights, _ = _far_float32(C + 1, C, 32, 400, 8.0)
    log_weights -= 300.0
    if zero_weights:
        log_weights[::2] = -np.inf
    thresholds = np.full(C, np.inf)
    ref = numpy_.gaussian_loglik(F.astype(np.float64), means.astype(np.float64), variances,
                                 log_weights, thresholds, True)
    terms = class_terms(means, variances)
    am = ref[2]
    beta = terms.kh[am] * _centred_sqnorms(F, terms) + terms.km[am]
    need = beta > 2 * ACC[np.dtype(np.float32)] * np.abs(ref[1])
    assert need.mean() > 0.9  # the regime under test
    (_, mx, got_am, _, _), _ = gemm(F, means, variances, log_weights, thresholds, full)
    np.testing.assert_array_equal(got_am, am)
    np.testing.assert_array_max_ulp(mx[need], ref[1][need].astype(np.float32), maxulp=1)


@pytest.mark.parametrize("C", [10, 40])
def test_the_matrix_holds_the_direct_value_of_every_entry_beyond_the_accuracy_target(C):
    """Far classes in float32 at d = 1024: the product bound beta of many entries exceeds
    the accuracy target, not only that of the row's own class. The reductions need a
    direct value for the entries that may matter (the own class); the matrix, when asked for,
    holds the direct value of every such entry, in the 8-row lanes of fz_gauss_lanes
    (C <= 16) as in the one-row path: each within 1 ulp of the float64 reference's."""
    from fastzsl.backends._gaussian_gemm import ACC, class_terms
    gemm = _gemm_kernel()
    F, means, variances, log_weights, _ = _far_float32(C + 7, C, 1024, 200, 5.0, (0.5, 0.6))
    thresholds = np.full(C, np.inf)
    ref = numpy_.gaussian_loglik(F.astype(np.float64), means.astype(np.float64), variances,
                                 log_weights, thresholds, True)
    terms = class_terms(means, variances)
    beta = terms.kh[None, :] * _centred_sqnorms(F, terms)[:, None] + terms.km[None, :]
    # beta above twice the target on the reference's values: above it on L~ too
    need = beta > 2 * ACC[np.dtype(np.float32)] * np.abs(ref[0])
    others = np.arange(C)[None, :] != ref[2][:, None]
    assert need[others].mean() > 0.5  # the regime under test: not only the own class
    (L, mx, am, _, _), _ = gemm(F, means, variances, log_weights, thresholds, True)
    np.testing.assert_array_equal(am, ref[2])
    np.testing.assert_array_max_ulp(L[need], ref[0][need].astype(np.float32), maxulp=1)


@pytest.mark.parametrize("C", [10, 40, 400])
def test_a_kept_term_whose_bound_passes_one_nat_is_refined_alone(C):
    """Far classes in float32 at d = 512: the row's own class (the one term kept) has a
    bound beta just above 1 nat (sgemm's error grows with d and the norms), where only bk
    itself bounds the logsumexp's error. Refining that term certifies the sum; the other
    terms are never evaluated directly (at most 2 direct values per row: the term, then
    the argmax entry, whose bound also exceeds the float32 accuracy target)."""
    gemm = _gemm_kernel()
    n = 200
    F, means, variances, log_weights, y = _far_float32(C, C, 512, n, 5.0, (0.5, 0.6))
    thresholds = np.full(C, np.inf)
    from fastzsl.backends._gaussian_gemm import class_terms
    terms = class_terms(means, variances)
    own = terms.kh[y] * _centred_sqnorms(F, terms) + terms.km[y]
    assert (own > 1.0).all()  # the regime under test: every row's own term passes 1 nat
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
    (_, mx, am, lse, _), n_direct = gemm(F, means, variances, log_weights, thresholds, False)
    tol = TOL[np.dtype(np.float32)]
    np.testing.assert_allclose(lse, ref[3], **tol)
    np.testing.assert_allclose(mx, ref[1], **tol)
    np.testing.assert_array_equal(am, ref[2])
    assert n_direct <= 2 * n, n_direct


def test_a_logsumexp_near_zero_whose_values_carry_real_errors_is_certified(dtype):
    """Rows far from the means' centre (float32 1e3, float64 1e5), each about 0.4 from its
    own mean, variances 1 / (2 pi) in d = 2 (every log-normaliser 0): lse is near 0 (median
    |lse| 0.39; the rows below -ln C take the vectorised exp), while the float32 GEMM
    form's values carry real errors of tenths of a nat there, not just bounds (products of
    1000-long vectors). The certificate must refuse those values and the logsumexp match
    the reference's: one that ignored the values' bounds was off by 0.34 nat."""
    gemm = _gemm_kernel()
    rng = np.random.default_rng(5)
    C, n = 40, 64  # above 16 classes: the GEMM form on every route
    means = np.zeros((C, 2))
    far = 1e3 if dtype == np.float32 else 1e5
    means[:, 0] = np.where(np.arange(C) % 2, far, -far)
    means[:, 1] = 3.0 * np.arange(C)  # the other classes at least 28 nats below
    F = (means[rng.integers(0, C, n)] + 0.3 * rng.standard_normal((n, 2))).astype(dtype)
    means = means.astype(dtype)
    variances = np.full(C, 1.0 / (2.0 * np.pi))
    log_weights, thresholds = np.zeros(C), np.full(C, np.inf)
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, False)
    assert 0.1 < np.median(np.abs(ref[3])) < 2.0  # the regime under test
    (_, mx, am, lse, _), _ = gemm(F, means, variances, log_weights, thresholds, False)
    np.testing.assert_allclose(lse, ref[3], **TOL[dtype])
    np.testing.assert_array_equal(am, ref[2])


@pytest.mark.parametrize("full", [False, True])
def test_an_entry_above_its_threshold_far_below_the_row_max_is_found(full, dtype):
    """Far classes, C = 200 (blocks of 64 classes skipped on their maximum): one class's
    threshold is below every row's value there, far below each row's max, so every row
    has an entry that is not below its threshold (all_below False, as the reference says);
    the screen's block bound must count the block's smallest threshold, not only the max."""
    gemm = _gemm_kernel()
    rng = np.random.default_rng(3)
    C, d, n = 200, 16, 300
    means = (4.0 * rng.standard_normal((C, d))).astype(dtype)
    y = rng.integers(0, 100, n)  # rows of the first 100 classes: class 150 is far away
    F = (means[y] + rng.standard_normal((n, d))).astype(dtype)
    variances = rng.uniform(0.5, 2.0, C)
    log_weights = np.log(rng.dirichlet(np.ones(C)))
    thresholds = np.full(C, np.inf)
    thresholds[150] = -1e9
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
    assert not ref[4].any()
    assert (ref[0][:, 150] < ref[1] - 30).all()  # far below the max: no argmax candidate
    (_, mx, am, _, below), _ = gemm(F, means, variances, log_weights, thresholds, full)
    np.testing.assert_array_equal(below, ref[4])
    np.testing.assert_array_equal(am, ref[2])


@pytest.mark.parametrize("C,d", [(10, 16), (40, 50), (1000, 7)])
def test_every_product_route_gives_the_reference_reductions(f32_tiles, C, d, dtype,
                                                            gemm_route):
    """Products by BLAS, the AVX-512 and AVX2 tiles of knn_f32_tiles.h and their portable
    form (float32 and float64; the route knn_cpu.set_f32_tiles chooses, FASTZSL_TILES at
    import): the reductions equal the reference's (TOL; argmax and all_below exactly, their
    near-ties being decided on direct values), whatever the route (on the GEMM form, also
    at C = 10: the direct route needs no product)."""
    gemm = _gemm_kernel()
    rng = np.random.default_rng(C + d)
    means = (3.0 * rng.standard_normal((C, d))).astype(dtype)
    F = (means[rng.integers(0, C, 300)] + rng.standard_normal((300, d))).astype(dtype)
    variances = rng.uniform(0.5, 2.0, C)
    log_weights = np.log(rng.dirichlet(np.ones(C)))
    thresholds = np.full(C, -0.5 * d * (1 + np.log(2 * np.pi)))
    ref = numpy_.gaussian_loglik(F, means, variances, log_weights, thresholds, True)
    (L, mx, am, lse, below), _ = gemm(F, means, variances, log_weights, thresholds, True)
    np.testing.assert_allclose(L, ref[0], **TOL[np.dtype(dtype)])
    np.testing.assert_allclose(lse, ref[3], **TOL[np.dtype(dtype)])
    np.testing.assert_allclose(mx, ref[1], **TOL[np.dtype(dtype)])
    np.testing.assert_array_equal(am, ref[2])
    np.testing.assert_array_equal(below, ref[4])



def test_the_direct_route_crossover_is_the_one_chosen_for_this_cpu(rng):
    """The direct route's largest d (float32, float64) at import is the one chosen on CPUs
    of this one's vector kind (benchmarks/direct_route_crossover.py): AVX-512's where the
    CPU has AVX-512F, else AVX2's. Up to it every value is direct (n x C of them), one past
    it the GEMM form needs few (broad classes)."""
    from fastzsl._ext import gaussian_cpu, knn_cpu
    kinds = knn_cpu.tile_kernels()
    expected = gaussian_cpu.DIRECT_ROUTE_DEFAULTS["avx512" if "avx512" in kinds else "avx2"]
    assert gaussian_cpu.direct_route_max_d() == gaussian_cpu.direct_route_default() == expected
    for dtype, max_d in zip((np.float32, np.float64), expected):
        for d, all_direct in ((max_d, True), (max_d + 1, False)):
            F = rng.standard_normal((200, d)).astype(dtype)
            means = rng.standard_normal((10, d)).astype(dtype)
            _, n_direct = _gemm_kernel()(F, means, np.ones(10), np.zeros(10),
                                         np.full(10, np.inf), False)
            assert (n_direct == F.shape[0] * 10) == all_direct, (dtype, d, n_direct)
