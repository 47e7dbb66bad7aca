"""k-nearest-neighbour search: FAISS-like index objects and the ``knn`` function.

Two kinds of index share one interface (``ntotal``, ``d``, ``search(queries, k)``):

- :class:`ExactIndex` keeps the reference matrix and answers exactly (squared Euclidean
  distances as sums of squared differences, so duplicates are exactly 0 apart; ties go to
  the lower index; deterministic), by one of two methods with identical results:
  ``"exact"``, a backend's blocked brute-force kernel, or ``"kdtree"``, scipy's
  ``cKDTree`` for candidates and an exact re-rank (:class:`KDTreeSearch`), which wins on
  low-dimensional data. ``"auto"`` picks between them (:func:`resolve_method`).
- :class:`FaissIndex` wraps faiss ``IndexFlatL2`` (``method="faiss"``: exact up to float32
  rounding of the ||q||^2 - 2 q.r + ||r||^2 expansion) or ``IndexIVFFlat``
  (``method="ivf"``: approximate, tuned by ``nlist`` and ``nprobe``).

Metrics (:data:`METRICS`, scikit-learn's names) are transforms at the kNN boundary, as in
faiss and pynndescent: the kernels and their proofs only know squared Euclidean distances.
``"sqeuclidean"`` (the default) is the kernels' own; ``"euclidean"`` takes the square root
after the search; ``"cosine"`` (1 - cos) normalises the rows first (in float64, then the
input dtype) and halves the squared distances after (||a - b||^2 = 2 - 2 cos for unit
rows); a zero row has no direction, and is refused with an error naming it. The neighbours
are the kernels' exact answer for the transformed rows (ties to the lower index).
"""
from __future__ import annotations

import logging
import math

import numpy as np

from ._array import array_module, like, on_device, to_host
from ._optional import import_faiss
from ._threads import openmp_threads
from ._validation import as_float_matrix, check_k, check_option, check_same_width
from .backends import resolve, thread_limits

logger = logging.getLogger(__name__)

METHODS = ("auto", "exact", "kdtree", "faiss", "ivf")


class Metric:
    """A metric as transforms around the squared-Euclidean kernels: ``rows(X, name)`` before
    the search, ``distance(D)`` and ``squared(D)`` (the metric's distance and its square)
    of the kernels' squared distances D after."""

    def __init__(self, name, rows, distance, squared):
        self.name, self.rows, self.distance, self.squared = name, rows, distance, squared


def _unit_rows(X, name):
    """X's rows scaled to unit length (norms in float64), in X's dtype; a zero row is an
    error (it has no direction)."""
    xp = array_module(X)
    norms = xp.sqrt((X.astype(xp.float64) ** 2).sum(axis=1))
    zero = norms == 0
    if bool(zero.any()):
        rows = [int(i) for i in to_host(xp.nonzero(zero)[0][:5])]
        raise ValueError(f"metric='cosine' needs nonzero rows: {name} rows {rows} "
                         f"({int(zero.sum())} in all) are all zeros, and have no direction")
    return (X.astype(xp.float64) / norms[:, None]).astype(X.dtype)


def _identity(X, name=None):
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
EXACT_METHODS = ("auto", "exact", "kdtree")  # the methods of ExactIndex
FAISS_METHODS = ("faiss", "ivf")  # the methods of FaissIndex

# method="auto" searches with the k-d tree when d <= KDTREE_MAX_DIM and the reference has at
# least KDTREE_MIN_N rows (and no backend is named): the crossover measured on 2 cores by
# benchmarks/kdtree_crossover.py (results/kdtree-crossover-cpu-2core.md; in-sample k = 10 on
# Gaussian blobs): the tree is 1.4-5x faster up to d = 5 from N = 20k, about even (20k) to
# 1.4x faster (50k, 100k) at d = 6, and 2x slower at d = 8; below about 4000 points
# brute force wins (d = 4: 2x faster at N = 2000, the tree 1.35x faster at N = 5000).
KDTREE_MAX_DIM = 6
KDTREE_MIN_N = 4000


def check_method(method) -> str:
    """``method`` when it is one of :data:`METHODS`, else an error naming them."""
    if isinstance(method, str) and method in METHODS:
        return method
    raise ValueError(f"unknown kNN method {method!r}; choose one of {METHODS}")


