r"""Set-up of the GEMM-form Gaussian log-likelihood kernel (the cython backend,
``csrc/cpu/gaussian_kernels_impl.h``).

The kernel computes

.. math::

    \tilde L_{ic} = 2 h_c \tilde P_{ic} - h_c (f_i + m_c) - \ell_c, \qquad
    h_c = \frac{1}{2\sigma_c^2}, \quad \ell_c = \frac{d}{2}\log(2\pi\sigma_c^2),

from one product :math:`\tilde P = F_c M_c^T` (BLAS, or the FMA tiles) of centred rows
and means per tile of rows, with :math:`f_i = \lVert F_{c,i}\rVert^2`,
:math:`m_c = \lVert M_{c,c}\rVert^2` in double, and accept :math:`\tilde L_{ic}` only where
its error bound

.. math::

    \beta_{ic} = K h_c (f_i + m_c) + 4u'\lvert\ell_c\rvert, \qquad
    K = 2\bigl((d + 6)u + (d + 20)u'\bigr)

is at most ``acc`` :math:`\lvert\tilde L_{ic}\rvert`; every other entry is recomputed by
the direct double sum of squared differences (:math:`L^{dir}`, what the direct kernels compute).
:math:`u` is the unit roundoff of the input dtype, :math:`u' = 2^{-53}`.

Why :math:`\lvert\tilde L - L^{dir}\rvert \le \beta` (first order in u; the factor 2 in K
covers the higher-order terms many times over). Centring: z is the mean of the class
means, :math:`F_{c,i} = \mathrm{fl}(F_i - z)` and :math:`M_{c,c} = \mathrm{fl}(\mu_c - z)`
rounded to the input dtype; each component is off by at most
:math:`(u + u')(\lvert F_{c,it}\rvert + \lvert M_{c,ct}\rvert)`, which moves
:math:`\lVert F_{c,i} - M_{c,c}\rVert^2` from the true :math:`s_{ic}` by at most
:math:`2(u + u')(s + 2(f + m)) \le (6u + 6u')(f + m)` (as :math:`s \le 2(f + m)`).
GEMM: :math:`\lvert\tilde P - P\rvert \le \gamma_d \sum_t\lvert F_{c,it} M_{c,ct}\rvert
\le d u (f + m) / 2` for any summation order, FMA or not. The double norms add
:math:`d u'(f + m)`, forming :math:`\tilde L` in double adds at most
:math:`8u' h(f + m) + 2u'\lvert\ell\rvert` (:math:`2\lvert P\rvert \le f + m`), the
rounded :math:`h_c` another :math:`2u' h (f + m)`, and the direct sum itself is within
:math:`(d + 2)u'\,2h(f + m)` of the exact value. Together
:math:`((d + 6)u + (3d + 16)u') h(f + m) + 2u'\lvert\ell\rvert`, below :math:`\beta`
(the :math:`u'` terms only matter for float64, where :math:`u = u'`). Inputs whose norms
could overflow the product (or d = 0) take the direct kernel.

Decisions (first argmax, all-below-threshold) use the final values; near-ties within the
bounds are recomputed directly (see csrc/cpu/gaussian_kernels.h), so they equal the direct
kernel's decisions, and the NumPy reference's whenever its margin exceeds the bound.

The logsumexp is formed from :math:`\tilde L` and :math:`\beta` alone and certified as a
whole: with :math:`e_c = \exp(\tilde L_c + \log w_c - \max)`, its error is at most
:math:`\varphi(b_k)\sum_c e_c\beta_c / \sum_c e_c` (the values': :math:`b_k` the largest
kept :math:`\beta_c` and :math:`\varphi(x) = (e^x - 1)/x`, as :math:`e^t - 1 \le
t\varphi(b_k)` on :math:`[0, b_k]`, Jensen's inequality below; the kernel takes
:math:`\varphi(b_k) \le 1 + (e - 2)b_k` while :math:`b_k \le 1`, and :math:`b_k` itself
beyond) plus the terms left out, the exp
approximation's relative error and the summation's rounding; where that exceeds ``acc``
:math:`\lvert\mathrm{lse}\rvert`, the terms carrying most of it and those whose
:math:`\beta_c` exceeds 1 take their direct values (then all of them). Terms more than
``cut`` below the largest are left out: a left-out term's true value is at most
:math:`e^{-\mathrm{cut} + \beta_{max}}` of the largest, and the kept sum at least
:math:`e^{-\beta_{max}}` of it, so they add at most :math:`C e^{-\mathrm{cut} +
2\beta_{max}}`; the cut is that quarter of the absolute accuracy the output needs (at most
``LSE_CUT_MAX``). The exp is a branch-free polynomial that vectorises (x = k ln 2 + r, with
:math:`|r| \le \ln 2 / 2` exact to 0.35u by a Cody-Waite split, e^r by its Taylor polynomial
in Estrin's scheme, 2^k from the rounding constant's bits). Its relative error,
``EXP_POLY_EPS``, is the Taylor remainder :math:`|r|^{n+1} e^{|r|}/(n+1)!` plus the
evaluation's rounding, at most :math:`\gamma_{2n} e^{2|r|}` as for Horner's form (no term
:math:`a_i r^i` passes more than 2n roundings: 12 for degree 12, counting those of
:math:`r^2, r^4, r^8`), and the coefficients' and r's rounding: degree 12 in double
2.6e-16 + 5.4e-15 + 3e-16 < 2^-47; degree 10 3.1e-13 + 4.4e-15 + 3e-16 < 2^-41 and degree 9
9.7e-12 + 4e-15 + 3e-16 < 2^-36 (float64 inputs take the lowest degree whose error fits a
quarter of the accuracy |lse| needs: degree 9 from |lse| >= 64, 10 from 2); degree 7 in
double 7.4e-9 < 2^-26; degree 6 in float32
(16 lanes a vector, for float32 inputs where |lse| leaves room) 1.7e-7 + 1.5e-6 < 2^-19.
The 8-row lanes (at most 16 classes) take the log of their sums (in [1, C]) by a
branch-free polynomial too: x = 2^e m, :math:`m \in [\sqrt{1/2}, \sqrt 2)` exact from the
bits, ln m = 2 atanh t with t = (m - 1) / (m + 1) (m - 1 exact; t within 2u + u^2 of
itself, |t| <= 0.1716), the series to t^19 in Horner form in t^2 (remainder
:math:`2|t|^{21} / (21 (1 - t^2)) < 10^{-17}`; Horner's and the coefficients' rounding,
relative :math:`\gamma_{22}`, and t's, relative 1.03 (2u + u^2), of ln m <= 0.35), plus
e ln 2 by the Cody-Waite split (e ln2_hi exact, ln2_lo's rounding below 2^-85 |e|) and
the final addition's rounding, u |ln x| <= 7u on [1, 2^10): an absolute error below
9u + 7u + 1e-17 < 2^-48 there, ``LOG_POLY_EPS``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Relative accuracy of an accepted GEMM-form value (else it is recomputed directly):
# 100x below the float64 test tolerance (1e-10); float32 keeps 3x below its 1e-4 (the
# sgemm bound cannot certify much better without recomputing most entries).
ACC = {np.dtype(np.float32): 2.0**-15, np.dtype(np.float64): 2.0**-40}
# logsumexp terms are never kept further than this below the row's largest (they add
# less than C e^-64 relative); the kernel cuts closer where the output needs less.
LSE_CUT_MAX = 64.0
# Relative error bounds of the kernel's exp polynomials on [-65, 0] (module docstring);
# tests/backends/test_cython_gaussian_gemm.py checks them against libm.
EXP_POLY_EPS = {"double": 2.0**-47, "double-10": 2.0**-41, "double-9": 2.0**-36,
                "double-low": 2.0**-26, "float": 2.0**-19}
# Absolute error bound of the kernel's log polynomial on [1, 2^10) (module docstring);
# checked against long double in tests/backends/test_cython_gaussian_gemm.py.
LOG_POLY_EPS = 2.0**-48
# Norm sums above these could overflow the product in the input dtype: direct kernel.
NORM_LIMIT = {np.dtype(np.float32): 1e37, np.dtype(np.float64): 1e300}
# Rows per tile: the tile's (rows x C) products stay near TILE_BYTES (L2-sized), but at
# least MIN_TILE_ROWS rows (a BLAS call on fewer rows runs far below its peak: many classes)
# while the tile stays under MAX_TILE_BYTES.
TILE_BYTES = 256 * 1024
MIN_TILE_ROWS = 64
MAX_TILE_BYTES = 16 * 1024 * 1024
UNIT_ROUNDOFF_DOUBLE = 2.0**-53
# Means centred per block of this many components (class_terms)
CENTRE_BLOCK_ELEMS = 1 << 16


def margin_constant(dtype, d: int) -> float:
    """K of the bound beta = K h_c (f_i + m_c) + 4 u' |l_c| (see the module docstring)."""
    u = float(np.finfo(dtype).eps) / 2
    return 2.0 * ((d + 6) * u + (d + 20) * UNIT_ROUNDOFF_DOUBLE)


