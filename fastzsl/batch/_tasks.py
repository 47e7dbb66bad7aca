"""One chunk of a job: read its rows, check them, score them and write its result file.
The same code runs in this process and on Dask workers."""
from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

import numpy as np

from .._files import BatchError, write_atomically
from .._validation import all_finite
from ._results import _write_npy, _write_parquet
from ._scoring import score_rows
from ._shards import Chunk, read_rows


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




def _check_finite_rows(X, where):
    if all_finite(X):
        return
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise BatchError(f"{where} has {rows.size} rows with NaN or infinity (first at row "
                         f"{rows[0]} of the chunk); fix or drop them and rerun the same command")
