"""k-nearest-neighbour search: FAISS-like index objects and the ``knn`` function.

Two kinds of index share one interface (``ntotal``, ``d``, ``search(queries, k)``):

- :class:`ExactIndex` keeps the reference matrix and runs a backend's blocked brute-force
  kernel (exact squared Euclidean distances as sums of squared differences, so duplicates
  are exactly 0 apart; ties go to the lower index; deterministic).
- :class:`FaissIndex` wraps faiss ``IndexFlatL2`` (``method="faiss"``: exact up to float32
  rounding of the ||q||^2 - 2 q.r + ||r||^2 expansion) or ``IndexIVFFlat``
  (``method="ivf"``: approximate, tuned by ``nlist`` and ``nprobe``).
"""
from __future__ import annotations

import logging
import math

import numpy as np

from ._array import like
from ._optional import import_faiss
from ._validation import as_float_matrix, check_k, check_same_width
from .backends import get_backend, thread_limits

logger = logging.getLogger(__name__)

METHODS = ("exact", "faiss", "ivf")


class ExactIndex:
    """Exact brute-force index on one of fastzsl's backends.

    Parameters
    ----------
    reference : array-like of shape (n_reference, d)
        float32 or float64 (other numeric dtypes are converted, see ``fastzsl`` docs).
    backend : str, default="auto"
        A name from :func:`fastzsl.available_backends`.
    """

    def __init__(self, reference, *, backend="auto"):
        self.reference = as_float_matrix(reference, "reference")
        self.kernels = get_backend(backend)

    @property
    def ntotal(self) -> int:
        return self.reference.shape[0]

    @property
    def d(self) -> int:
        return self.reference.shape[1]

    def search(self, queries, k, *, exclude_self=False, progress=False):
        """The k nearest reference rows of each query.

        Parameters
        ----------
        queries : array-like of shape (n_queries, d)
        k : int
            1 <= k <= ntotal (ntotal - 1 with ``exclude_self``).
        exclude_self : bool, default=False
            Query row i is reference row i and is left out of its own neighbours (by index:
            a duplicate of it still counts, at distance 0). Needs n_queries == ntotal.
        progress : bool, default=False
            Show a progress bar (queries are searched in chunks of SEARCH_CHUNK rows).

        Returns
        -------
        D : ndarray of shape (n_queries, k)
            Squared Euclidean distances, ascending, in the reference's dtype.
        I : ndarray of shape (n_queries, k), int64
            Reference row indices; equal distances list the lower index first.
        """
        Q = _check_queries(queries, self, exclude_self)
        k = check_k(k, self.ntotal, exclude_self=exclude_self)
        if exclude_self and self.kernels.knn_self is not None and _same_rows(Q, self.reference):
            result = _self_join(self.kernels.knn_self, Q, k, progress)
            if result is not None:
                return result

        def search_chunk(chunk, offset):
            return self.kernels.knn(chunk, self.reference, k, offset if exclude_self else -1)

        return _search_in_chunks(search_chunk, Q, k, Q.dtype, progress)


