"""Batch scoring at scale: features on disk, through a fitted model, to result shards.

A job reads feature rows from a ``.npy`` file, a Parquet file, or a folder of such shards,
in chunks, scores each chunk with a fitted model (``ZeroShotClassifier``, ``LoOP`` or
``GaussianNovelty``) and writes one result file per chunk into the output folder:

    OUTPUT/_manifest.json         what the job is (model checksum, inputs, chunking, columns)
    OUTPUT/chunk-000000.npy       rows 0 .. chunk_size-1 (or .parquet)
    OUTPUT/chunk-000001.npy       ...

Nothing is lost or duplicated when a job dies (SIGKILL, full disk, a bad shard): a result
file is written under a temporary name, flushed to disk and renamed, so a chunk file either
exists whole or not at all. Rerunning the same command skips the finished chunks and ends
with the same files an uninterrupted run writes, byte for byte. Memory stays bounded by the
model, its reference index and a few chunks: input rows are read with plain file reads (not
kept in a memory map), one chunk at a time.

The same job runs on a Dask cluster (``scheduler="local"`` starts a ``LocalCluster``, or the
address of an existing scheduler): the model file's bytes are broadcast to each worker once
and loaded there once; each task reads its chunk from the shared file system and writes its
result file itself, with the same code as the single-process path, so results are the same.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ._files import TMP_PREFIX, write_atomically
from ._optional import import_pyarrow
from ._validation import check_option

# Leading underscore: Parquet readers (pyarrow, Spark, Dask) skip it in a data-set folder.
MANIFEST = "_manifest.json"
# Held by the job working in the folder (its pid, host and command; an flock).
LOCK = "_job.lock"
FORMAT = "fastzsl-scores"
FORMAT_VERSION = 1
OUTPUT_FORMATS = ("npy", "parquet")
INPUT_SUFFIXES = (".npy", ".parquet")
# Default chunk: about this many bytes of input rows (64k rows of 50 float32s is 13 MB).
DEFAULT_CHUNK_BYTES = 32 << 20


class BatchError(RuntimeError):
    """A batch job stopped on bad input or a failed write; finished chunks are kept."""


# ---------------------------------------------------------------------------- input shards
@dataclasses.dataclass(frozen=True)
class Shard:
    """One input file: rows of ``width`` float features."""

    path: str
    kind: str            # "npy" | "parquet"
    n_rows: int
    width: int
    dtype: str
    data_offset: int     # .npy: byte offset of the first row (0 for Parquet)
    size: int

    def identity(self) -> dict:
        """What must not change between a job and its resumption.

        Not the modification time: fixing a bad row in place and rerunning must resume.
        """
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "data_offset"}


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Rows ``start:stop`` of shard ``shard``; ``row`` is the first row's global index."""

    index: int
    shard: int
    start: int
    stop: int
    row: int

    @property
    def n_rows(self) -> int:
        return self.stop - self.start

    def file_name(self, output_format: str) -> str:
        return f"chunk-{self.index:06d}.{output_format}"


def _inspect_npy(path: Path) -> Shard:
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError) as exc:
        raise BatchError(f"cannot read input shard {path}: {exc}") from None
    if len(shape) != 2:
        raise BatchError(f"input shard {path} has shape {shape}; expected 2-D rows of features")
    if fortran and shape[0] > 1 and shape[1] > 1:
        raise BatchError(f"input shard {path} is stored in Fortran order; rows must be "
                         "contiguous: save it with np.save(path, np.ascontiguousarray(X))")
    stat = path.stat()
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if stat.st_size < expected:
        raise BatchError(f"input shard {path} is truncated: its header says {shape[0]} rows of "
                         f"{shape[1]} {dtype} values ({expected} bytes) but the file has "
                         f"{stat.st_size} bytes")
    return Shard(str(path), "npy", int(shape[0]), int(shape[1]), dtype.str, offset,
                 stat.st_size)


def _parquet_file(path):
    _, pq = import_pyarrow()
    return pq.ParquetFile(path)


