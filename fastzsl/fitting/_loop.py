"""LoOP from files: the kNN lists of every row (chunks, the self-join or Dask tasks), then
the reduction to the model."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from .._files import BatchError, write_atomically
from .._platform import cpu_count
from .._validation import check_option
from ..batch import dask_client
from ._job import FORMAT, FORMAT_VERSION, _claim


REFERENCE = "reference.npy"
IVF_INDEX = "ivf.index"
SELF_JOIN_STATE = "self-join.json"
SCHEDULES = ("auto", "self-join", "chunks")
SELF_JOIN_REFUSED = ("schedule='self-join' needs one process (no scheduler) and exact kNN on "
                     "kernels with a self-join (cython) that can take these rows; use "
                     "schedule='chunks'")
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
# Rows whose kNN lists are finished and written at a time (a few MB, not a chunk's).
FINISH_ROWS = 1 << 14
# Rows a Dask task searches (a part of a chunk): tens of tasks for a fit of 1M rows.
DASK_TASK_ROWS = 1 << 15


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

    def part_path(self, index: int, part: int) -> Path:
        return Path(self.folder) / f"part-{index:06d}-{part:06d}.npy"


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
                                    or resolve(knn["backend"]).self_join is None):
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
            elif not (todo and schedule != "chunks" and _self_join(job, plan, todo, bar, log)):
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


def search_chunk(job: LoopJob, index: int, start: int, stop: int, part=None) -> int:
    """Search reference rows start..stop-1 and write their kNN lists atomically: chunk
    ``index``'s lists file or, with ``part``, that part of it (a Dask task's share, joined
    into the chunk's file by the driver); returns the number of rows. The one task of a fit,
    in any process."""
    from ..backends import thread_limits

    searcher = _searcher(job)
    with thread_limits(job.n_jobs, backend=job.backend, knn=job.method):
        D, I = searcher.search(start, stop)
    path = job.lists_path(index) if part is None else job.part_path(index, part)
    _write_lists(job, path, len(D), _blocks(D, I))
    return stop - start


def _write_lists(job: LoopJob, path: Path, n_rows: int, blocks) -> None:
    """kNN lists of n_rows rows (a chunk's, read back by ``_read_lists``, or a part's),
    written atomically to ``path`` from ``blocks``: (D, I) of the rows in order, a few
    thousand rows at a time, so that the file's row layout is never built for them all."""
    dtype = _lists_dtype(job)

    def write(f):
        np.lib.format.write_array_header_2_0(f, {
            "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
            "shape": (n_rows,)})
        written = 0
        for D, I in blocks:
            lists = np.empty(len(D), dtype=dtype)
            lists["D"], lists["I"] = D, I
            lists.tofile(f)
            written += len(D)
        if written != n_rows:
            raise RuntimeError(f"lists of {written} rows written for a chunk of {n_rows}")

    write_atomically(path, write)


def _blocks(D, I):
    """(D, I) in blocks of FINISH_ROWS rows."""
    return ((D[row:row + FINISH_ROWS], I[row:row + FINISH_ROWS])
            for row in range(0, len(D), FINISH_ROWS))


def _read_npy_into(f, out) -> None:
    """The next array of the open .npy stream ``f``, read into ``out`` (its shape and dtype
    checked): no new array."""
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ValueError(f".npy format version {version} was not written here")
    shape, fortran_order, dtype = read_header(f)
    if shape != out.shape or dtype != out.dtype or fortran_order:
        raise ValueError(f"it holds {shape} {dtype}, not the {out.shape} {out.dtype} expected")
    if f.readinto(memoryview(out).cast("B")) != out.nbytes:
        raise ValueError("it ends early")


