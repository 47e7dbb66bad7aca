"""The output folder's files: result chunks written as .npy or Parquet, and read back."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._files import BatchError
from .._optional import import_pyarrow

# Leading underscore: Parquet readers (pyarrow, Spark, Dask) skip it in a data-set folder.
MANIFEST = "_manifest.json"
OUTPUT_FORMATS = ("npy", "parquet")


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
