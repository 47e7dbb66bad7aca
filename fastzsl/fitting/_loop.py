"""LoOP from files: the kNN lists of every row (chunks, the self-join or Dask tasks), then
the reduction to the model."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np

from .._files import BatchError, write_atomically
from .._platform import cpu_count
from .._validation import check_option
from ..batch import dask_client
from ._job import FORMAT, FORMAT_VERSION, _claim


REFERENCE = "reference.npy"
IVF_INDEX = "ivf.index"
SELF_JOIN_STATE = "self-join.npz"
SELF_JOIN_SAVE_SECONDS = 60.0  # how often a self-join saves its candidate lists
SCHEDULES = ("auto", "self-join", "chunks")
SELF_JOIN_REFUSED = ("schedule='self-join' needs one process (no scheduler), exact kNN on "
                     "kernels with a self-join (cython) and candidate lists within its memory "
                     "limit; use schedule='chunks'")
# What approximate neighbours cost at the default nprobe (nlist / 16, at least 8), d = 50,
# k = 20: the IVF study (benchmarks/results/ivf-cpu-2core.md: new points scored by an
# IVF-fitted model; real mapped Fashion-MNIST features, 40k rows, and Gaussian blobs, 100k)
# and the fit benchmark (benchmarks/results/fit-cpu-2core-loaded.md: blobs, 200k rows, the
# fitted probabilities and new points' scores against the exact model's).
IVF_PRICE = ("LoOP against exact neighbours at the default nprobe, measured: mean |dP| 4e-4 "
             "(real features) to 6e-3 (blobs), max |dP| 0.06 to 0.13, Spearman rank "
             "correlation 0.998 (blobs, 200k rows); other nprobe: "
             "benchmarks/results/ivf-cpu-2core.md")
# Rows a faiss index is filled with per call (a float32 copy of one block, not of all).
_FILL_ROWS = 1 << 16


# ---------------------------------------------------------------------------- LoOP
@dataclasses.dataclass(frozen=True)
class Rows:
    """Chunk ``index`` of a fit's searches: reference rows ``row .. row + n_rows - 1``."""

    index: int
    row: int
    n_rows: int


