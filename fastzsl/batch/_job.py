"""A scoring job: its manifest, resuming an unfinished one, and ``score_file``."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .._files import TMP_PREFIX, BatchError, write_atomically
from .._locks import LOCK, output_lock
from .._validation import check_option
from ._dask import _run_on_dask
from ._results import MANIFEST, OUTPUT_FORMATS
from ._scoring import _model_kind, _quiet, _with_backend, output_columns
from ._shards import DEFAULT_CHUNK_BYTES, open_input, plan_chunks
from ._tasks import JobSpec, _run_chunk

FORMAT = "fastzsl-scores"
FORMAT_VERSION = 1


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
    from ..persistence import load

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
