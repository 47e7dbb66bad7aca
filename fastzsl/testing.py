"""Shared test and benchmark helpers: the backend x dtype matrix, tolerances, data."""
from __future__ import annotations

import numpy as np

from .backends import available_backends, registered_backends

BACKENDS = registered_backends()
DTYPES = (np.float32, np.float64)
# Every backend against the NumPy reference, from what the kernels guarantee:
# - kNN distances are decided and summed in double, then rounded once to the input dtype:
#   two such results differ by at most one ulp of the output (2^-23 relative in float32,
#   2^-52 in float64) plus 2 gamma_d in double (2.3e-13 at d = 1024).
# - Gaussian log-likelihoods are certified to ACC relative accuracy (2^-15 for float32,
#   2^-40 for float64, backends/_gaussian_gemm.py) or recomputed directly in double, and
#   rounded once to the output dtype; near L = 0 the double sum -s h - l cancels, an
#   absolute (d + 4) 2^-53 (s h + |l|) <= 1e-12 for the test problems (d <= 512, both
#   terms below 100).
# - LoOP outputs are float64 from those distances: the relative 1e-12 of the distances
#   passes through square roots, means and ratios (condition <= 1) and erf(x / (nPLOF
#   sqrt 2)) (slope <= 0.6 / nPLOF, nPLOF >= 0.1 on the test data sets) -> 1e-11.
# So rtol is the largest of these per dtype, atol the cancellation and LoOP terms.
TOL = {
    np.dtype(np.float32): dict(rtol=2.0**-15 + 2.0**-22, atol=1e-11),
    np.dtype(np.float64): dict(rtol=2.0**-40 + 2.0**-51, atol=1e-11),
}


def backend_is_available(name: str) -> bool:
    return name in available_backends()


def assert_knn_equal(D, I, D_ref, I_ref, *, rtol, atol=0.0):
    """Distances equal within tolerance; neighbour sets equal up to ties.

    A row may list different indices only where the reference has ties: every index in
    one list and not the other must sit at a distance equal (within tolerance) to the
    k-th distance of the reference row.
    """
    D, I, D_ref, I_ref = (np.asarray(a) for a in (D, I, D_ref, I_ref))
    assert D.shape == D_ref.shape and I.shape == I_ref.shape, (D.shape, D_ref.shape)
    np.testing.assert_allclose(D, D_ref, rtol=rtol, atol=atol)
    for row in range(I.shape[0]):
        mine, ref = set(I[row].tolist()), set(I_ref[row].tolist())
        if mine == ref:
            continue
        kth = D_ref[row, -1]
        tol = atol + rtol * abs(kth)
        for idx in mine ^ ref:
            where = np.flatnonzero(I[row] == idx) if idx in mine else np.flatnonzero(I_ref[row] == idx)
            dist = (D[row] if idx in mine else D_ref[row])[where[0]]
            assert abs(dist - kth) <= tol, (
                f"row {row}: neighbour {idx} at distance {dist} differs from the reference "
                f"and is not tied with its k-th distance {kth}")