def _parquet_width_and_dtype(schema, path) -> tuple[int, str]:
    """Features are either one fixed-size-list column or all columns numeric, in order."""
    pa, _ = import_pyarrow()

    types = [field.type for field in schema]
    if len(types) == 1 and pa.types.is_fixed_size_list(types[0]):
        value = types[0].value_type
        if pa.types.is_floating(value):
            return types[0].list_size, np.dtype(value.to_pandas_dtype()).str
    elif types and all(pa.types.is_floating(t) for t in types) and len(set(types)) == 1:
        return len(types), np.dtype(types[0].to_pandas_dtype()).str
    raise BatchError(
        f"input shard {path} has columns {[f'{f.name}: {f.type}' for f in schema]}; expected "
        "one fixed_size_list<float> column or float columns of one type")


def _inspect_parquet(path: Path) -> Shard:
    try:
        pf = _parquet_file(path)
        schema = pf.schema_arrow
        n_rows = pf.metadata.num_rows
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise BatchError(f"cannot read input shard {path}: {exc}") from None
    width, dtype = _parquet_width_and_dtype(schema, path)
    stat = path.stat()
    return Shard(str(path), "parquet", int(n_rows), int(width), dtype, 0, stat.st_size)


def open_input(path) -> list[Shard]:
    """The shards of an input: a ``.npy`` or ``.parquet`` file, or a folder of them.

    Shards of a folder are taken in file-name order; every shard must hold 2-D float32 or
    float64 rows of the same width.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.suffix in INPUT_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise BatchError(f"input folder {path} holds no {' or '.join(INPUT_SUFFIXES)} files")
    elif path.is_file():
        if path.suffix not in INPUT_SUFFIXES:
            raise BatchError(f"input {path} is not a {' or '.join(INPUT_SUFFIXES)} file")
        files = [path]
    else:
        raise BatchError(f"input {path} does not exist")
    shards = [_inspect_npy(p) if p.suffix == ".npy" else _inspect_parquet(p) for p in files]
    for shard in shards:
        if np.dtype(shard.dtype) not in (np.float32, np.float64):
            raise BatchError(f"input shard {shard.path} has dtype {np.dtype(shard.dtype)}; "
                             "expected float32 or float64 features")
        if shard.width != shards[0].width:
            raise BatchError(f"input shard {shard.path} has {shard.width} columns but "
                             f"{shards[0].path} has {shards[0].width}")
    return shards


def plan_chunks(shards, chunk_size) -> list[Chunk]:
    """Split every shard into chunks of at most ``chunk_size`` rows (never across shards)."""
    chunks, row = [], 0
    for s, shard in enumerate(shards):
        for start in range(0, shard.n_rows, chunk_size):
            stop = min(start + chunk_size, shard.n_rows)
            chunks.append(Chunk(len(chunks), s, start, stop, row + start))
        row += shard.n_rows
    return chunks


def read_rows(shard: Shard, start: int, stop: int, columns=None) -> np.ndarray:
    """Rows ``start:stop`` of a shard as a new C-contiguous array (no memory map kept);
    ``columns``: of a Parquet shard, only these (default: all)."""
    dtype = np.dtype(shard.dtype)
    where = f"input shard {shard.path} rows {start}..{stop - 1}"
    try:
        if shard.kind == "npy":
            out = np.empty((stop - start, shard.width), dtype=dtype)
            with open(shard.path, "rb") as f:
                f.seek(shard.data_offset + start * shard.width * dtype.itemsize)
                got = f.readinto(memoryview(out).cast("B"))
            if got != out.nbytes:
                raise BatchError(f"{where}: the file is truncated ({got} of {out.nbytes} bytes)")
            return out
        return _read_parquet_rows(shard, start, stop, columns)
    except OSError as exc:
        raise BatchError(f"cannot read {where}: {exc}") from None


def _read_parquet_rows(shard, start, stop, columns=None):
    pa, _ = import_pyarrow()

    pf = _parquet_file(shard.path)
    # Read only the row groups that overlap the chunk.
    first_row, groups, skip = 0, [], 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if first_row + n > start and first_row < stop:
            if not groups:
                skip = start - first_row
            groups.append(g)
        first_row += n
    table = pf.read_row_groups(groups, columns=columns).slice(skip, stop - start)
    if table.num_columns == 1 and pa.types.is_fixed_size_list(table.schema[0].type):
        values = table.column(0).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(values.reshape(stop - start, shard.width))
    return np.ascontiguousarray(np.column_stack(
        [table.column(i).to_numpy() for i in range(table.num_columns)]))


# ---------------------------------------------------------------------------- scoring
def _model_kind(model) -> str:
    """"zeroshot" for a classifier with a novelty gate, "detector" for a detector of the
    novelty-detector protocol (``outlier_probability``)."""
    if hasattr(model, "predict_proba_with_novelty"):
        return "zeroshot"
    if hasattr(model, "outlier_probability"):
        return "detector"
    raise BatchError(f"cannot batch-score a {type(model).__name__}; expected a fitted "
                     "ZeroShotClassifier or a novelty detector (LoOP, GaussianNovelty)")


def novelty_threshold(model) -> float:
    """The threshold on P(unseen|x) of the detector's own ``predict``."""
    return getattr(model, "default_threshold", 0.5)


