"""Shared test and benchmark helpers: the backend x dtype matrix, tolerances, data."""
from __future__ import annotations

import numpy as np

from .backends import available_backends, registered_backends

BACKENDS = registered_backends()
DTYPES = (np.float32, np.float64)
# Every backend against the NumPy reference (DESIGN: float64 1e-10, float32 1e-4 relative).
TOL = {
    np.dtype(np.float32): dict(rtol=1e-4, atol=1e-6),
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
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