def _self_join(job: LoopJob, plan, todo, bar, log) -> bool:
    """Search every row with the kernels' self-join, a pair of chunks at a time (each pair of
    row blocks once, as ``LoOP.fit``), and write the lists of chunks ``todo``; False (having
    written nothing) where it does not apply. Chunk a's candidate lists take every pair
    (a', a) for a' <= a, then (a, b) for b > a in order, and are finished then: only the
    lists of two chunks are in memory at a time. After each pair both chunks' lists are saved
    (``_JoinState``), so a rerun goes on from the last pair done; the lists, and so the model,
    are the same bits as an uninterrupted join's."""
    from ..backends import kernels_for, resolve

    if job.method != "exact" or resolve(job.backend).self_join is None:
        return False
    with kernels_for(job.backend, _open_reference(job), n_jobs=job.n_jobs) as (kernels, (X,)):
        join = kernels.self_join(X, job.k)
        if join is None:  # norms too large for the gemm: the chunks' searches fall back
            return False
        pending = {chunk.index for chunk in todo}
        state = _JoinState(job, plan, pending, log)
        rows = [(c.row, c.row + c.n_rows) for c in plan]

        def to_do(a, b):  # a pair still to run: a pending chunk needs it, and it is not done
            return (a in pending or b in pending) and not state.is_done(a, b)

        def work(a, b):  # the pair's share of the gemm work, in row pairs
            return plan[a].n_rows * plan[b].n_rows * (0.5 if a == b else 1.0)

        total = sum(work(a, b) for a in range(len(plan)) for b in range(a, len(plan))
                    if to_do(a, b)) or 1.0
        done, start = 0.0, bar.n

        def advance(pair_done):
            bar.update(start + round((done + pair_done) / total * (job.n_rows - start))
                       - bar.n)

        # Two sets of lists, allocated once and reused chunk after chunk (arrays of tens of
        # MB allocated and freed in turn leave glibc's heap fragmented: 60 MB more at 500k
        # rows).
        largest = max(c.n_rows for c in plan)
        spare = [join.new_lists(largest), join.new_lists(largest)]

        def load(chunk, which):
            """The chunk's candidate lists, into spare set ``which``: saved, or empty."""
            out = tuple(array[:plan[chunk].n_rows] for array in spare[which])
            if chunk not in pending or not state.read_lists(chunk, out):
                out[0].fill(np.inf)
                out[1].fill(-1)
            return out

        for a in range(len(plan)):
            row_pairs = [b for b in range(a, len(plan)) if to_do(a, b)]
            if a not in pending and not row_pairs:
                continue
            lists_a = load(a, 0)
            for b in row_pairs:
                lists_b = lists_a if b == a else load(b, 1)
                join.pair(rows[a], rows[b], lists_a, lists_b,
                          lambda f, w=work(a, b): advance(f * w))
                state.pair_done(a, b, {c: lists for c, lists in ((a, lists_a), (b, lists_b))
                                       if c in pending})
                done += work(a, b)
            if a in pending:
                # Finished and written a block of rows at a time: no chunk-sized answers.
                _write_lists(job, job.lists_path(a), plan[a].n_rows, (
                    join.finish((row, min(row + FINISH_ROWS, rows[a][1])),
                                tuple(array[row - rows[a][0]:][:FINISH_ROWS]
                                      for array in lists_a))
                    for row in range(rows[a][0], rows[a][1], FINISH_ROWS)))
                state.forget(a)
    Path(job.folder, SELF_JOIN_STATE).unlink(missing_ok=True)
    bar.update(job.n_rows - bar.n)
    return True


