"""Shared test and benchmark helpers: the backend x dtype matrix, tolerances, data."""
from __future__ import annotations

import numpy as np

from .backends import available_backends, registered_backends

BACKENDS = registered_backends()
DTYPES = (np.float32, np.float64)
# Every backend against the NumPy reference: float64 1e-10, float32 1e-4 relative.
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