def resolve_method(method, d, n_reference, backend="auto", *, device_input=False):
    """The kNN method that ``method`` runs for a (n_reference, d) reference: ``"auto"`` is
    ``"kdtree"`` for low-dimensional data (d <= KDTREE_MAX_DIM, n_reference >=
    KDTREE_MIN_N) unless a backend is named or the reference is on a GPU
    (``device_input``; the brute-force kernels then run), else ``"exact"``; any other
    method is itself."""
    if method != "auto":
        return method
    if backend in ("auto", None) and not device_input and d <= KDTREE_MAX_DIM \
            and n_reference >= KDTREE_MIN_N:
        return "kdtree"
    return "exact"


class ExactIndex:
    """Exact index: a backend's brute-force kernel, or a k-d tree with an exact re-rank.

    Parameters
    ----------
    reference : array-like of shape (n_reference, d)
        float32 or float64 (other numeric dtypes are converted, see ``fastzsl`` docs).
        The index keeps its own read-only copy (as faiss indexes do), so the norms and the
        tree it derives from the rows stay true whatever the caller does to its array.
        A CuPy reference searched by the cupy backend stays on its device (a copy there;
        CuPy has no read-only flag), and so do the results for CuPy queries.
    backend : str, default="auto"
        A name from :func:`fastzsl.available_backends`; ``"auto"`` picks ``"cupy"`` for
        a CuPy reference.
    method : {"auto", "exact", "kdtree"}, default="auto"
        ``"exact"``: the backend's brute-force kernel; ``"kdtree"``: :class:`KDTreeSearch`
        (identical results); ``"auto"``: see :func:`resolve_method`. The choice is in
        ``self.method``.
    metric : {"sqeuclidean", "euclidean", "cosine"}, default="sqeuclidean"
        The distance ``search`` returns (see :data:`METRICS`). Under ``"cosine"`` the index
        also keeps the unit-length rows it searches (``reference`` stays the rows given).
    """

    def __init__(self, reference, *, backend="auto", method="auto", metric="sqeuclidean"):
        self.metric = check_metric(metric).name
        X = as_float_matrix(reference, "reference", keep_device=True)
        self.kernels = resolve(backend, X)
        # What a kernel reuses across searches of this reference (knn_prepare, if it has
        # one: the Cython kernels' reference norms, the cupy backend's uploaded reference),
        # made on the first search.
        self._prepared = None  # (what knn_prepare made,) once made: a tuple survives pickling
        self.method = resolve_method(method, X.shape[1], X.shape[0], backend,
                                     device_input=on_device(X))
        self.reference = _own_copy(X if self._on_gpu else to_host(X))
        # the rows the kernels search: the reference itself unless the metric transforms it
        self._rows = _own_copy(METRICS[self.metric].rows(self.reference, "reference")) \
            if METRICS[self.metric].rows is not _identity else self.reference
        check_option(self.method, EXACT_METHODS, "ExactIndex method")
        if self.method == "kdtree":
            self._tree = KDTreeSearch(self._rows)

    @property
    def ntotal(self) -> int:
        return self.reference.shape[0]

    @property
    def d(self) -> int:
        return self.reference.shape[1]

    @property
    def _on_gpu(self) -> bool:
        """Whether searches run on a GPU, where a CuPy reference and queries stay."""
        return self.method == "exact" and self.kernels.device == "cuda"

    def search(self, queries, k, *, exclude_self=False, progress=False, squared=False):
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
        squared : bool, default=False
            Return the squares of the metric's distances (what LoOP averages).

        Returns
        -------
        D : ndarray of shape (n_queries, k)
            The metric's distances (squared Euclidean by default), ascending, in the
            reference's dtype (CuPy for CuPy queries on the cupy backend).
        I : ndarray of shape (n_queries, k), int64
            Reference row indices; equal distances list the lower index first.
        """
        Q = _check_queries(queries, self, exclude_self, keep_device=self._on_gpu)
        k = check_k(k, self.ntotal, exclude_self=exclude_self)
        metric = METRICS[self.metric]
        D, I = self._search_rows(metric.rows(Q, "queries"), k, exclude_self, progress)
        return (metric.squared(D) if squared else metric.distance(D)), I

    def _search_rows(self, Q, k, exclude_self, progress):
        """Squared Euclidean kNN of the (transformed) queries among self._rows."""
        if self.method == "kdtree":
            return self._tree.search_all(Q, k, exclude_self, progress)
        if exclude_self and self.kernels.knn_self is not None and _same_rows(Q, self._rows):
            result = _self_join(self.kernels.knn_self, Q, k, progress)
            if result is not None:
                return result

        knn_kernel = self._knn_kernel()

        def search_chunk(chunk, offset):
            return knn_kernel(chunk, self._rows, k, offset if exclude_self else -1)

        return _search_in_chunks(search_chunk, Q, k, Q.dtype, progress)

    def __setstate__(self, state):
        # indexes pickled before metrics searched their reference itself
        state.setdefault("metric", "sqeuclidean")
        state.setdefault("_rows", state["reference"])
        self.__dict__.update(state)

    def _knn_kernel(self):
        """The backend's knn, with what it prepared for this reference bound in."""
        knn_kernel = self.kernels.knn
        prepare = getattr(self.kernels, "knn_prepare", None)
        if prepare is None:
            return knn_kernel
        if self._prepared is None:
            self._prepared = (prepare(self._rows),)
        prepared = self._prepared[0]
        return lambda Q, R, k, self_offset: knn_kernel(Q, R, k, self_offset, prepared)