def tile_rows(n_classes: int, dtype) -> int:
    """Rows per tile, a multiple of 8 in [8, 256], from the classes and the dtype."""
    row_bytes = max(1, n_classes * np.dtype(dtype).itemsize)
    rows = max(TILE_BYTES // row_bytes, min(MIN_TILE_ROWS, MAX_TILE_BYTES // row_bytes))
    return int(min(256, max(8, rows - rows % 8)))


@dataclass(frozen=True)
class ClassTerms:
    """Per-class arrays of the GEMM form (float64 unless noted), for one call."""

    center: np.ndarray      # z, (d,)
    centred: np.ndarray | None  # M_c = fl(mu - z) in the input dtype, (C, d); or None
    sqnorm: np.ndarray      # m_c = ||M_c||^2
    h: np.ndarray           # h_c = 1 / (2 var_c)
    k: np.ndarray           # h_c m_c + l_c
    kh: np.ndarray          # K h_c
    km: np.ndarray          # K h_c m_c + 4 u' |l_c|
    log_norm: np.ndarray    # l_c = d/2 log(2 pi var_c)
    acc: float
    tile: int
    norm_limit: float       # f_i + max m_c above this: use the direct kernel


def class_terms(means: np.ndarray, variances: np.ndarray,
                keep_centred: bool = True) -> ClassTerms | None:
    """The per-class terms, or None when the GEMM form does not apply (use the direct
    kernel): no classes or d = 0. The kernels check the rows' norms against
    ``norm_limit`` themselves and report when the direct kernel must run instead.
    ``keep_centred=False``: ``centred`` is None (the caller centres the means where it
    needs them, as fl(mu - z) in float64 rounded to the dtype: the same values)."""
    dtype = means.dtype
    n_classes, d = means.shape
    if n_classes == 0 or d == 0:
        return None
    center = means.mean(axis=0, dtype=np.float64)
    step = max(1, CENTRE_BLOCK_ELEMS // d)
    # without the copy, one block buffer: a fresh (C, d) array costs its page faults (as
    # much as its pass at C = 10,000, d = 512)
    centred = np.empty((n_classes if keep_centred else min(step, n_classes), d), dtype=dtype)
    sqnorm = np.empty(n_classes)
    # in blocks of rows: a float64 copy of all the means would cost more than the product
    # of a few thousand rows with them (page faults included)
    for start in range(0, n_classes, step):
        rows = min(step, n_classes - start)
        block = centred[start:start + rows] if keep_centred else centred[:rows]
        block[...] = means[start:start + rows] - center  # in float64, then rounded
        sqnorm[start:start + rows] = np.einsum("cd,cd->c", block, block, dtype=np.float64)
    if not keep_centred:
        centred = None
    var = np.asarray(variances, dtype=np.float64)
    h = 1.0 / (2.0 * var)
    log_norm = 0.5 * d * np.log(2.0 * np.pi * var)
    K = margin_constant(dtype, d)
    return ClassTerms(
        center=center, centred=centred, sqnorm=sqnorm, h=h,
        k=h * sqnorm + log_norm, kh=K * h,
        km=K * h * sqnorm + 4 * UNIT_ROUNDOFF_DOUBLE * np.abs(log_norm),
        log_norm=log_norm, acc=ACC[dtype], tile=tile_rows(n_classes, dtype),
        norm_limit=NORM_LIMIT[dtype] - float(sqnorm.max()))

