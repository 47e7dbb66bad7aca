"""Step 4 of the features: the dictionary, by spherical k-means (gain-shape VQ)."""
from __future__ import annotations

import numpy as np

from .._progress import bar as progress_bar
from .._threads import imap_ordered, worker_count
from .patches import _rng

#: Scores (points x centroids) of one k-means GEMM: small enough to stay in cache.
KMEANS_GEMM_BYTES = 4 << 20


def _progress(total, desc, progress, unit):
    return progress_bar(total, desc, unit=unit, enabled=progress, leave=False)


def _normalize_rows(a, rng):
    """Unit-norm rows; a zero row becomes a random normal direction."""
    norms = np.linalg.norm(a, axis=1)
    zero = norms == 0
    if zero.any():
        a[zero] = rng.standard_normal((int(zero.sum()), a.shape[1]))
        norms[zero] = np.linalg.norm(a[zero], axis=1)
    a /= norms[:, None]
    return a


def spherical_kmeans(X, n_centroids, n_iter=50, random_state=None, *, n_jobs=None,
                     progress=False, chunk_rows=32768):
    r"""Spherical k-means (gain-shape vector quantisation; Coates & Ng 2012).

    Each point is assigned to the centroid of largest :math:`|D_j^\top x|`, with gain
    :math:`s = D_j^\top x`; each centroid becomes the normalised gain-weighted sum
    :math:`\sum_i s_i x_i` of its points.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Points (whitened patches); float32 or float64 (the dtype of the GEMMs).
    n_centroids : int
    n_iter : int, default=50
    random_state : int, numpy Generator or RandomState, optional
    n_jobs : int, optional
        Threads (default: all CPUs this process may use).
    progress : bool, default=False
        tqdm bar over iterations.
    chunk_rows : int, default=32768
        Points per task of a worker thread (each scores them in cache-sized GEMMs of about
        4 MiB and returns its partial sums). Results do not depend on ``n_jobs``.

    Returns
    -------
    centroids : ndarray of shape (n_centroids, d), X's dtype, unit-norm rows.

    Notes
    -----
    *Initialisation*: ``n_centroids`` distinct random points (with repetition only when
    ``n < n_centroids``), normalised; a zero point is replaced by a random normal direction.
    *Empty clusters* (no point assigned, or a zero gain-weighted sum) are re-initialised at
    the end of the iteration to a fresh random point, normalised, drawn from the same seeded
    generator, so they compete again in the next iteration.
    """
    from scipy import sparse

    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    X = np.ascontiguousarray(X)
    n, d = X.shape
    k = int(n_centroids)
    rng = _rng(random_state)
    gemm_rows = max(64, KMEANS_GEMM_BYTES // (k * X.itemsize))
    n_workers = worker_count(n_jobs)
    starts = range(0, n, chunk_rows)

    init = rng.choice(n, size=k, replace=n < k)
    D = _normalize_rows(X[init].astype(np.float64), rng)

    def partial(start):
        x = X[start:start + chunk_rows]
        labels = np.empty(len(x), dtype=np.intp)
        gains = np.empty(len(x), dtype=np.float64)
        for s in range(0, len(x), gemm_rows):  # scores stay in cache for the argmax
            z = x[s:s + gemm_rows] @ Dt
            rows = np.arange(len(z))
            amax = z.argmax(axis=1)
            amin = z.argmin(axis=1)
            zmax = z[rows, amax]
            zmin = z[rows, amin]
            pos = zmax >= -zmin
            labels[s:s + gemm_rows] = np.where(pos, amax, amin)
            gains[s:s + gemm_rows] = np.where(pos, zmax, zmin)
        # gain-weighted sums per centroid: S^T x with S (rows, k) one gain per row
        assign = sparse.csr_matrix((gains, labels, np.arange(len(x) + 1)), shape=(len(x), k))
        return np.asarray(assign.T @ x, dtype=np.float64), np.bincount(labels, minlength=k)

    with _progress(n_iter, "spherical k-means", progress, "iter") as bar:
        for _ in range(n_iter):
            Dt = np.ascontiguousarray(D.T, dtype=X.dtype)
            D = np.zeros((k, d))
            counts = np.zeros(k, dtype=np.int64)
            for sums, cnt in imap_ordered(partial, starts, n_workers):
                D += sums
                counts += cnt
            norms = np.linalg.norm(D, axis=1)
            empty = (counts == 0) | (norms == 0)
            norms[empty] = 1.0
            D /= norms[:, None]
            if empty.any():
                D[empty] = _normalize_rows(
                    X[rng.integers(0, n, int(empty.sum()))].astype(np.float64), rng)
            bar.update(1)
    return D.astype(X.dtype)
