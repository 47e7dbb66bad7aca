"""Fit novelty detectors on feature files of any size: chunked, resumable, on Dask.

``fit_file(estimator, input, model_path)`` fits a ``LoOP`` or a ``GaussianNovelty`` on every
row of a ``.npy`` file, a Parquet file or a folder of such shards (what ``fastzsl score``
reads) and writes its model file, holding no more than the reference set and a chunk (or,
with LoOP's self-join schedule, the candidate lists of every row, as ``LoOP.fit`` does).

LoOP. Its in-sample fit needs every reference row's k nearest other rows: a kNN self-join.
The rows are split into chunks; each chunk is searched against the whole reference with
its own rows left out, and its kNN lists are written atomically (as score's result chunks
are) to ``MODEL.parts/lists-NNNNNN.npy``. A killed job, rerun with the same command, keeps
the lists it finds and searches the rest. In one process with the cython kernels, the
default schedule runs their self-join instead (each pair of row blocks once: half the gemm
work), saving its candidate lists about once a minute (``self-join.npz``) for a rerun to go
on from, and writes the chunks' lists at its end. The exact kernels give a row the same list
however the rows are chunked (bit for bit the graph of ``LoOP.fit``), and the reduction
reads the lists in one fixed order, so the model file is the same, byte for byte, whatever
the kills and the number of workers (running the same kernels). The reduction: pdist of each row from its own list; PLOF from
its neighbours' pdists; nPLOF; the probabilities (two streaming passes over the lists,
O(n) float64 memory; the NumPy reference formulas of ``fastzsl.backends.numpy_``).

Work folder ``MODEL.parts/`` (removed once the model file is written):

    _manifest.json     what the job is: input, estimator parameters, chunking, kNN method
    _job.lock          held by the job working on it, as score's output folders are
    reference.npy      the reference rows in one file (unless the input is one .npy file)
    ivf.index          knn="ivf": the trained, empty IVF index every search process fills
    lists-000000.npy   the D and I rows (k each) of chunk 0's rows, ...

Memory per process: the reference, memory-mapped (the page cache keeps one copy for all
the processes of a machine), one chunk's rows and lists, and a few float64 arrays of n.

GaussianNovelty: one streaming pass of per-class sums in float64 (shifted by each class's
first row, so the variance loses nothing to cancellation), then one pass for the training
scores its outlier probability is read off. The labels come from a parallel file, or a
column of Parquet input.

On Dask (``scheduler="local"`` starts a ``LocalCluster``; else the address of a running
scheduler), each task searches one chunk and writes its lists itself, with the code of
the one-process path; workers memory-map the reference from the file system every worker
mounts (the model file's folder), once per worker process; the driver validates the input,
writes the reference file, submits the tasks and reduces.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np

from ._files import TMP_PREFIX, BatchError, write_atomically
from ._locks import LOCK, output_lock
from ._platform import cpu_count
from ._validation import check_option
from .batch import DEFAULT_CHUNK_BYTES, dask_client, open_input, plan_chunks, read_rows

FORMAT = "fastzsl-fit"
FORMAT_VERSION = 1
PARTS_SUFFIX = ".parts"
MANIFEST = "_manifest.json"
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


# ---------------------------------------------------------------------------- the API
def fit_file(estimator, input, model_path, *, labels=None, chunk_size=None, scheduler=None,
             n_workers=None, schedule="auto", progress=True, wait=False, log=None) -> dict:
    """Fit ``estimator`` on every row of ``input`` and write its model file ``model_path``.

    Parameters
    ----------
    estimator : LoOP or GaussianNovelty
        An unfitted estimator: its parameters say what to fit (it is not modified).
        ``fastzsl.load(model_path)`` afterwards equals ``estimator.fit(X)`` on all rows
        within 1e-10 (LoOP: the kNN graph bit for bit with exact kNN, and with ``knn="ivf"``
        where faiss runs the same BLAS; see ``search_plan``).
    input : path
        A ``.npy`` file, a ``.parquet`` file or a folder of them (name order), float32 or
        float64 rows, as ``fastzsl score`` reads; mixed dtypes fit in float64.
    model_path : path
        The model file to write. Its work folder ``model_path + ".parts"`` holds a killed
        job's kNN lists; rerunning the same call resumes from them.
    labels : path or str, optional
        GaussianNovelty only: the class label of every row, parallel to ``input``: a 1-D
        ``.npy`` file, a one-column ``.parquet`` file, or a folder of such shards; or the
        name of a column of Parquet input (its other columns are then the features).
    chunk_size : int, optional
        Rows per chunk (default: about 32 MB of input rows).
    scheduler : None, "local" or str
        LoOP's searches on Dask: "local" starts a ``LocalCluster`` of ``n_workers``
        single-threaded worker processes (the cores shared among them); an address such as
        ``"tcp://10.0.0.1:8786"`` uses a running cluster, whose workers must see the
        model file's folder (and ``input`` when it is one ``.npy`` file).
    n_workers : int, optional
        LocalCluster workers (default: one per core).
    schedule : {"auto", "self-join", "chunks"}
        How one process searches LoOP's exact neighbours. ``"self-join"``: every pair of
        row blocks once (half the gemm work of "chunks"; the in-memory fit's kernel),
        saving its candidate lists to the work folder about once a minute so a killed job
        resumes from there; it holds the candidate lists of every row (about n * (k + 8) *
        12 bytes for float32 rows), as ``LoOP.fit`` does. ``"chunks"``: each chunk against
        the whole reference, holding one chunk's lists. ``"auto"``: the self-join when
        there is no scheduler, the kernels have one and the lists fit its memory limit
        (the rule ``LoOP.fit`` follows), else chunks. Both give the same lists, bit for bit.
    progress : bool
        Show a progress bar over the searched rows.
    wait : bool
        If another job is fitting ``model_path``, wait for it instead of refusing.
    log : callable, optional
        Called with one-line messages: resumption, the kNN method, Dask workers.

    Returns
    -------
    dict
        What was done: ``model``, ``estimator``, ``n_rows``, ``n_chunks``,
        ``chunks_searched_now`` (LoOP), ``knn`` (LoOP: the method and its parameters),
        ``seconds``.
    """
    from .gaussian import GaussianNovelty
    from .loop import LoOP

    start = time.perf_counter()
    log = log or (lambda message: None)
    if chunk_size is not None and (isinstance(chunk_size, bool)
                                   or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if n_workers is not None and (isinstance(n_workers, bool)
                                  or not isinstance(n_workers, (int, np.integer))
                                  or n_workers < 1):
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    check_option(schedule, SCHEDULES, "schedule")
    if isinstance(estimator, LoOP):
        if labels is not None:
            raise ValueError("labels apply to GaussianNovelty; LoOP is fitted without labels")
        fit = _fit_loop
    elif isinstance(estimator, GaussianNovelty):
        if labels is None:
            raise ValueError("GaussianNovelty needs labels: a file (or folder of shards) "
                             "with the class label of every input row")
        fit = _fit_gaussian
    else:
        raise TypeError(f"fit_file fits a LoOP or a GaussianNovelty, got "
                        f"{type(estimator).__name__}")
    # GaussianNovelty's labels: a file, or else a column of the Parquet input
    label_column = None if labels is None or Path(labels).exists() else str(labels)
    source = _Source(input, chunk_size, exclude=label_column)
    model_path = Path(model_path)
    if model_path.is_dir():
        raise BatchError(f"model path {model_path} is a folder; name the model file")
    if not model_path.parent.is_dir():
        raise BatchError(f"the folder {model_path.parent} of the model file does not exist")
    summary = fit(estimator, source, model_path, labels=labels, scheduler=scheduler,
                  n_workers=n_workers, schedule=schedule, progress=progress, wait=wait,
                  log=log)
    summary.setdefault("n_chunks", len(source.chunks))
    summary.update(model=str(model_path), n_rows=source.n_rows,
                   seconds=time.perf_counter() - start)
    return summary


# ---------------------------------------------------------------------------- the input
class _Source:
    """The input's shards and chunks, and the dtype the rows are fitted in; ``exclude``: a
    column of Parquet input that is not a feature (the labels)."""

    def __init__(self, path, chunk_size, exclude=None):
        self.path = str(path)
        self.exclude = exclude
        self.columns = None  # all of them
        self.shards = open_input(path) if exclude is None else self._without(exclude)
        self.n_rows = sum(s.n_rows for s in self.shards)
        self.width = self.shards[0].width
        if self.n_rows == 0:
            raise BatchError(f"input {path} holds no rows")
        # What np.concatenate of the shards gives: float64 if any shard is.
        wide = any(np.dtype(s.dtype).itemsize == 8 for s in self.shards)
        self.dtype = np.dtype(np.float64 if wide else np.float32)
        if chunk_size is None:
            chunk_size = max(1024, DEFAULT_CHUNK_BYTES // (self.width * self.dtype.itemsize))
        self.chunk_size = int(chunk_size)
        self.chunks = plan_chunks(self.shards, self.chunk_size)

    def _without(self, column):
        """The Parquet shards of the input with ``column`` left out of the features."""
        from ._optional import import_pyarrow
        from .batch._shards import Shard, _parquet_width_and_dtype

        _, pq = import_pyarrow()
        path = Path(self.path)
        files = sorted(p for p in path.iterdir() if p.suffix == ".parquet"
                       and not p.name.startswith(".")) if path.is_dir() else [path]
        if not files or any(p.suffix != ".parquet" or not p.is_file() for p in files):
            raise BatchError(f"labels {column!r} is no file, and the input {path} is no Parquet "
                             "file or folder of them whose column it could be")
        shards = []
        for p in files:
            try:
                pf = pq.ParquetFile(p)
                schema, n_rows = pf.schema_arrow, pf.metadata.num_rows
            except (OSError, ValueError) as exc:
                raise BatchError(f"cannot read input shard {p}: {exc}") from None
            if column not in schema.names:
                raise BatchError(f"labels {column!r} is no file, and input shard {p} has no "
                                 f"such column (it has {schema.names})")
            features = schema.remove(schema.get_field_index(column))
            width, dtype = _parquet_width_and_dtype(features, p)
            shards.append(Shard(str(p), "parquet", int(n_rows), int(width), dtype, 0,
                                p.stat().st_size))
            columns = features.names
            if self.columns not in (None, columns):
                raise BatchError(f"input shard {p} has feature columns {columns} but "
                                 f"{shards[0].path} has {self.columns}")
            self.columns = columns
        return shards

    def labels(self) -> np.ndarray:
        """The ``exclude`` column of every shard, in row order."""
        from ._optional import import_pyarrow

        _, pq = import_pyarrow()
        parts = [pq.read_table(s.path, columns=[self.exclude]).column(0)
                 .to_numpy(zero_copy_only=False) for s in self.shards]
        y = np.concatenate(parts)
        return y.astype(str) if y.dtype.kind == "O" else y

    def rows(self, chunk, dtype=None) -> np.ndarray:
        """The chunk's rows, checked finite (the error names the shard and its rows)."""
        X = read_rows(self.shards[chunk.shard], chunk.start, chunk.stop, self.columns)
        if _bad_rows(X).size:
            self._refuse(chunk)
        return X.astype(dtype or self.dtype, copy=False)

    def check_all_rows(self):
        """Read every row once and refuse NaN or infinity, before any work is done."""
        for chunk in self.chunks:
            self.rows(chunk)

    def _refuse(self, first_bad):
        """Raise, naming the bad rows of ``first_bad``'s shard from that chunk on."""
        rows = [chunk.start + _bad_rows(read_rows(self.shards[chunk.shard], chunk.start,
                                                  chunk.stop, self.columns))
                for chunk in self.chunks[first_bad.index:] if chunk.shard == first_bad.shard]
        rows = np.concatenate(rows)
        shown = ", ".join(map(str, rows[:10])) + (", ..." if rows.size > 10 else "")
        raise BatchError(
            f"input shard {self.shards[first_bad.shard].path} has rows with NaN or infinity: "
            f"{rows.size} (rows {shown}); fix or drop them and rerun the same command")

    def identity(self) -> dict:
        return {"input": [s.identity() for s in self.shards], "n_rows": self.n_rows,
                "dtype": self.dtype.str, "chunk_size": self.chunk_size}

    def single_npy(self):
        """The input file when it already is the reference file (one native .npy of the
        fitting dtype, memory-mappable as it is), else None."""
        if len(self.shards) == 1:
            shard = self.shards[0]
            if shard.kind == "npy" and np.dtype(shard.dtype) == self.dtype:
                return shard.path
        return None


def _bad_rows(X) -> np.ndarray:
    return np.flatnonzero(~np.isfinite(X).all(axis=1))


def _parts_folder(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + PARTS_SUFFIX)


@dataclasses.dataclass(frozen=True)
class _Workspace:
    """The work folder of one job, claimed under its lock."""

    folder: Path
    resumed: bool


def _claim(model_path: Path, identity: dict, wait, log):
    """Create (or find) the job's work folder and hold its lock: a context manager giving a
    ``_Workspace``. A model file with no unfinished job behind it is never overwritten."""
    import contextlib

    folder = _parts_folder(model_path)
    if model_path.exists() and not (folder / MANIFEST).exists():
        raise BatchError(f"{model_path} exists; delete it (or name another file) to fit anew")

    @contextlib.contextmanager
    def claimed():
        folder.mkdir(exist_ok=True)
        with output_lock(folder, wait=wait, log=log):
            manifest_path = folder / MANIFEST
            if manifest_path.exists():
                try:
                    old = json.loads(manifest_path.read_text())
                except (OSError, json.JSONDecodeError) as exc:
                    raise BatchError(f"{manifest_path} is unreadable ({exc}); delete "
                                     f"{folder} to fit anew") from None
                diff = sorted(k for k in set(old) | set(identity)
                              if old.get(k) != identity.get(k))
                if diff:
                    raise BatchError(
                        f"{folder} holds an unfinished fit of a different job (it differs in: "
                        f"{', '.join(diff)}); nothing was changed: rerun that job's command, or "
                        f"delete {folder} to fit this one")
                resumed = True
            elif model_path.exists():  # the job we waited for wrote it
                raise BatchError(f"{model_path} exists; delete it (or name another file) to "
                                 "fit anew")
            elif any(p.name != LOCK for p in folder.iterdir()):
                raise BatchError(f"work folder {folder} holds files of no fastzsl fit; delete "
                                 "it or name another model file")
            else:
                write_atomically(manifest_path,
                                 lambda f: f.write(json.dumps(identity, indent=1).encode()))
                resumed = False
            for stale in folder.glob(f"{TMP_PREFIX}*"):
                stale.unlink()
            yield _Workspace(folder, resumed)
            # The model file is written: the folder's work is done. The manifest goes last,
            # so a job killed in between still finds its (finished) job here.
            for path in folder.iterdir():
                if path.name not in (LOCK, MANIFEST):
                    path.unlink()
            (folder / MANIFEST).unlink()
        try:
            folder.rmdir()
        except OSError:  # another job is waiting on its lock, or it is already gone
            pass

    return claimed()


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
    from .neighbors import SEARCH_CHUNK

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
    from .backends import get_backend
    from .neighbors import FaissIndex, check_method, resolve_method

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
    from ._model_files import save_estimator
    from ._validation import check_k, check_positive_number
    from .backends import resolve
    from .loop import SCORING, export_loop

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
    from ._optional import import_faiss
    from .backends import thread_limits

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
        from .backends import kernels_for

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
            from .neighbors import KDTreeSearch

            self.tree = KDTreeSearch(np.asarray(self.reference))
        else:
            self.index = self._faiss_index()

    def _faiss_index(self):
        from ._optional import import_faiss

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
        from ._array import to_host

        job, k = self.job, self.job.k
        if job.method == "exact":
            Q = self.device_reference[start:stop]
            D, I = self.kernels.knn(Q, self.device_reference, k, start, *self.prepared)
            return to_host(D), to_host(I)
        if job.method == "kdtree":
            return self.tree.search(np.asarray(self.reference[start:stop]), k,
                                    np.arange(start, stop))
        from .neighbors import SEARCH_CHUNK
        from .neighbors._faiss import _drop_self

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
    from .backends import thread_limits

    searcher = _searcher(job)
    with thread_limits(job.n_jobs, backend=job.backend, knn=job.method):
        D, I = searcher.search(start, stop)
    lists = np.empty(stop - start, dtype=_lists_dtype(job))
    lists["D"], lists["I"] = D, I
    write_atomically(job.lists_path(index), lambda f: np.save(f, lists, allow_pickle=False))
    return stop - start


def _self_join(job: LoopJob, todo, bar, log) -> bool:
    """Search every row with the kernels' self-join and write the lists of chunks ``todo``;
    False (having written nothing) where it does not apply. The join's candidate lists are
    saved to ``SELF_JOIN_STATE`` at most every SELF_JOIN_SAVE_SECONDS, at a boundary of its
    rounds, and a rerun goes on from there: the same bits as an uninterrupted join."""
    from .backends import kernels_for, resolve

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

    with kernels_for(job.backend, X, n_jobs=job.n_jobs) as (kernels, (X,)):
        result = kernels.knn_self(X, job.k, advance, resume=resume, on_rounds=save)
    if result is None:
        return False
    D, I = result
    for chunk in todo:
        rows = slice(chunk.row, chunk.row + chunk.n_rows)
        lists = np.empty(chunk.n_rows, dtype=_lists_dtype(job))
        lists["D"], lists["I"] = D[rows], I[rows]
        write_atomically(job.lists_path(chunk.index),
                         lambda f: np.save(f, lists, allow_pickle=False))
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
    from .backends.numpy_ import nplof_from, plof_from, probabilistic_distance, probability_from
    from .loop import LoOPFit

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


# ---------------------------------------------------------------------------- Gaussian
def _read_labels(labels, source) -> np.ndarray:
    """The label of every input row, from a parallel file or folder of shards."""
    path = Path(labels)
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.suffix in (".npy", ".parquet") and not p.name.startswith("."))
        if len(files) != len(source.shards):
            raise BatchError(f"labels folder {path} holds {len(files)} shards but the input "
                             f"{source.path} holds {len(source.shards)}")
    elif path.is_file():
        files = [path]
    else:
        raise BatchError(f"labels {path} does not exist")
    parts = [_read_label_file(p) for p in files]
    if len(files) > 1:
        for part, p, shard in zip(parts, files, source.shards):
            if len(part) != shard.n_rows:
                raise BatchError(f"labels shard {p} has {len(part)} rows but input shard "
                                 f"{shard.path} has {shard.n_rows}")
    y = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if len(y) != source.n_rows:
        raise BatchError(f"labels {path} has {len(y)} rows but the input {source.path} has "
                         f"{source.n_rows}")
    return y