def make_blobs(n, d, *, n_centers=10, spread=1.0, scale=10.0, seed=0, dtype=np.float32):
    """Seeded Gaussian blobs: ``n`` points around ``n_centers`` centres, and their labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=scale, size=(n_centers, d))
    labels = rng.integers(n_centers, size=n)
    X = centers[labels] + rng.normal(scale=spread, size=(n, d))
    return X.astype(dtype), labels


def loop_datasets() -> dict:
    """Seeded float64 data sets on which LoOP is well defined and tie-free at the k-th
    neighbour: blobs, outliers around a core, duplicates, a heavy-tailed cloud."""
    rng = np.random.default_rng(7)
    blobs, _ = make_blobs(400, 5, n_centers=4, seed=3, dtype=np.float64)
    outliers = np.r_[rng.normal(size=(300, 3)), rng.uniform(-8, 8, size=(20, 3))]
    base = rng.normal(size=(150, 4))
    # Duplicates in pairs and triples: fewer copies than neighbours, so no expected pdist is 0.
    duplicates = np.r_[base, base[:60], base[:25]]
    # (A lattice is left out on purpose: ties at the k-th neighbour make the neighbour set,
    # and so LoOP, depend on tie-breaking, which PyNomaly leaves to argpartition.)
    heavy_tailed = rng.standard_t(2, size=(250, 30))
    return {"blobs": blobs, "outliers": outliers, "duplicates": duplicates,
            "heavy_tailed": heavy_tailed}


def gaussian_problem(rng, n, C, d, dtype):
    """Random (F, means, variances, log_weights) for gaussian_loglik."""
    F = rng.normal(size=(n, d)).astype(dtype)
    means = rng.normal(size=(C, d)).astype(dtype)
    variances = rng.uniform(0.5, 2.0, size=C)
    log_weights = np.log(rng.dirichlet(np.ones(C)))
    return F, means, variances, log_weights


# ------------------------------------------------------------------ rounding-error bounds
#
# Tolerances in the tests come from these bounds, not from what one machine printed. They
# follow Higham, "Accuracy and Stability of Numerical Algorithms" (2nd ed., 2002): each
# floating-point operation is correctly rounded, fl(a op b) = (a op b)(1 + d), |d| <= u, and a
# sum or dot product of n terms computed in ANY order, blocking or with FMA satisfies
# |fl(sum) - sum| <= gamma_(n-1) * sum |terms| (Lemma 3.1 and Eq. 3.5). So the bounds hold
# whatever kernel family, cache size or thread count the BLAS picks.

#: Unit roundoff u of each float dtype (half the machine epsilon).
UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0 ** -24, np.dtype(np.float64): 2.0 ** -53}


def bfloat16_round(x):
    """float32 values rounded to bfloat16 as the BF16 kNN screen rounds them (to nearest
    even at 8 significant bits; magnitudes below FLT_MIN to 0), returned as float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    out = bits.view(np.float32).copy()
    out[np.abs(x) < np.finfo(np.float32).tiny] = 0.0
    return out


def unit_roundoff(dtype) -> float:
    return UNIT_ROUNDOFF[np.dtype(dtype)]