def output_columns(model, with_proba: bool) -> list[tuple[str, str, tuple]]:
    """(name, dtype, shape per row) of the result columns, in file order."""
    columns = [("row", "<i8", ())]
    if _model_kind(model) == "zeroshot":
        width = max(len(c) for c in model.classes_.tolist())
        columns += [("predicted_class", f"<U{width}", ()), ("top_probability", "<f8", ()),
                    ("p_unseen", "<f8", ())]
        if with_proba:
            columns.append(("proba", "<f8", (len(model.classes_),)))
    else:
        columns += [("p_unseen", "<f8", ()), ("is_novel", "|b1", ())]
    return columns


def score_rows(model, X, with_proba=False) -> dict:
    """The result columns (without ``row``) of one chunk of feature rows."""
    if _model_kind(model) == "zeroshot":
        predicted, proba, p_unseen = model.predict_with_proba(X)
        # the predicted class's probability (predict may route hard, predict_proba is soft)
        column = {c: j for j, c in enumerate(model.classes_.tolist())}
        top = np.array([column[c] for c in predicted.tolist()], dtype=np.int64)
        out = {"predicted_class": predicted,
               "top_probability": proba[np.arange(len(top)), top], "p_unseen": p_unseen}
        if with_proba:
            out["proba"] = proba
        return out
    p_unseen = np.asarray(model.outlier_probability(X), dtype=np.float64)
    return {"p_unseen": p_unseen, "is_novel": p_unseen > novelty_threshold(model)}


def _parts(model) -> list:
    """The model and its novelty detector(s): what carries backend and progress settings."""
    gate = getattr(model, "gate_", None)
    return [model] + (gate.detectors_() if gate is not None else [])


def _quiet(model):
    """Turn off the per-chunk progress bars of the model and its detectors."""
    for part in _parts(model):
        if hasattr(part, "progress"):
            part.progress = False
    return model


def _with_backend(model, backend):
    """The loaded model with its kernels switched to ``backend`` (indexes rebuilt)."""
    from .loop import LoOP

    if backend is None:
        return model
    for part in _parts(model):
        if "backend" not in part.get_params():
            continue
        part.set_params(backend=backend)
        if isinstance(part, LoOP):
            part._build_index(part.index_.reference)
    return model


# ---------------------------------------------------------------------------- result files
def _write_npy(f, columns, table):
    dtype = np.dtype([(name, dt, shape) for name, dt, shape in columns])
    records = np.empty(len(table["row"]), dtype=dtype)
    for name, _, _ in columns:
        records[name] = table[name]
    np.save(f, records, allow_pickle=False)


def _write_parquet(f, columns, table, classes):
    pa, pq = import_pyarrow()

    arrays, names = [], []
    for name, _, shape in columns:
        if shape:  # one column per class: what pandas users expect
            for j, cls in enumerate(classes):
                arrays.append(pa.array(np.ascontiguousarray(table[name][:, j])))
                names.append(f"{name}_{cls}")
        else:
            arrays.append(pa.array(table[name]))
            names.append(name)
    pq.write_table(pa.Table.from_arrays(arrays, names=names), f)


def _check_finite_rows(X, where):
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise BatchError(f"{where} has {rows.size} rows with NaN or infinity (first at row "
                         f"{rows[0]} of the chunk); fix or drop them and rerun the same command")


# ---------------------------------------------------------------------------- the job
@dataclasses.dataclass
class JobSpec:
    """Everything a worker needs to score a chunk (small; sent with every task)."""

    output: str
    output_format: str
    shards: list
    columns: list
    classes: list
    with_proba: bool
    model_sha256: str