def _read_label_file(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            y = np.load(path, allow_pickle=False)
        elif path.suffix == ".parquet":
            from ._optional import import_pyarrow

            _, pq = import_pyarrow()
            table = pq.read_table(path)
            if table.num_columns != 1:
                raise BatchError(f"labels file {path} has {table.num_columns} columns; "
                                 "expected one column of labels")
            y = table.column(0).to_numpy(zero_copy_only=False)
        else:
            raise BatchError(f"labels {path} is not a .npy or .parquet file")
    except (OSError, ValueError) as exc:
        raise BatchError(f"cannot read labels {path}: {exc}") from None
    if y.ndim != 1:
        raise BatchError(f"labels {path} has shape {y.shape}; expected one label per row")
    if y.dtype.kind == "O":
        y = y.astype(str)
    return y


def _fit_gaussian(estimator, source, model_path, *, labels, scheduler, n_workers, schedule,
                  progress, wait, log):
    from sklearn.base import clone

    from .gaussian import RULES, VARIANCES

    check_option(estimator.rule, RULES, "rule")
    check_option(estimator.variance, VARIANCES, "variance")
    y = _read_labels(labels, source) if source.exclude is None else source.labels()
    if scheduler is not None:
        log("GaussianNovelty: one streaming pass, run in this process (scheduler unused)")
    classes, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    codes = codes.ravel()
    model = clone(estimator)
    # The first pass reads (and checks) every row and writes nothing: bad input is refused
    # before the job claims the model path.
    _class_parameters(model, source, classes, codes, counts)
    identity = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "estimator": "GaussianNovelty",
                "params": {name: value for name, value in estimator.get_params().items()
                           if name != "n_jobs"},
                "labels": source.exclude or str(Path(labels).resolve()),
                **source.identity()}
    with _claim(model_path, identity, wait, log):
        _training_scores(model, source, codes)
        model.save(model_path)
    return {"estimator": "GaussianNovelty", "classes": classes.tolist()}