class KDTreeSearch:
    r"""Exact kNN through scipy's ``cKDTree``: the brute-force kernels' answer, bit for bit.

    The kernels return, per query, the k lexicographically smallest pairs (e_j, j), where
    e_j is the float64 sum of (double(q_t) - double(r_jt))^2 over t = 0..d-1 in order,
    rounded to the input dtype only on output. cKDTree ranks by its own float64 distances
    (another summation, a square root, pruning by incrementally updated box distances), so
    its order can differ from that one at near-ties. This class uses it only for candidates:

    1. ``cKDTree.query(q, m)`` returns m candidates (m = k + 1 + TREE_EXTRA, the 1 for
       ``exclude_self``; at most n_reference), the largest at tree distance t_m.
    2. Every candidate gets its exact e_j, computed exactly as the kernels do (the Cython
       kernels' own ``_sqdist`` through the backend's ``KernelSet.rerank``),
       the query's own row is dropped under ``exclude_self``, and the k lexicographically
       smallest (e_j, j) are kept; e_(k) is the k-th of them.
    3. The query is accepted when m = n_reference (every row was a candidate) or
       e_(k) < t_m^2 (1 - TREE_SLACK) - TREE_TINY. Otherwise it is searched again with
       twice as many candidates (up to all rows).

    Why an accepted answer is the brute-force one. Write E_j for the exact real squared
    distance. Every row j not returned has a tree distance >= t_m (cKDTree returns the m
    nearest by its own distances); its own rounding, from the distance and from the
    pruning bounds, is a relative error of at most a few hundred units of double roundoff
    (2^-53) for the dimensions it is used in, far below TREE_SLACK = 2^-30, so
    E_j >= t_m^2 (1 - TREE_SLACK / 2) - TREE_TINY / 2 (TREE_TINY covers gradual underflow).
    The kernels' e_j is within (d + 2) 2^-53 E_j of E_j, so e_j > e_(k) for every row not
    returned. Hence all rows with e_j <= e_(k) were candidates, and the k lexicographically
    smallest pairs among the candidates are those among all rows: the same distances and
    the same indices, including near-ties that cKDTree ordered differently (they are
    re-ranked by e_j) and exact ties at the k-th distance (all of them are candidates, so
    the lower indices win, as in the kernels). With m = n_reference every row is a
    candidate and the answer holds by definition. ``exclude_self`` drops the
    query's own row by index, as the kernels do (a duplicate of it stays, at distance 0).

    Runs ``cKDTree.query`` on the OpenMP thread count in force (``n_jobs``, an outer
    threadpoolctl limit, or all cores).
    """

    def __init__(self, reference, rerank=None):
        from scipy.spatial import cKDTree

        self.reference = reference
        self.tree = cKDTree(reference)
        self._rerank = rerank  # None: the fastest backend's (looked up per search)

    def search_all(self, Q, k, exclude_self, progress=False):
        """:meth:`ExactIndex.search` of Q (the reference rows themselves with
        ``exclude_self``), in chunks. The reference's own rows are searched in the tree's
        order (neighbouring queries visit the same nodes: measured 1.3x faster at 100k
        points, d = 4) and the results put back in row order."""
        if not exclude_self:
            return _search_in_chunks(lambda chunk, _: self.search(chunk, k), Q, k, Q.dtype,
                                     progress, TREE_CHUNK)
        order = self.tree.indices
        D_sorted, I_sorted = _search_in_chunks(
            lambda chunk, offset: self.search(chunk, k, order[offset:offset + len(chunk)]),
            Q[order], k, Q.dtype, progress, TREE_CHUNK)
        D = np.empty_like(D_sorted)
        I = np.empty_like(I_sorted)
        D[order] = D_sorted
        I[order] = I_sorted
        return D, I

    def search(self, Q, k, self_rows=None):
        """(D, I) of the k nearest rows for each row of Q (dtype of the reference), leaving
        out row ``self_rows[i]`` of query i where given."""
        n = self.reference.shape[0]
        D = np.empty((Q.shape[0], k), dtype=self.reference.dtype)
        I = np.empty((Q.shape[0], k), dtype=np.int64)
        rows = np.arange(Q.shape[0])
        m = min(n, k + (self_rows is not None) + TREE_EXTRA)
        workers = openmp_threads()
        # every backend's re-rank sums as the kernels do; the NumPy reference always has one
        rerank = getattr(self, "_rerank", None) or resolve("auto").rerank or \
            resolve("numpy").rerank
        while rows.size:
            Qr = Q[rows]
            dist, cand = self.tree.query(Qr, k=[*range(1, m + 1)], workers=workers)
            skip = None if self_rows is None else self_rows[rows]
            bd, bi = rerank(Qr, self.reference, cand, k, skip)
            if m == n:
                done = np.ones(rows.size, dtype=bool)
            else:
                bound = dist[:, -1] ** 2 * (1 - TREE_SLACK) - TREE_TINY
                done = bd[:, k - 1] < bound
            D[rows[done]] = bd[done]
            I[rows[done]] = bi[done]
            rows = rows[~done]
            m = min(n, 2 * m)
        return D, I


