"""Metrics as transforms around the squared-Euclidean kernels (:data:`METRICS`)."""
from __future__ import annotations

import numpy as np

from .._array import array_module, to_host


class Metric:
    """A metric as transforms around the squared-Euclidean kernels: ``rows(X, name,
    kernels)`` before the search (``kernels``: the searching backend's KernelSet, whose
    compiled ``unit_rows`` it may use, or None), ``distance(D)`` and ``squared(D)`` (the
    metric's distance and its square) of the kernels' squared distances D after."""

    def __init__(self, name, rows, distance, squared):
        self.name, self.rows, self.distance, self.squared = name, rows, distance, squared


UNIT_ROWS_BLOCK = 4096  # rows normalised at a time: the float64 working copy stays small


def _unit_rows(X, name, kernels=None):
    """X's rows scaled to unit length (norms in float64), in X's dtype; a zero row is an
    error (it has no direction). Each row's result depends only on the row: by the
    backend's ``unit_rows`` where it has one (host arrays), else by the NumPy reference
    here, in blocks of UNIT_ROWS_BLOCK rows."""
    xp = array_module(X)
    if getattr(kernels, "unit_rows", None) is not None and xp is np:
        out, zero = kernels.unit_rows(X)
    else:
        out, zero = _unit_rows_reference(X, xp)
    if bool(zero.any()):
        rows = [int(i) for i in to_host(xp.nonzero(zero)[0][:5])]
        raise ValueError(f"metric='cosine' needs nonzero rows: {name} rows {rows} "
                         f"({int(zero.sum())} in all) are all zeros, and have no direction")
    return out


def _unit_rows_reference(X, xp):
    """(X's rows divided by their float64 norms in X's dtype, which rows are all zeros:
    those stay zeros), a block at a time."""
    out = xp.empty_like(X)
    zero = xp.zeros(X.shape[0], dtype=bool)
    for start in range(0, X.shape[0], UNIT_ROWS_BLOCK):
        block = X[start:start + UNIT_ROWS_BLOCK].astype(xp.float64)
        norms = xp.sqrt((block ** 2).sum(axis=1))
        is_zero = norms == 0
        zero[start:start + UNIT_ROWS_BLOCK] = is_zero
        out[start:start + UNIT_ROWS_BLOCK] = block / xp.where(is_zero, 1.0, norms)[:, None]
    return out, zero


def _identity(X, name=None, kernels=None):
    return X


def _half(D):
    return D / 2


def _half_squared(D):
    return (D / 2) ** 2


# name -> Metric. LoOP's probabilistic distance is the Euclidean one under "sqeuclidean"
# and "euclidean" alike (it averages squared distances), and 1 - cos under "cosine".
METRICS = {
    "sqeuclidean": Metric("sqeuclidean", _identity, _identity, _identity),
    "euclidean": Metric("euclidean", _identity, lambda D: array_module(D).sqrt(D), _identity),
    "cosine": Metric("cosine", _unit_rows, _half, _half_squared),
}


def check_metric(metric) -> Metric:
    """The :class:`Metric` named ``metric``, or an error naming those supported."""
    if isinstance(metric, str) and metric in METRICS:
        return METRICS[metric]
    raise ValueError(f"unsupported metric {metric!r}: fastzsl supports {tuple(METRICS)} "
                     "(squared Euclidean, Euclidean and cosine distances)")