def search_plan(n_rows: int, chunk_size: int, method: str) -> list:
    """The chunks a LoOP fit searches: runs of ``chunk_size`` rows over the whole reference
    (shard boundaries do not matter: the rows are searched in the reference file). faiss
    computes a query's coarse distances with BLAS, whose rounding depends on which queries
    share a call, so its searches go in the in-memory fit's batches of SEARCH_CHUNK rows,
    from row 0: the chunk size is rounded up to a multiple of it."""
    from ..neighbors import SEARCH_CHUNK

    if method in ("faiss", "ivf"):
        chunk_size = -(-chunk_size // SEARCH_CHUNK) * SEARCH_CHUNK
    return [Rows(i, row, min(chunk_size, n_rows - row))
            for i, row in enumerate(range(0, n_rows, chunk_size))]


@dataclasses.dataclass(frozen=True)
class LoopJob:
    """What a process needs to search chunks of a fit (small: sent with every task)."""

    job_id: str
    folder: str
    reference: str        # the .npy file of the reference rows
    n_rows: int
    width: int
    dtype: str
    k: int
    method: str           # "exact", "kdtree", "faiss" or "ivf"
    backend: str          # exact: the kernel set; else "auto"
    nprobe: int | None
    n_jobs: int | None    # threads per search (None: the process's settings)

    def lists_path(self, index: int) -> Path:
        return Path(self.folder) / f"lists-{index:06d}.npy"


def _loop_knn(estimator, source, scheduler) -> dict:
    """The kNN method and its parameters that the fit runs, resolved."""
    from ..backends import get_backend
    from ..neighbors import FaissIndex, check_method, resolve_method

    check_method(estimator.knn)
    method = resolve_method(estimator.knn, source.width, source.n_rows, estimator.backend)
    knn = {"method": method, "backend": "auto"}
    if method in ("exact", "kdtree"):
        # A named backend may exist only on the workers (cupy); "auto" is resolved here,
        # where the job starts, and the workers run the same kernels.
        if estimator.backend == "auto" or scheduler is None:
            knn["backend"] = get_backend(estimator.backend).name
        else:
            knn["backend"] = estimator.backend
    elif estimator.backend not in ("auto", None):
        raise ValueError(f"backend={estimator.backend!r} applies to knn='exact'; "
                         f"knn={method!r} runs on faiss")
    params = dict(estimator.knn_params or {})
    if method == "ivf":
        nlist = params.get("nlist") or FaissIndex.default_nlist(source.n_rows)
        knn["nlist"] = int(nlist)
        knn["nprobe"] = int(params.get("nprobe") or FaissIndex.default_nprobe(nlist))
    return knn


def describe_knn(knn: dict, k: int) -> str:
    """One line saying which neighbours a fit used (logged, and in the summary)."""
    if knn["method"] == "ivf":
        return (f"kNN: approximate, faiss IVF (nlist={knn['nlist']}, nprobe={knn['nprobe']}), "
                f"k={k}. {IVF_PRICE}")
    if knn["method"] == "faiss":
        return f"kNN: faiss IndexFlatL2 (exact up to float32 rounding), k={k}"
    how = "k-d tree and exact re-rank" if knn["method"] == "kdtree" else "brute force"
    return f"kNN: exact ({how}, {knn['backend']} kernels), k={k}"


def _fit_loop(estimator, source, model_path, *, labels, scheduler, n_workers, schedule,
              progress, wait, log):
    from .._model_files import save_estimator
    from .._validation import check_k, check_positive_number
    from ..backends import resolve
    from ..loop import SCORING, export_loop

    k = check_k(estimator.n_neighbors, source.n_rows, exclude_self=True, name="n_neighbors")
    extent = check_positive_number(estimator.extent, "extent")
    check_option(estimator.scoring, SCORING, "scoring")
    knn = _loop_knn(estimator, source, scheduler)
    if schedule == "self-join" and (scheduler is not None or knn["method"] != "exact"
                                    or resolve(knn["backend"]).knn_self is None):
        raise BatchError(SELF_JOIN_REFUSED)
    params = estimator.get_params()
    source.check_all_rows()  # before any file is made

    identity = {"format": FORMAT, "format_version": FORMAT_VERSION, "estimator": "LoOP",
                "params": {name: value for name, value in params.items()
                           if name not in ("progress", "n_jobs")},
                **source.identity(), "knn": knn}
    with _claim(model_path, identity, wait, log) as work:
        reference = source.single_npy() or _write_reference(source, work.folder)
        job = LoopJob(
            job_id=hashlib.sha256(json.dumps([str(work.folder.resolve()), identity],
                                             sort_keys=True).encode()).hexdigest()[:16],
            # absolute paths: workers may run elsewhere (with the same mounts)
            folder=str(work.folder.resolve()), reference=str(Path(reference).resolve()),
            n_rows=source.n_rows,
            width=source.width, dtype=source.dtype.str, k=k, method=knn["method"],
            backend=knn["backend"], nprobe=knn.get("nprobe"), n_jobs=estimator.n_jobs)
        if knn["method"] == "ivf":
            _train_ivf(job, knn["nlist"], estimator.n_jobs)
        plan = search_plan(source.n_rows, source.chunk_size, knn["method"])
        todo = [c for c in plan if not job.lists_path(c.index).exists()]
        rows_done = source.n_rows - sum(c.n_rows for c in todo)
        if work.resumed:
            log(f"resuming: {len(plan) - len(todo)} of {len(plan)} chunks "
                f"({rows_done} rows) already searched")
        log(describe_knn(knn, k))
        from tqdm.auto import tqdm

        with tqdm(total=source.n_rows, initial=rows_done, unit="rows", unit_scale=True,
                  smoothing=0.1, desc="kNN lists", disable=not progress) as bar:
            if scheduler is not None:
                _search_on_dask(job, todo, scheduler, n_workers, bar, log)
            elif not (todo and schedule != "chunks" and _self_join(job, todo, bar, log)):
                if schedule == "self-join" and todo:
                    raise BatchError(SELF_JOIN_REFUSED)
                try:
                    for chunk in todo:
                        bar.update(search_chunk(job, chunk.index, chunk.row,
                                                chunk.row + chunk.n_rows))
                finally:
                    forget_job(job.job_id)
        fit = reduce_lists(job, plan, extent)
        save_estimator(model_path, "LoOP", *export_loop(params, _open_reference(job), fit))
    return {"estimator": "LoOP", "knn": dict(knn, k=k, description=describe_knn(knn, k)),
            "chunks_searched_now": len(todo), "n_chunks": len(plan)}


def _write_reference(source, folder: Path) -> Path:
    """The reference rows as one .npy file in the work folder (kept when resuming)."""
    path = folder / REFERENCE
    shape = (source.n_rows, source.width)
    if path.exists():
        try:
            existing = np.load(path, mmap_mode="r")
            if existing.shape == shape and existing.dtype == source.dtype:
                return path
        except (OSError, ValueError):
            pass

    def write(f):
        np.lib.format.write_array_header_2_0(f, {
            "descr": np.lib.format.dtype_to_descr(source.dtype), "fortran_order": False,
            "shape": shape})
        for chunk in source.chunks:
            f.write(np.ascontiguousarray(source.rows(chunk)).data)

    write_atomically(path, write)
    return path


def _open_reference(job: LoopJob) -> np.ndarray:
    """The reference rows, memory-mapped read-only."""
    try:
        reference = np.load(job.reference, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise BatchError(f"cannot read the reference rows {job.reference}: {exc}") from None
    if reference.shape != (job.n_rows, job.width) or reference.dtype != np.dtype(job.dtype):
        raise BatchError(f"{job.reference} holds {reference.shape} {reference.dtype} rows, not "
                         f"the job's ({job.n_rows}, {job.width}) {np.dtype(job.dtype)}: it "
                         "changed since the job started")
    return reference


def _train_ivf(job: LoopJob, nlist, n_jobs):
    """Train the IVF quantizer once, as ``FaissIndex`` does, and keep it (empty) in the work
    folder: every process that searches fills the same trained index."""
    from .._optional import import_faiss
    from ..backends import thread_limits

    path = Path(job.folder) / IVF_INDEX
    if path.exists():
        return
    faiss = import_faiss()
    reference = _open_reference(job)
    data = np.ascontiguousarray(reference, dtype=np.float32)
    with thread_limits(n_jobs, knn="ivf"):
        quantizer = faiss.IndexFlatL2(job.width)
        index = faiss.IndexIVFFlat(quantizer, job.width, nlist)
        index.cp.seed = 0  # FaissIndex's default seed
        index.train(data)
    write_atomically(path, lambda f: f.write(faiss.serialize_index(index).tobytes()))


class _ChunkSearcher:
    """One process's search of the reference (built once per job and process)."""

    def __init__(self, job: LoopJob):
        from ..backends import kernels_for

        global _SEARCHER_BUILDS
        _SEARCHER_BUILDS += 1
        self.job = job
        self.reference = _open_reference(job)
        if job.method == "exact":
            with kernels_for(job.backend, self.reference) as (kernels, (reference,)):
                self.kernels, self.device_reference = kernels, reference
            prepare = self.kernels.knn_prepare
            self.prepared = () if prepare is None else (prepare(self.device_reference),)
        elif job.method == "kdtree":
            from ..neighbors import KDTreeSearch

            self.tree = KDTreeSearch(np.asarray(self.reference))
        else:
            self.index = self._faiss_index()

    def _faiss_index(self):
        from .._optional import import_faiss

        faiss = import_faiss()
        job = self.job
        if job.method == "ivf":
            raw = np.fromfile(Path(job.folder) / IVF_INDEX, dtype=np.uint8)
            index = faiss.deserialize_index(raw)
            index.nprobe = job.nprobe
        else:
            index = faiss.IndexFlatL2(job.width)
        for start in range(0, job.n_rows, _FILL_ROWS):
            index.add(np.ascontiguousarray(self.reference[start:start + _FILL_ROWS],
                                           dtype=np.float32))
        return index

    def search(self, start, stop):
        """(D, I) of reference rows start..stop-1 among the other rows, on the host."""
        from .._array import to_host

        job, k = self.job, self.job.k
        if job.method == "exact":
            Q = self.device_reference[start:stop]
            D, I = self.kernels.knn(Q, self.device_reference, k, start, *self.prepared)
            return to_host(D), to_host(I)
        if job.method == "kdtree":
            return self.tree.search(np.asarray(self.reference[start:stop]), k,
                                    np.arange(start, stop))
        from ..neighbors import SEARCH_CHUNK
        from ..neighbors._faiss import _drop_self

        parts = []
        for first in range(start, stop, SEARCH_CHUNK):  # the in-memory fit's batches
            last = min(first + SEARCH_CHUNK, stop)
            Q = np.ascontiguousarray(self.reference[first:last], dtype=np.float32)
            parts.append(_drop_self(*self.index.search(Q, k + 1), k, first))
        D, I = (np.concatenate(a) for a in zip(*parts))
        missing = (I < 0).any(axis=1)
        if missing.any():  # IVF visits only nprobe lists; faiss pads a short result with -1
            raise BatchError(
                f"the IVF index found fewer than k = {k} neighbours for {missing.sum()} of "
                f"reference rows {start}..{stop - 1} (nlist = {self.index.nlist}, nprobe = "
                f"{self.index.nprobe}): raise nprobe or lower nlist in knn_params")
        np.maximum(D, 0, out=D)  # the norms expansion can round just below zero
        return D.astype(job.dtype, copy=False), I.astype(np.int64, copy=False)


# Searchers of this process, by job: one reference loaded per worker process and job.
_SEARCHERS: dict = {}
_SEARCHERS_LOCK = threading.Lock()
_SEARCHER_BUILDS = 0


def _searcher(job: LoopJob) -> _ChunkSearcher:
    with _SEARCHERS_LOCK:
        searcher = _SEARCHERS.get(job.job_id)
        if searcher is None:
            _SEARCHERS.clear()  # a worker keeps one job's reference at a time
            searcher = _SEARCHERS[job.job_id] = _ChunkSearcher(job)
    return searcher


def forget_job(job_id: str) -> None:
    """Drop this process's searcher of a job (its reference map, index, device copy)."""
    with _SEARCHERS_LOCK:
        _SEARCHERS.pop(job_id, None)


def searcher_builds() -> int:
    """How many searchers (reference maps and indexes) this process built: one per job in
    each Dask worker (for tests and diagnostics)."""
    return _SEARCHER_BUILDS


def search_chunk(job: LoopJob, index: int, start: int, stop: int) -> int:
    """Search reference rows start..stop-1 (chunk ``index``) and write their kNN lists
    atomically; returns the number of rows. The one task of a fit, in any process."""
    from ..backends import thread_limits

    searcher = _searcher(job)
    with thread_limits(job.n_jobs, backend=job.backend, knn=job.method):
        D, I = searcher.search(start, stop)
    _write_lists(job, index, D, I)
    return stop - start


def _write_lists(job: LoopJob, index: int, D, I) -> None:
    """Chunk ``index``'s kNN lists, written atomically (read back by ``_read_lists``)."""
    lists = np.empty(len(D), dtype=_lists_dtype(job))
    lists["D"], lists["I"] = D, I
    write_atomically(job.lists_path(index), lambda f: np.save(f, lists, allow_pickle=False))


def _self_join(job: LoopJob, todo, bar, log) -> bool:
    """Search every row with the kernels' self-join and write the lists of chunks ``todo``;
    False (having written nothing) where it does not apply. The join's candidate lists are
    saved to ``SELF_JOIN_STATE`` at most every SELF_JOIN_SAVE_SECONDS, at a boundary of its
    rounds, and a rerun goes on from there: the same bits as an uninterrupted join."""
    from ..backends import kernels_for, resolve

    if job.method != "exact" or resolve(job.backend).knn_self is None:
        return False
    X = _open_reference(job)
    state_path = Path(job.folder) / SELF_JOIN_STATE
    resume = _read_self_join_state(state_path, job)
    if resume is not None:
        log(f"resuming the self-join at round {resume[0]}")
    saved = [time.monotonic()]

    def save(next_round, lists_D, lists_I):
        if time.monotonic() - saved[0] >= SELF_JOIN_SAVE_SECONDS:
            write_atomically(state_path, lambda f: np.savez(
                f, next_round=np.int64(next_round), D=lists_D, I=lists_I))
            saved[0] = time.monotonic()

    start = bar.n

    def advance(fraction):
        bar.update(start + round(fraction * (job.n_rows - start)) - bar.n)

    # Each chunk's lists are written as the join finishes them, so one chunk's answers at a
    # time are held beside the join's candidate lists, not all of them.
    index_of = {chunk.row: chunk.index for chunk in todo}
    with kernels_for(job.backend, X, n_jobs=job.n_jobs) as (kernels, (X,)):
        done = kernels.knn_self(
            X, job.k, advance, resume=resume, on_rounds=save,
            ranges=[(chunk.row, chunk.row + chunk.n_rows) for chunk in todo],
            on_range=lambda row, D, I: _write_lists(job, index_of[row], D, I))
    if done is None:
        return False
    state_path.unlink(missing_ok=True)
    bar.update(job.n_rows - bar.n)
    return True


def _read_self_join_state(path: Path, job: LoopJob):
    """(next_round, lists_D, lists_I) a killed self-join saved, or None (none saved, or one
    that cannot be read: the join then starts over)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            state = int(saved["next_round"]), saved["D"], saved["I"]
    except (OSError, ValueError, KeyError):
        return None
    D, I = state[1], state[2]
    if D.dtype != np.dtype(job.dtype) or D.ndim != 2 or D.shape[0] != job.n_rows \
            or I.shape != D.shape or I.dtype != np.int64:
        return None
    return state


def _lists_dtype(job: LoopJob) -> np.dtype:
    return np.dtype([("D", job.dtype, (job.k,)), ("I", "<i8", (job.k,))])


def _read_lists(job: LoopJob, chunk):
    path = job.lists_path(chunk.index)
    try:
        lists = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BatchError(f"cannot read the kNN lists {path} ({exc}); delete it and rerun the "
                         "same command to search that chunk again") from None
    if lists.dtype != _lists_dtype(job) or lists.shape != (chunk.n_rows,):
        raise BatchError(f"the kNN lists {path} do not belong to this job; delete it and "
                         "rerun the same command")
    return lists["D"], lists["I"]


def reduce_lists(job: LoopJob, chunks, extent: float):
    """The ``LoOPFit`` of the reference from its chunks' kNN lists, in two passes (pdist of
    every row, then PLOF from the neighbours' pdists), in chunk order."""
    from ..backends.numpy_ import nplof_from, plof_from, probabilistic_distance, probability_from
    from ..loop import LoOPFit

    pdist = np.empty(job.n_rows)
    for chunk in chunks:
        D, _ = _read_lists(job, chunk)
        pdist[chunk.row:chunk.row + chunk.n_rows] = probabilistic_distance(D, extent)
    expected = np.empty(job.n_rows)  # each row's mean neighbour pdist
    for chunk in chunks:
        _, I = _read_lists(job, chunk)
        expected[chunk.row:chunk.row + chunk.n_rows] = pdist[I].mean(axis=1)
    plof = plof_from(pdist, expected)
    nplof = nplof_from(plof, extent)
    return LoOPFit(pdist, plof, nplof, probability_from(plof, nplof),
                   float(expected.mean()), extent)


def _search_on_dask(job, todo, scheduler, n_workers, bar, log):
    if scheduler == "local":
        n_workers = n_workers or cpu_count()
        # The machine's cores shared among its workers (each task's kernels are threaded).
        job = dataclasses.replace(job, n_jobs=max(1, cpu_count() // n_workers))
    with dask_client(scheduler, n_workers, log) as (client, as_completed):
        futures = [client.submit(search_chunk, job, c.index, c.row, c.row + c.n_rows,
                                 pure=False, key=f"fastzsl-fit-{job.job_id}-{c.index}")
                   for c in todo]
        for future in as_completed(futures):
            bar.update(future.result())
        client.run(forget_job, job.job_id)
