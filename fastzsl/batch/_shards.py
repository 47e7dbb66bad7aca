"""Input shards: the .npy and Parquet files a job reads, their chunks, and reading rows."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .._files import BatchError
from .._optional import import_pyarrow

INPUT_SUFFIXES = (".npy", ".parquet")
# Default chunk: about this many bytes of input rows (64k rows of 50 float32s is 13 MB).
DEFAULT_CHUNK_BYTES = 32 << 20


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


SAMPLE_BLOCK = 65_536  # rows read at a time while drawing a sample


def sample_rows(shards, n_rows: int, random_state=0) -> np.ndarray:
    """``n_rows`` rows of the input drawn without replacement (all rows when it has fewer),
    seeded, in input order, as float32; read a block at a time, so memory stays at the
    sample and one block."""
    total = sum(shard.n_rows for shard in shards)
    rng = np.random.default_rng(random_state)
    chosen = np.arange(total) if n_rows >= total else \
        np.sort(rng.choice(total, n_rows, replace=False))
    out, first = [], 0
    for shard in shards:
        mine = chosen[(chosen >= first) & (chosen < first + shard.n_rows)] - first
        for start in range(0, shard.n_rows, SAMPLE_BLOCK):
            stop = min(start + SAMPLE_BLOCK, shard.n_rows)
            wanted = mine[(mine >= start) & (mine < stop)]
            if wanted.size:
                out.append(read_rows(shard, start, stop)[wanted - start].astype(np.float32))
        first += shard.n_rows
    return np.concatenate(out) if out else np.empty((0, shards[0].width), np.float32)


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