def gamma(n: int, dtype) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of n chained roundings."""
    nu = n * unit_roundoff(dtype)
    if nu >= 1:
        raise ValueError(f"gamma_{n} is unbounded in {np.dtype(dtype)} (n u = {nu})")
    return nu / (1 - nu)


def matmul_error_bound(A, B, dtype):
    """Elementwise bound on |fl(A @ B) - A @ B| for a product computed in ``dtype`` from
    inputs exactly representable in it: gamma_K |A| @ |B| (Higham Eq. 3.13), K = inner size.
    Independent of how the BLAS blocks, orders or threads the K terms."""
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    return gamma(A.shape[-1], dtype) * (np.abs(A) @ np.abs(B))


def assert_within_bound(got, exact, bound, what="result"):
    """|got - exact| <= bound elementwise, with a message naming the worst element."""
    got = np.asarray(got, np.float64)
    exact = np.broadcast_to(np.asarray(exact, np.float64), got.shape)
    bound = np.broadcast_to(np.asarray(bound, np.float64), got.shape)
    excess = np.abs(got - exact) - bound
    if excess.size and not (excess <= 0).all():
        worst = np.unravel_index(np.nanargmax(np.where(np.isnan(excess), np.inf, excess)),
                                 excess.shape)
        raise AssertionError(
            f"{what}: {int((~(excess <= 0)).sum())} of {excess.size} elements outside the "
            f"rounding-error bound; worst at {worst}: got {got[worst]!r}, exact "
            f"{exact[worst]!r}, |difference| {abs(got[worst] - exact[worst]):.3g} > bound "
            f"{bound[worst]:.3g}")


class Bounded:
    """Running error analysis (Higham section 3.3): a float64 ``value`` (the exact result,
    up to float64 rounding) and ``err``, an elementwise bound on |computed - exact| for the
    same computation carried out with unit roundoff ``u``. Operations propagate the inputs'
    errors exactly (first and second order) and add the rounding of the operation itself.
    """

    def __init__(self, value, err=0.0, *, u):
        self.value = np.asarray(value, np.float64)
        self.err = np.broadcast_to(np.asarray(err, np.float64), self.value.shape).copy()
        self.u = float(u)

    # -- leaves
    @classmethod
    def exact(cls, value, *, u):
        """An input exactly representable in the computing precision."""
        return cls(value, 0.0, u=u)

    @classmethod
    def rounded(cls, value, *, u):
        """An input cast into the computing precision: one rounding."""
        value = np.asarray(value, np.float64)
        return cls(value, u * np.abs(value), u=u)

    def _new(self, value, err):
        return Bounded(value, err, u=self.u)

    def _lift(self, other):
        return other if isinstance(other, Bounded) else Bounded.exact(other, u=self.u)

    def _rounding(self, value, err):
        # the operation's own rounding, of the computed value |value| + err at most
        return err + self.u * (np.abs(value) + err)

    # -- elementwise
    def __add__(self, other):
        o = self._lift(other)
        v = self.value + o.value
        return self._new(v, self._rounding(v, self.err + o.err))

    def __sub__(self, other):
        o = self._lift(other)
        v = self.value - o.value
        return self._new(v, self._rounding(v, self.err + o.err))

    def __neg__(self):
        return self._new(-self.value, self.err)

    def __mul__(self, other):
        o = self._lift(other)
        v = self.value * o.value
        e = np.abs(self.value) * o.err + np.abs(o.value) * self.err + self.err * o.err
        return self._new(v, self._rounding(v, e))

    def __truediv__(self, other):
        # |a'/s' - a/s| <= (e_a + |a/s| e_s) / (s - e_s) for s > e_s
        o = self._lift(other)
        s = np.abs(o.value)
        if not (s > o.err).all():
            raise ValueError("divisor not bounded away from zero by its error")
        v = self.value / o.value
        e = (self.err + np.abs(v) * o.err) / (s - o.err)
        return self._new(v, self._rounding(v, e))

    def sqrt(self):
        # |sqrt(w') - sqrt(w)| = |w' - w| / (sqrt(w') + sqrt(w)) <= e_w / sqrt(w)
        if not (self.value > 0).all():
            raise ValueError("sqrt bound needs a positive argument")
        v = np.sqrt(self.value)
        return self._new(v, self._rounding(v, self.err / v))

    def exp(self, ulps=4):
        """exp with the argument's error carried (e^(x+e) - e^x = e^x (e^e - 1)) and the
        function's own error: ``ulps`` units in the last place, 2 u each. NumPy states at
        most 2.52 (float32 exp) and 3.83 (float32 log) ulp for its SIMD versions, and
        glibc, SLEEF (torch) and SVML are within 4 ulp for float64, hence the default 4."""
        v = np.exp(self.value)
        e = v * np.expm1(self.err)
        return self._new(v, e + 2 * ulps * self.u * (v + e))

    def log(self, ulps=4):
        # |log(a') - log(a)| <= -log(1 - e/a) for a > e
        if not (self.value > self.err).all():
            raise ValueError("log bound needs an argument bounded away from zero")
        v = np.log(self.value)
        e = -np.log1p(-self.err / self.value)
        return self._new(v, e + 2 * ulps * self.u * (np.abs(v) + e))

    def tanh(self, ulps=4):
        """tanh is 1-Lipschitz; its own error ``ulps`` ulp as for exp."""
        v = np.tanh(self.value)
        return self._new(v, self.err + 2 * ulps * self.u * (np.abs(v) + self.err))

    def max(self, axis):
        """Row maximum: 1-Lipschitz in the largest error, no rounding."""
        return self._new(self.value.max(axis=axis), self.err.max(axis=axis))

    def maximum(self, c):
        """max(x, c) for an exact constant c: 1-Lipschitz, no rounding."""
        return self._new(np.maximum(self.value, c), self.err)

    def minimum(self, c):
        return self._new(np.minimum(self.value, c), self.err)

    # -- reductions (any order, blocking or FMA: gamma bounds)
    def sum(self, axis):
        axes = (axis,) if np.isscalar(axis) else tuple(axis)
        n = int(np.prod([self.value.shape[a] for a in axes]))
        v = self.value.sum(axis=axes)
        e = self.err.sum(axis=axes) + gamma(max(n - 1, 1), _dtype_of(self.u)) * (
            (np.abs(self.value) + self.err).sum(axis=axes))
        return self._new(v, e)

    def matmul(self, other):
        o = self._lift(other)
        v = self.value @ o.value
        a, b = np.abs(self.value), np.abs(o.value)
        e = a @ o.err + self.err @ b + self.err @ o.err
        e = e + gamma(self.value.shape[-1], _dtype_of(self.u)) * ((a + self.err) @ (b + o.err))
        return self._new(v, e)

    def __getitem__(self, key):
        return self._new(self.value[key], self.err[key])

    def reshape(self, *shape):
        return self._new(self.value.reshape(*shape), self.err.reshape(*shape))


def affine_with_bound(x, weight, bias=None):
    """``x @ weight.T + bias`` (a torch Linear layer) as a Bounded: the bias is one more
    term of each dot product, so the product's gamma counts K + 1 terms."""
    weight = np.asarray(weight, np.float64)
    rows = x.value.shape[0]
    if bias is None:
        return x.matmul(Bounded.exact(weight.T, u=x.u))
    xa = Bounded(np.c_[x.value, np.ones(rows)], np.c_[x.err, np.zeros(rows)], u=x.u)
    wa = np.vstack([weight.T, np.asarray(bias, np.float64)[None, :]])
    return xa.matmul(Bounded.exact(wa, u=x.u))