# KDTreeSearch: extra candidates beyond k, and the acceptance margin (its docstring).
TREE_EXTRA = 1
TREE_SLACK = 2.0 ** -30
TREE_TINY = 1e-290


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


def _own_copy(X):
    """A copy of X that the index owns (read-only, where X is NumPy): what it caches about
    the rows (norms, a tree, an upload) cannot go stale through a change the caller makes
    to its own array."""
    if on_device(X):
        return X.copy()
    X = np.array(X, order="C", copy=True)
    X.flags.writeable = False
    return X


# Queries per kernel call: enough parallel work per call, and a progress bar that moves.
SEARCH_CHUNK = 8192
# Queries per KDTreeSearch call: fewer hand-overs between cKDTree's threads and OpenMP's.
TREE_CHUNK = 65536


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


def _search_in_chunks(search_chunk, Q, k, dtype, progress, chunk=None):
    """Run ``search_chunk(rows, first_row_index)`` over Q in chunks (of SEARCH_CHUNK rows
    unless ``chunk`` says) into one (D, I)."""
    n = Q.shape[0]
    chunk = SEARCH_CHUNK if chunk is None else chunk
    if n <= chunk:
        D, I = search_chunk(Q, 0)
        return D.astype(dtype, copy=False), I.astype(np.int64, copy=False)
    from tqdm.auto import tqdm

    xp = array_module(Q)  # the results of CuPy queries are gathered on their device
    D = xp.empty((n, k), dtype=dtype)
    I = xp.empty((n, k), dtype=np.int64)
    with tqdm(total=n, desc=f"kNN k={k}", unit="query", disable=not progress) as bar:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
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


def _check_queries(queries, index, exclude_self, keep_device=False):
    Q = as_float_matrix(queries, "queries", keep_device=keep_device)
    check_same_width(Q, index.d, "queries", "the reference")
    if exclude_self and Q.shape[0] != index.ntotal:
        raise ValueError(
            "exclude_self=True needs the queries to be the reference rows themselves, "
            f"but there are {Q.shape[0]} queries and {index.ntotal} reference rows"
        )
    if Q.dtype != index.reference.dtype:
        Q = Q.astype(index.reference.dtype)
    return Q