class FaissIndex:
    """faiss ``IndexFlatL2`` or ``IndexIVFFlat`` behind the :class:`ExactIndex` interface.

    faiss computes in float32: float64 references are converted, and distances come back
    as float64 copies of float32 results. When faiss has GPU support and sees a GPU
    (``faiss.get_num_gpus() > 0``), the index moves there (``GpuIndexFlatL2`` /
    ``GpuIndexIVFFlat``), on the reference's device for torch and CuPy inputs, else GPU 0.

    Parameters
    ----------
    reference : array-like of shape (n_reference, d)
    method : {"faiss", "ivf"}, default="faiss"
    nlist : int, optional
        IVF lists; default ``round(4 sqrt(n))``, capped so each list can hold 39 points.
    nprobe : int, optional
        IVF lists visited per query; default ``min(nlist, max(8, nlist // 16))`` (mean
        LoOP error against exact kNN below 0.01 in benchmarks/bench_ivf.py).
    seed : int, default=0
        Seed of the IVF k-means.
    gpu : bool, optional
        Use a faiss GPU index: default when one is available; True insists on it.
    """

    def __init__(self, reference, *, method="faiss", nlist=None, nprobe=None, seed=0,
                 gpu=None):
        faiss = import_faiss()
        self.gpu_device = _faiss_gpu_device(faiss, reference, gpu)
        self.reference = as_float_matrix(reference, "reference")
        self.dtype = self.reference.dtype
        data = np.ascontiguousarray(self.reference, dtype=np.float32)
        n, d = data.shape
        if method == "faiss":
            self.index = faiss.IndexFlatL2(d)
        elif method == "ivf":
            nlist = check_k(self.default_nlist(n) if nlist is None else nlist, n, name="nlist")
            quantizer = faiss.IndexFlatL2(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, nlist)
            self.index.cp.seed = seed
            self.index.train(data)
            self.index.nprobe = int(nprobe) if nprobe is not None else self.default_nprobe(nlist)
            self._quantizer = quantizer  # faiss does not own it; keep it alive
        else:
            raise ValueError(f"FaissIndex method must be 'faiss' or 'ivf', got {method!r}")
        self.method = method
        if self.gpu_device is not None:
            self._gpu_resources = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._gpu_resources, self.gpu_device, self.index)
        self.index.add(data)

    @staticmethod
    def default_nlist(n_reference: int) -> int:
        """IVF lists for ``n_reference`` points: round(4 sqrt(n)), at least 39 points a list."""
        return max(1, min(round(4 * math.sqrt(n_reference)), n_reference // 39))

    @staticmethod
    def default_nprobe(nlist: int) -> int:
        """Lists visited per query: nlist // 16, at least 8 (all lists if fewer).

        From the study in benchmarks/bench_ivf.py (results/ivf-cpu-2core.md): the smallest
        simple fraction that keeps LoOP's mean error against exact kNN well under 0.01 both
        on real mapped features (clustered) and on Gaussian blobs (hard for IVF). The floor
        of 8 lists keeps small indexes (a few thousand points, ~40 points a list) finding
        k = 20 neighbours for every query.
        """
        return min(nlist, max(8, nlist // 16))

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    @property
    def d(self) -> int:
        return self.index.d

    def search(self, queries, k, *, exclude_self=False, progress=False):
        """Same contract as :meth:`ExactIndex.search` (IVF may miss true neighbours)."""
        Q = _check_queries(queries, self, exclude_self)
        k = check_k(k, self.ntotal, exclude_self=exclude_self)

        def search_chunk(chunk, offset):
            chunk = np.ascontiguousarray(chunk, dtype=np.float32)
            if not exclude_self:
                D, I = self.index.search(chunk, k)
            else:
                D, I = _drop_self(*self.index.search(chunk, k + 1), k, offset)
            missing = (I < 0).any(axis=1)
            if missing.any():
                # IVF visits only nprobe lists; faiss pads a short result with -1.
                nlist, nprobe = self.index.nlist, self.index.nprobe
                raise ValueError(
                    f"the IVF index found fewer than k = {k} neighbours for {missing.sum()} of "
                    f"{len(I)} queries (nlist = {nlist}, nprobe = {nprobe}, {self.ntotal} "
                    "points): raise nprobe or lower nlist")
            np.maximum(D, 0, out=D)  # the norms expansion can round just below zero
            return D, I

        return _search_in_chunks(search_chunk, Q, k, self.dtype, progress)


# Queries per kernel call: enough parallel work per call, and a progress bar that moves.
SEARCH_CHUNK = 8192


def _same_rows(Q, reference):
    return Q is reference or (Q.shape == reference.shape and np.array_equal(Q, reference))


def _self_join(knn_self, X, k, progress):
    """A backend's one-call self-join (None if it declines), with a progress bar on request."""
    bar = None

    def advance(fraction):
        nonlocal bar
        if bar is None:
            from tqdm.auto import tqdm
            bar = tqdm(total=X.shape[0], desc=f"kNN k={k} (self-join)", unit="point")
        bar.update(round(fraction * X.shape[0]) - bar.n)

    try:
        return knn_self(X, k, advance if progress else None)
    finally:
        if bar is not None:
            bar.close()


def _search_in_chunks(search_chunk, Q, k, dtype, progress):
    """Run ``search_chunk(rows, first_row_index)`` over Q in chunks into one (D, I)."""
    n = Q.shape[0]
    if n <= SEARCH_CHUNK:
        D, I = search_chunk(Q, 0)
        return D.astype(dtype, copy=False), I.astype(np.int64, copy=False)
    from tqdm.auto import tqdm

    D = np.empty((n, k), dtype=dtype)
    I = np.empty((n, k), dtype=np.int64)
    with tqdm(total=n, desc=f"kNN k={k}", unit="query", disable=not progress) as bar:
        for start in range(0, n, SEARCH_CHUNK):
            stop = min(start + SEARCH_CHUNK, n)
            D[start:stop], I[start:stop] = search_chunk(Q[start:stop], start)
            bar.update(stop - start)
    return D, I


def _faiss_gpu_device(faiss, reference, gpu):
    """The GPU a faiss index should live on, or None for the CPU."""
    has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if gpu and not has_gpu:
        raise RuntimeError("gpu=True but faiss has no GPU support or sees no GPU; "
                           "install faiss-gpu (pip install 'fastzsl[gpu]') on a CUDA machine")
    if gpu is False or not has_gpu:
        return None
    device = getattr(reference, "device", None)
    index = getattr(device, "index", None)  # torch.device
    if index is None:
        index = getattr(device, "id", None)  # cupy.cuda.Device
    return int(index) if isinstance(index, int) else 0


def _drop_self(D, I, k, offset=0):
    """From k+1 results per row, remove the row's own index (or the last if absent)."""
    rows = offset + np.arange(I.shape[0])[:, None]
    is_self = I == rows
    # Keep the first k columns that are not self; where self is absent, that drops column k.
    keep = np.where(is_self.any(axis=1, keepdims=True), ~is_self, np.arange(k + 1) < k)
    D = D[keep].reshape(-1, k)
    I = I[keep].reshape(-1, k)
    return D, I


def _check_queries(queries, index, exclude_self):
    Q = as_float_matrix(queries, "queries")
    check_same_width(Q, index.d, "queries", "the reference")
    if exclude_self and Q.shape[0] != index.ntotal:
        raise ValueError(
            "exclude_self=True needs the queries to be the reference rows themselves, "
            f"but there are {Q.shape[0]} queries and {index.ntotal} reference rows"
        )
    if Q.dtype != index.reference.dtype:
        Q = Q.astype(index.reference.dtype)
    return Q


def make_index(reference, *, method="exact", backend="auto", nlist=None, nprobe=None):
    """Build the index for ``method`` ("exact", "faiss" or "ivf") over ``reference``."""
    if method in ("exact", "auto"):
        return ExactIndex(reference, backend=backend)
    if method in ("faiss", "ivf"):
        if backend not in ("auto", None):
            raise ValueError(
                f"backend={backend!r} applies to method='exact'; method={method!r} runs on faiss"
            )
        return FaissIndex(reference, method=method, nlist=nlist, nprobe=nprobe)
    raise ValueError(f"unknown kNN method {method!r}; choose one of {METHODS}")


def knn(queries, reference, k, *, exclude_self=False, backend="auto", method="exact",
        nlist=None, nprobe=None, progress=False, n_jobs=None):
    """k nearest neighbours of each query row among the reference rows.

    Parameters
    ----------
    queries : array-like of shape (n_queries, d)
        NumPy, torch or CuPy array; the results come back in the same kind.
    reference : array-like of shape (n_reference, d)
    k : int
        Neighbours per query, 1 <= k <= n_reference (n_reference - 1 with ``exclude_self``).
    exclude_self : bool, default=False
        ``queries`` are the reference rows; row i is left out of its own neighbours.
    backend : str, default="auto"
        Kernel set for ``method="exact"``; see :func:`fastzsl.available_backends`.
    method : {"exact", "faiss", "ivf"}, default="exact"
        ``"exact"``: fastzsl's blocked brute force (exact, ties to the lower index).
        ``"faiss"``: faiss ``IndexFlatL2``. ``"ivf"``: faiss ``IndexIVFFlat`` (approximate).
    nlist, nprobe : int, optional
        IVF parameters (see :class:`FaissIndex`).
    progress : bool, default=False
        Show a progress bar over the queries.
    n_jobs : int, optional
        Threads for this call (OpenMP, BLAS, Numba, faiss), restored afterwards: None
        leaves the current settings (all cores, or an outer ``threadpoolctl`` limit), -1
        uses all cores.

    Returns
    -------
    D : array of shape (n_queries, k)
        Squared Euclidean distances in ascending order, in the input float dtype.
    I : array of shape (n_queries, k), int64
        Indices into ``reference``.

    Examples
    --------
    >>> import numpy as np, fastzsl
    >>> X = np.array([[0.0], [1.0], [3.0]])
    >>> D, I = fastzsl.knn(X, X, 1, exclude_self=True, backend="numpy")
    >>> D.ravel().tolist(), I.ravel().tolist()
    ([1.0, 1.0, 4.0], [1, 0, 1])
    """
    with thread_limits(n_jobs, backend=backend if method in ("exact", "auto") else "auto",
                       knn=method):
        index = make_index(reference, method=method, backend=backend, nlist=nlist,
                           nprobe=nprobe)
        D, I = index.search(queries, k, exclude_self=exclude_self, progress=progress)
    return like(D, queries), like(I, queries)