def coates_ng_features_with_bound(est, images, dtype, standardize=True):
    """The exact features of ``images`` (float64) and a bound on how far the encoder's
    computation in ``dtype`` can be from them, by running error analysis of each step the
    encoder takes (fastzsl.testing.Bounded): patch mean and centring, the contrast scale,
    the product with E = [[W D^T], [-m W D^T]] (E rounded once into ``dtype``), rectifying,
    pooling sums, offsets and standardisation. The bound holds for any batch size, thread
    count and BLAS kernel, because it bounds every order of summation."""
    from .features import extract_patches

    u = unit_roundoff(dtype)
    images = np.asarray(images)
    P = extract_patches(images, est.patch_size, est.stride, dtype=np.float64)
    n, rows, cols, d = P.shape
    # the encoder casts the pixels into dtype: exact for integers (below 2^24) and floats
    # no wider than dtype, one rounding otherwise
    exact_input = (images.dtype.kind in "ui" and np.abs(P).max() < 2 ** 24) or (
        images.dtype.kind == "f" and images.dtype.itemsize <= np.dtype(dtype).itemsize)
    x = (Bounded.exact if exact_input else Bounded.rounded)(P, u=u)
    c = x - x.sum(axis=-1).reshape(n, rows, cols, 1) / d
    var = (c * c).sum(axis=-1) / d
    scale = (var + 10.0).sqrt()
    xh = c / scale.reshape(n, rows, cols, 1)
    xa = Bounded(np.concatenate([xh.value, np.ones((n, rows, cols, 1))], axis=-1),
                 np.concatenate([xh.err, np.zeros((n, rows, cols, 1))], axis=-1), u=u)
    m = est.mean_patch_.astype(np.float64)
    wd = est.whiten_.astype(np.float64) @ est.centroids_.astype(np.float64).T
    E = Bounded.rounded(np.vstack([wd, -(m @ wd)[None, :]]), u=u)
    z = xa.reshape(n * rows * cols, d + 1).matmul(E).reshape(n, rows, cols, -1)
    a = float(est.alpha)  # 0.25: exact, as are the offsets (count x alpha)
    hr, hc = (rows + 1) // 2, (cols + 1) // 2
    parts = []
    for rs, cs in [(slice(0, hr), slice(0, hc)), (slice(0, hr), slice(hc, None)),
                   (slice(hr, None), slice(0, hc)), (slice(hr, None), slice(hc, None))]:
        count = len(range(rows)[rs]) * len(range(cols)[cs])
        pos = z[:, rs, cs].maximum(a).sum(axis=(1, 2)) - count * a
        neg = -(z[:, rs, cs].minimum(-a).sum(axis=(1, 2))) - count * a
        parts += [pos, neg]
    pooled = Bounded(np.concatenate([p.value for p in parts], axis=1),
                     np.concatenate([p.err for p in parts], axis=1), u=u)
    if not standardize:
        return pooled
    # the fitted mean and scale are stored in the model's dtype: exact inputs here
    return (pooled - est.feature_mean_.astype(np.float64)) / est.feature_scale_.astype(
        np.float64)


def assert_coates_ng_features_exact(got, est, images, standardize=True, what="features"):
    """``got``, computed in its own dtype, is within that dtype's rounding bound of the
    exact features; the float64 reference's own rounding is bounded the same way."""
    exact = coates_ng_features_with_bound(est, images, got.dtype, standardize)
    own = coates_ng_features_with_bound(est, images, np.float64, standardize)
    assert_within_bound(got, exact.value, exact.err + own.err, what)


def _dtype_of(u):
    for dtype, roundoff in UNIT_ROUNDOFF.items():
        if roundoff == u:
            return dtype
    raise ValueError(f"no float dtype has unit roundoff {u}")