def _run_chunk(model, spec: JobSpec, chunk: Chunk) -> int:
    """Read, check, score and write one chunk; returns its number of rows."""
    shard = spec.shards[chunk.shard]
    where = f"input shard {shard.path} rows {chunk.start}..{chunk.stop - 1}"
    X = read_rows(shard, chunk.start, chunk.stop)
    _check_finite_rows(X, where)
    try:
        table = score_rows(model, X, spec.with_proba)
    except ValueError as exc:
        raise BatchError(f"{where}: {exc}") from None
    table["row"] = np.arange(chunk.row, chunk.row + chunk.n_rows, dtype=np.int64)
    path = Path(spec.output) / chunk.file_name(spec.output_format)
    if spec.output_format == "npy":
        write = lambda f: _write_npy(f, spec.columns, table)
    else:
        write = lambda f: _write_parquet(f, spec.columns, table, spec.classes)
    try:
        write_atomically(path, write)
    except OSError as exc:
        reason = ("the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                  else exc.strerror or str(exc))
        raise BatchError(f"could not write the results of {where} to {path}: {reason}; the "
                         "chunks finished before it are kept: make room and rerun the same "
                         "command to continue") from None
    return chunk.n_rows


def _file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(spec: JobSpec, model_path, model_kind, chunk_size, n_chunks, n_rows):
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "model": {"path": str(model_path), "sha256": spec.model_sha256, "kind": model_kind},
            "input": [shard.identity() for shard in spec.shards],
            "chunk_size": chunk_size, "n_chunks": n_chunks, "n_rows": n_rows,
            "output_format": spec.output_format, "with_proba": spec.with_proba,
            "columns": [[name, dt, list(shape)] for name, dt, shape in spec.columns],
            "classes": spec.classes, "complete": False}


def _job_differences(old: dict, new: dict) -> list[str]:
    keys = ("format", "format_version", "input", "chunk_size", "output_format",
            "with_proba", "columns", "classes")
    diff = [k for k in keys if old.get(k) != new.get(k)]
    if old.get("model", {}).get("sha256") != new["model"]["sha256"]:
        diff.insert(0, "model")
    return diff


def _write_manifest(output: Path, manifest: dict):
    write_atomically(output / MANIFEST,
                      lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def _finished_chunks(output: Path, chunks, output_format) -> set:
    """Indexes of chunks whose result files exist; stale temporary files are removed."""
    for stale in output.glob(f"{TMP_PREFIX}*"):
        stale.unlink()
    names = {c.file_name(output_format): c.index for c in chunks}
    return {names[p.name] for p in output.iterdir() if p.name in names}


# ---------------------------------------------------------------------------- the job lock
def _lock_holder(path) -> dict:
    """Who the lock file at ``path`` names ({} when empty or unreadable)."""
    try:
        holder = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a job that is just starting"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
            f"{holder.get('started')}: {holder.get('command')}")