def make_index(reference, *, method="auto", backend="auto", nlist=None, nprobe=None,
               metric="sqeuclidean"):
    """Build the index for ``method`` (see :data:`METHODS`) over ``reference``: an
    :class:`ExactIndex` for "auto", "exact" and "kdtree", else a :class:`FaissIndex`;
    ``metric``: see :data:`METRICS`."""
    check_metric(metric)
    check_method(method)
    if method in EXACT_METHODS:
        return ExactIndex(reference, backend=backend, method=method, metric=metric)
    if backend not in ("auto", None):
        raise ValueError(
            f"backend={backend!r} applies to method='exact'; method={method!r} runs on faiss")
    return FaissIndex(reference, method=method, nlist=nlist, nprobe=nprobe, metric=metric)


def estimator_index(X, *, backend, knn, knn_params=None, metric="sqeuclidean"):
    """``(backend name, kNN method, index)`` for an estimator's reference set X: the names
    resolved ("auto" chosen) and the index built (with ``metric``). The backend runs exact
    kNN itself; the tree and faiss bring their own kernels."""
    backend_name = resolve(backend, X).name
    method = resolve_method(knn, X.shape[1], X.shape[0], backend, device_input=on_device(X))
    index = make_index(X, method=method, backend=backend_name if method == "exact" else "auto",
                       metric=metric, **(knn_params or {}))
    return backend_name, method, index


def knn(queries, reference, k, *, exclude_self=False, backend="auto", method="auto",
        nlist=None, nprobe=None, progress=False, n_jobs=None, metric="sqeuclidean"):
    """k nearest neighbours of each query row among the reference rows.

    Parameters
    ----------
    queries : array-like of shape (n_queries, d)
        NumPy, torch or CuPy array; the results come back in the same kind. CuPy queries
        and reference stay on their device with the cupy backend (which ``"auto"`` picks
        for a CuPy reference).
    reference : array-like of shape (n_reference, d)
    k : int
        Neighbours per query, 1 <= k <= n_reference (n_reference - 1 with ``exclude_self``).
    exclude_self : bool, default=False
        ``queries`` are the reference rows; row i is left out of its own neighbours.
    backend : str, default="auto"
        Kernel set for ``method="exact"``; see :func:`fastzsl.available_backends`.
    method : {"auto", "exact", "kdtree", "faiss", "ivf"}, default="auto"
        ``"exact"``: fastzsl's blocked brute force (exact, ties to the lower index).
        ``"kdtree"``: scipy's cKDTree plus an exact re-rank, the same results
        (:class:`KDTreeSearch`). ``"auto"``: ``"kdtree"`` on low-dimensional data when no
        backend is named, else ``"exact"`` (:func:`resolve_method`).
        ``"faiss"``: faiss ``IndexFlatL2``. ``"ivf"``: faiss ``IndexIVFFlat`` (approximate).
    nlist, nprobe : int, optional
        IVF parameters (see :class:`FaissIndex`).
    progress : bool, default=False
        Show a progress bar over the queries.
    n_jobs : int, optional
        Threads for this call (OpenMP, BLAS, Numba, faiss), restored afterwards: None
        leaves the current settings (all cores, or an outer ``threadpoolctl`` limit), -1
        uses all cores.
    metric : {"sqeuclidean", "euclidean", "cosine"}, default="sqeuclidean"
        The distance (scikit-learn's names; see :data:`METRICS`): squared Euclidean,
        Euclidean, or cosine distance 1 - cos (rows of zeros are refused).

    Returns
    -------
    D : array of shape (n_queries, k)
        The metric's distances in ascending order, in the input float dtype.
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
    kernels = resolve(backend if method in EXACT_METHODS else "auto", reference)
    with thread_limits(n_jobs, backend=kernels, knn=method):
        index = make_index(reference, method=method, backend=backend, nlist=nlist,
                           nprobe=nprobe, metric=metric)
        D, I = index.search(queries, k, exclude_self=exclude_self, progress=progress)
    return like(D, queries), like(I, queries)
