"""The input of a fit: its shards, chunks, checks, and GaussianNovelty's labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._files import BatchError
from ..batch import DEFAULT_CHUNK_BYTES, open_input, plan_chunks, read_rows


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
        from .._optional import import_pyarrow
        from ..batch._shards import Shard, _parquet_width_and_dtype

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
        from .._optional import import_pyarrow

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
            from .._optional import import_pyarrow

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
