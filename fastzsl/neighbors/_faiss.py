"""faiss indexes behind the exact index's interface (:class:`FaissIndex`)."""
from __future__ import annotations

import math

import numpy as np

from .._optional import import_faiss
from .._validation import as_float_matrix, check_k, check_option
from ._methods import FAISS_METHODS
from ._metrics import METRICS, check_metric
from ._search import _check_queries, _search_in_chunks


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
    metric : {"sqeuclidean", "euclidean", "cosine"}, default="sqeuclidean"
        As in :class:`ExactIndex` (faiss searches the transformed rows with IndexFlatL2).
    """

    def __init__(self, reference, *, method="faiss", nlist=None, nprobe=None, seed=0,
                 gpu=None, metric="sqeuclidean"):
        check_option(method, FAISS_METHODS, "FaissIndex method")
        faiss = import_faiss()
        self.metric = check_metric(metric).name
        self.gpu_device = _faiss_gpu_device(faiss, reference, gpu)
        self.reference = as_float_matrix(reference, "reference")
        self.dtype = self.reference.dtype
        data = np.ascontiguousarray(METRICS[self.metric].rows(self.reference, "reference"),
                                    dtype=np.float32)
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

    def search(self, queries, k, *, exclude_self=False, progress=False, squared=False):
        """Same contract as :meth:`ExactIndex.search` (IVF may miss true neighbours)."""
        Q = _check_queries(queries, self, exclude_self)
        k = check_k(k, self.ntotal, exclude_self=exclude_self)
        metric = METRICS[getattr(self, "metric", "sqeuclidean")]
        Q = metric.rows(Q, "queries")

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

        D, I = _search_in_chunks(search_chunk, Q, k, self.dtype, progress)
        return (metric.squared(D) if squared else metric.distance(D)), I


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