class _JoinState:
    """Where the self-join of a fit is, in its work folder. ``SELF_JOIN_STATE`` holds how
    many chunk pairs (a, b), a <= b, in their fixed order, are done; ``join-AAAAAA-PPPPPP.npy``
    the candidate lists of chunk A after pair number P (its values, then its indices: two
    arrays in one file, written from memory with no buffer). A pair's lists go to new files
    and the count moves on atomically after them; the files it made stale are removed then
    (or at the next start), so a kill at any point leaves a state the rerun can go on from.
    Saved lists gone missing start the join over."""

    def __init__(self, job: LoopJob, plan, pending, log):
        self.folder = Path(job.folder)
        self.n_chunks = len(plan)
        self.path = self.folder / SELF_JOIN_STATE
        self.n_done = self._read_count()
        self.files = {}  # chunk -> its lists' file
        for path in sorted(self.folder.glob("join-*.npy")):
            chunk, number = (int(part) for part in path.stem.split("-")[1:])
            if chunk not in pending or number >= self.n_done:
                path.unlink()  # finished, or of a pair not counted
            else:
                if chunk in self.files:
                    self.files[chunk].unlink()  # superseded (kept max number, sorted)
                self.files[chunk] = path
        # Chunk c's first pair in the order is (0, c), number c: the counted pairs have
        # touched exactly the chunks below n_done.
        started = {c for c in pending if self._number(0, c) < self.n_done}
        if started - set(self.files):
            log("the self-join's saved lists are incomplete: starting it over")
            self._start_over()
        elif self.n_done:
            n_pairs = self._number(self.n_chunks - 1, self.n_chunks - 1) + 1
            log(f"resuming the self-join after {self.n_done} of {n_pairs} chunk pairs")

    def _read_count(self) -> int:
        try:
            state = json.loads(self.path.read_text())
            if state["n_chunks"] == self.n_chunks and 0 <= state["pairs_done"]:
                return int(state["pairs_done"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return 0

    def _start_over(self):
        for path in self.files.values():
            path.unlink()
        self.files = {}
        self.n_done = 0

    def _number(self, a, b) -> int:
        """The pair's place in the order: the rows before a, then b's place in a's row."""
        return a * self.n_chunks - a * (a - 1) // 2 + (b - a)

    def is_done(self, a, b) -> bool:
        return self._number(a, b) < self.n_done

    def read_lists(self, chunk, out) -> bool:
        """Read the chunk's saved candidate lists into ``out`` (values, indices); False
        where no pair has touched it yet."""
        path = self.files.get(chunk)
        if path is None:
            return False
        try:
            with open(path, "rb") as f:
                for array in out:
                    _read_npy_into(f, array)
        except (OSError, ValueError) as exc:
            raise BatchError(f"cannot read the self-join's lists {path} ({exc}); delete "
                             f"{self.path} and rerun the same command to start the join "
                             "over") from None
        return True

    def pair_done(self, a, b, lists):
        """Save the lists {chunk: lists} that pair (a, b) updated, then count it."""
        number = self._number(a, b)
        stale = []
        for chunk, (values, indices) in lists.items():
            path = self.folder / f"join-{chunk:06d}-{number:06d}.npy"
            write_atomically(path, lambda f: (np.save(f, values), np.save(f, indices)))
            if chunk in self.files:
                stale.append(self.files[chunk])
            self.files[chunk] = path
        self.n_done = number + 1
        write_atomically(self.path, lambda f: f.write(json.dumps(
            {"pairs_done": self.n_done, "n_chunks": self.n_chunks}).encode()))
        for path in stale:
            path.unlink()

    def forget(self, chunk):
        """The chunk's lists are written: its join files go."""
        path = self.files.pop(chunk, None)
        if path is not None:
            path.unlink()


def _lists_dtype(job: LoopJob) -> np.dtype:
    return np.dtype([("D", job.dtype, (job.k,)), ("I", "<i8", (job.k,))])


def _read_lists(job: LoopJob, chunk):
    return _read_lists_file(job, job.lists_path(chunk.index), chunk.n_rows)


def _read_lists_file(job: LoopJob, path: Path, n_rows: int):
    try:
        lists = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BatchError(f"cannot read the kNN lists {path} ({exc}); delete it and rerun the "
                         "same command to search those rows again") from None
    if lists.dtype != _lists_dtype(job) or lists.shape != (n_rows,):
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


def _dask_tasks(job: LoopJob, todo) -> list:
    """(chunk, part, start, stop) of every Dask task of chunks ``todo``: runs of
    DASK_TASK_ROWS rows (a multiple of SEARCH_CHUNK for faiss, as ``search_plan``), fixed
    whatever the workers, so a rerun finds the parts an earlier run wrote."""
    from ..neighbors import SEARCH_CHUNK

    size = DASK_TASK_ROWS
    if job.method in ("faiss", "ivf"):
        size = -(-size // SEARCH_CHUNK) * SEARCH_CHUNK
    return [(chunk, part, start, min(start + size, chunk.row + chunk.n_rows))
            for chunk in todo
            for part, start in enumerate(range(chunk.row, chunk.row + chunk.n_rows, size))]


def _search_on_dask(job, todo, scheduler, n_workers, bar, log):
    """Search chunks ``todo`` as Dask tasks of a part of a chunk each (so that the workers
    finish together: a 500k-row fit is 3 chunks of 32 MB, which 2 workers would share 2 to
    1), each writing its part's lists; then join each chunk's parts into its lists file."""
    if scheduler == "local":
        n_workers = n_workers or cpu_count()
        # The machine's cores shared among its workers (each task's kernels are threaded).
        job = dataclasses.replace(job, n_jobs=max(1, cpu_count() // n_workers))
    tasks = _dask_tasks(job, todo)
    left = [task for task in tasks if not job.part_path(task[0].index, task[1]).exists()]
    if len(left) < len(tasks):
        log(f"resuming: {len(tasks) - len(left)} of {len(tasks)} Dask tasks already done")
        bar.update(sum(stop - start for _, _, start, stop in tasks) -
                   sum(stop - start for _, _, start, stop in left))
    if left:
        with dask_client(scheduler, n_workers, log) as (client, as_completed):
            futures = [client.submit(search_chunk, job, chunk.index, start, stop, part,
                                     pure=False,
                                     key=f"fastzsl-fit-{job.job_id}-{chunk.index}-{part}")
                       for chunk, part, start, stop in left]
            for future in as_completed(futures):
                bar.update(future.result())
            client.run(forget_job, job.job_id)
    for chunk in todo:
        parts = [(start, stop, job.part_path(chunk.index, part))
                 for c, part, start, stop in tasks if c is chunk]
        _write_lists(job, job.lists_path(chunk.index), chunk.n_rows,
                     (_read_lists_file(job, path, stop - start) for start, stop, path in parts))
        for _, _, path in parts:
            path.unlink()