def _class_parameters(model, source, classes, codes, counts):
    """means_, variances_, priors_ from one pass of per-class float64 sums.

    Each class's rows are summed as offsets z = f - s from its first row s, and the sum of
    squared deviations from the mean is sum ||z||^2 - ||sum z||^2 / N: shifted by a point of
    the class, the two terms are of the size of the deviations themselves, so no digits are
    lost to a large mean (the textbook sum of squares would lose them)."""
    from ._validation import as_float_matrix

    n_classes, d = len(classes), source.width
    first = np.unique(codes, return_index=True)[1]
    shift = np.empty((n_classes, d))
    sums = np.zeros((n_classes, d))
    squares = np.zeros(n_classes)
    for chunk in source.chunks:
        X = source.rows(chunk, np.float64)
        c = codes[chunk.row:chunk.row + chunk.n_rows]
        for cls, row in enumerate(first):  # the first row of a class is in this chunk
            if chunk.row <= row < chunk.row + chunk.n_rows:
                shift[cls] = X[row - chunk.row]
        Z = X - shift[c]
        order = np.argsort(c, kind="stable")
        present, starts = np.unique(c[order], return_index=True)
        sums[present] += np.add.reduceat(Z[order], starts, axis=0)
        squares += np.bincount(c, weights=np.einsum("ij,ij->i", Z, Z), minlength=n_classes)
    model.classes_ = classes
    model.means_ = as_float_matrix(shift + sums / counts[:, None], "means", dtype=np.float64)
    deviations = np.maximum(squares - np.einsum("ij,ij->i", sums, sums) / counts, 0.0)
    denominator = counts if model.variance == "class" else np.full(n_classes, source.n_rows)
    model.variances_ = deviations / (denominator * d)
    if (model.variances_ == 0).any():
        zero = ", ".join(f"{classes.tolist()[c]!r} (n_samples = {counts[c]})"
                         for c in np.flatnonzero(model.variances_ == 0))
        raise ValueError(
            f"classes {zero} have zero variance: all their points equal their mean")
    model.priors_ = counts / source.n_rows
    model.n_features_in_ = d
    model.offset_ = 1.0 - model.default_threshold


def _training_scores(model, source, codes):
    """The sorted training scores ``GaussianNovelty`` reads probabilities off (one pass)."""
    parts = []
    for chunk in source.chunks:
        X = source.rows(chunk, np.float64)
        if model.rule == "mixture":
            parts.append(model._mixture(X))
        else:
            c = codes[chunk.row:chunk.row + chunk.n_rows]
            parts.append(model.log_likelihood(X)[np.arange(len(c)), c])
    scores = np.concatenate(parts)
    if model.rule == "mixture":
        model._train_scores = np.sort(scores)
    else:
        model._train_scores = [np.sort(scores[codes == c]) for c in range(len(model.classes_))]