def _same_file(fd, path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _lock_fd(path: Path, wait: bool, log):
    """Open ``path`` and take its exclusive flock; refuse (or wait) while another job has it."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(path)
                for _ in range(20):  # the holder writes its name right after locking
                    if holder:
                        break
                    time.sleep(0.05)
                    holder = _lock_holder(path)
                if not wait:
                    raise BatchError(
                        f"{path.parent} is being scored by another fastzsl job "
                        f"({_describe(holder)}); two jobs would score the same chunks: let it "
                        "finish (then rerun this command: it finds the chunks done) or stop it "
                        "and rerun this command to continue its work") from None
                log(f"waiting for the job scoring {path.parent} to finish "
                    f"({_describe(holder)})")
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise BatchError(f"cannot lock {path}: {exc}; the output folder's file system "
                                 "does not support file locks: choose a folder on one that "
                                 "does") from None
            # The job before us removes the file as it ends: lock the one now at ``path``.
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def output_lock(output, *, wait=False, log=None):
    """Hold ``OUTPUT/_job.lock`` while a job works in ``output``: one job per folder.

    The file names the job (pid, host, start time, command) and carries an exclusive
    ``flock``. Another job on the folder is refused with an error that names this one, or
    with ``wait=True`` waits for it. A lock left by a killed job is released by the kernel
    with the process and taken over. A lock naming a job on another host that the file
    system's locks did not keep out (its locks may not reach across hosts) is refused: that
    job may be running. The file is removed when the job ends.
    """
    log = log or (lambda message: None)
    output = Path(output)
    path = output / LOCK
    host = socket.gethostname()
    fd = _lock_fd(path, wait, log)
    try:
        previous = _lock_holder(path)
        if previous and previous.get("host") != host:
            raise BatchError(
                f"{path} names a job on another host ({_describe(previous)}) which may still "
                f"be running; if it is not, delete {path} and rerun this command")
        if previous:
            log(f"taking over the lock of a job that no longer runs ({_describe(previous)})")
        me = {"pid": os.getpid(), "host": host,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": shlex.join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        try:
            yield me
        finally:
            if _same_file(fd, path):
                os.unlink(path)
    finally:
        os.close(fd)


def score_file(model_path, input_path, output, *, chunk_size=None, output_format="npy",
               with_proba=False, backend=None, scheduler=None, n_workers=2, progress=True,
               wait=False, log=None) -> dict:
    """Score every row of ``input_path`` with the model file ``model_path`` into ``output``.

    Parameters
    ----------
    model_path : path
        A model file written by ``ZeroShotClassifier.save``, ``LoOP.save`` or
        ``GaussianNovelty.save``.
    input_path : path
        A ``.npy`` file, a ``.parquet`` file, or a folder of them (taken in name order),
        holding float32/float64 rows of the model's input features: image features for a
        ``ZeroShotClassifier``, semantic-space points for ``LoOP`` / ``GaussianNovelty``.
    output : path
        Folder for ``manifest.json`` and one result file per chunk. If it holds an
        unfinished run of the same job, the job resumes; a different job is refused.
    chunk_size : int, optional
        Rows per chunk (default: about 32 MB of input rows).
    output_format : {"npy", "parquet"}
        ``.npy`` files of structured rows, or Parquet files (a Parquet data set).
    with_proba : bool
        Also write the full P(y|x) rows (``ZeroShotClassifier`` only).
    backend : str, optional
        Kernel backend to score with (default: the one saved in the model).
    scheduler : None, "local" or str
        None: this process. "local": a Dask ``LocalCluster`` of ``n_workers`` single-threaded
        workers. Otherwise the address of a running Dask scheduler, e.g.
        ``"tcp://10.0.0.1:8786"``; its workers must see ``input_path`` and ``output``.
    progress : bool
        Show a progress bar (rows/s and ETA).
    wait : bool
        If another job is scoring into ``output`` (its lock file names it), wait for it to
        end instead of refusing; then continue with whatever chunks it left.

    Returns
    -------
    dict
        The manifest: rows, chunks, columns, and how many chunks this call scored.
    """
    from .persistence import load

    check_option(output_format, OUTPUT_FORMATS, "output_format")
    if chunk_size is not None and (isinstance(chunk_size, bool)
                                   or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    log = log or (lambda message: None)
    shards = open_input(input_path)
    model = _quiet(_with_backend(load(model_path), backend))
    model_sha = _file_sha256(model_path)
    kind = _model_kind(model)
    if with_proba and kind != "zeroshot":
        raise ValueError("with_proba applies to a ZeroShotClassifier; detectors write "
                         "p_unseen and is_novel")
    for shard in shards:
        if shard.width != model.n_features_in_:
            raise BatchError(f"input shard {shard.path} has {shard.width} columns but the "
                             f"model expects {model.n_features_in_} features")
    if chunk_size is None:
        row_bytes = shards[0].width * np.dtype(shards[0].dtype).itemsize
        chunk_size = max(1024, DEFAULT_CHUNK_BYTES // row_bytes)
    chunks = plan_chunks(shards, int(chunk_size))
    n_rows = sum(s.n_rows for s in shards)
    spec = JobSpec(str(output), output_format, shards,
                   output_columns(model, with_proba),
                   model.classes_.tolist() if kind == "zeroshot" else [], with_proba, model_sha)
    manifest = _manifest(spec, model_path, kind, int(chunk_size), len(chunks), n_rows)

    output = Path(output)
    if output.exists() and not output.is_dir():
        raise BatchError(f"output {output} is a file; name a folder for the results")
    output.mkdir(parents=True, exist_ok=True)
    with output_lock(output, wait=wait, log=log):
        todo, rows_done = _claim_output(output, manifest, chunks, log)
        from tqdm.auto import tqdm

        with tqdm(total=n_rows, initial=rows_done, unit="rows", unit_scale=True,
                  smoothing=0.1, desc="scoring", disable=not progress) as bar:
            if scheduler is None:
                for chunk in todo:
                    bar.update(_run_chunk(model, spec, chunk))
            else:
                _run_on_dask(model_path, spec, todo, scheduler, n_workers, backend, bar, log)

        manifest.update(complete=True, chunks_scored_now=len(todo))
        _write_manifest(output, manifest)
    return manifest


def _claim_output(output: Path, manifest: dict, chunks, log):
    """Check that ``output`` is new or holds this job (under its lock) and list the chunks
    left to score: ``(todo, rows_done)``."""
    if (output / MANIFEST).exists():
        try:
            old = json.loads((output / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BatchError(f"{output / MANIFEST} is unreadable ({exc}); it is not a fastzsl "
                             "scoring job: choose another output folder") from None
        diff = _job_differences(old, manifest)
        if diff:
            raise BatchError(
                f"{output} holds the results of a different job (it differs in: "
                f"{', '.join(diff)}); nothing was changed: choose another output folder "
                "(or delete that one if its results are not needed)")
    elif any(p.name != LOCK for p in output.iterdir()):
        raise BatchError(f"output folder {output} is not empty and holds no {MANIFEST}; "
                         "choose a new or empty folder")
    else:
        _write_manifest(output, manifest)

    done = _finished_chunks(output, chunks, manifest["output_format"])
    todo = [c for c in chunks if c.index not in done]
    rows_done = manifest["n_rows"] - sum(c.n_rows for c in todo)
    if done:
        log(f"resuming: {len(done)} of {len(chunks)} chunks ({rows_done} rows) already done")
    return todo, rows_done


# ---------------------------------------------------------------------------- Dask
# Models loaded on this worker process, by the model file's SHA-256: one load per worker.
_WORKER_MODELS: dict = {}
_WORKER_LOCK = threading.Lock()


def _worker_model(model_bytes, spec: JobSpec):
    with _WORKER_LOCK:
        model = _WORKER_MODELS.get(spec.model_sha256)
        if model is None:
            import tempfile

            from .persistence import load

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.fzsl"
                path.write_bytes(model_bytes)
                model = _quiet(load(path))
            _WORKER_MODELS[spec.model_sha256] = model
    return model


def _dask_task(model_bytes, spec: JobSpec, chunk: Chunk, backend) -> int:
    model = _worker_model(model_bytes, spec)
    if backend is not None and getattr(model, "backend", None) != backend:
        _with_backend(model, backend)
    return _run_chunk(model, spec, chunk)


def worker_model_loads() -> int:
    """How many models this process loaded as a Dask worker (for tests and diagnostics)."""
    return len(_WORKER_MODELS)


def _run_on_dask(model_path, spec, todo, scheduler, n_workers, backend, bar, log):
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise BatchError("scheduler= needs dask.distributed: pip install 'fastzsl[dist]'") \
            from None
    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        log(f"Dask: {len(client.scheduler_info()['workers'])} workers at "
            f"{client.scheduler.address}")
        # The model file travels once to every worker; tasks refer to it by key.
        model_bytes = client.scatter(Path(model_path).read_bytes(), broadcast=True)
        futures = [client.submit(_dask_task, model_bytes, spec, chunk, backend, pure=False,
                                 key=f"fastzsl-chunk-{spec.model_sha256[:12]}-{chunk.index}")
                   for chunk in todo]
        for future in as_completed(futures):
            bar.update(future.result())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ---------------------------------------------------------------------------- reading back
def read_scores(output) -> dict:
    """All result columns of a finished job, concatenated in row order."""
    output = Path(output)
    try:
        manifest = json.loads((output / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BatchError(f"{output} is not a finished fastzsl scoring job ({exc})") from None
    if not manifest.get("complete"):
        raise BatchError(f"the job in {output} is not finished: rerun its command to complete it")
    files = [output / f"chunk-{i:06d}.{manifest['output_format']}"
             for i in range(manifest["n_chunks"])]
    if manifest["output_format"] == "npy":
        records = np.concatenate([np.load(f, allow_pickle=False) for f in files])
        return {name: records[name] for name in records.dtype.names}
    pa, pq = import_pyarrow()
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return {name: table.column(name).to_numpy(zero_copy_only=False)
            for name in table.column_names}
