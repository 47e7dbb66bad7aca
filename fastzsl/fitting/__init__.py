"""Fit novelty detectors on feature files of any size: chunked, resumable, on Dask.

``fit_file(estimator, input, model_path)`` fits a ``LoOP`` or a ``GaussianNovelty`` on every
row of a ``.npy`` file, a Parquet file or a folder of such shards (what ``fastzsl score``
reads) and writes its model file, holding no more than the reference set and two chunks'
rows and candidate lists.

LoOP. Its in-sample fit needs every reference row's k nearest other rows: a kNN self-join.
The rows are split into chunks; each chunk is searched against the whole reference with
its own rows left out, and its kNN lists are written atomically (as score's result chunks
are) to ``MODEL.parts/lists-NNNNNN.npy``. A killed job, rerun with the same command, keeps
the lists it finds and searches the rest. In one process with the cython kernels, the
default schedule runs their self-join instead (each pair of row blocks once: half the gemm
work), a pair of chunks at a time: chunk a's candidate lists take the pairs (a', a), a' <= a,
then (a, b), b > a, and its lists file is written then. After each chunk pair the two
chunks' candidate lists are saved (``join-AAAAAA-PPPPPP.npy``) and the pair counted
(``self-join.json``), so a rerun goes on from the last pair done. The exact kernels give a row the same list
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
    self-join.json     the self-join schedule: how many chunk pairs are done
    join-000003-000010.npy  ... and the candidate lists of chunk 3 after pair 10, ...

Memory per process: the reference, memory-mapped (the page cache keeps one copy for all
the processes of a machine), one chunk's lists (the self-join: two chunks' candidate lists,
k + 8 entries a row), and a few float64 arrays of n.

GaussianNovelty: one streaming pass of per-class sums in float64 (shifted by each class's
first row, so the variance loses nothing to cancellation), then one pass for the training
scores its outlier probability is read off. The labels come from a parallel file, or a
column of Parquet input.

On Dask (``scheduler="local"`` starts a ``LocalCluster``; else the address of a running
scheduler), each task searches a part of a chunk (``DASK_TASK_ROWS`` rows, so that the
workers finish together) and writes its lists itself (``part-CCCCCC-PPPPPP.npy``), with the
code of the one-process path; workers memory-map the reference from the file system every
worker mounts (the model file's folder), once per worker process; the driver validates the
input, writes the reference file, submits the tasks whose parts are not written yet, joins
each chunk's parts into its lists file and reduces.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .._files import BatchError
from .._validation import check_option
from ._gaussian import _fit_gaussian
from ._job import FORMAT, FORMAT_VERSION, MANIFEST, PARTS_SUFFIX
from ._loop import (IVF_PRICE, SCHEDULES, SELF_JOIN_STATE, LoopJob, describe_knn, forget_job,
                    reduce_lists, search_chunk, search_plan, searcher_builds, _fit_loop)
from ._source import _Source

__all__ = ["fit_file", "FORMAT", "FORMAT_VERSION", "IVF_PRICE", "MANIFEST", "PARTS_SUFFIX",
           "SCHEDULES", "SELF_JOIN_STATE", "LoopJob", "describe_knn", "forget_job",
           "reduce_lists", "search_chunk", "search_plan", "searcher_builds"]


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
        row blocks once (half the gemm work of "chunks"; the in-memory fit's kernel), a
        pair of chunks at a time, holding those two chunks' candidate lists (k + 8 entries
        a row) and saving them to the work folder after each pair, so a killed job resumes
        from there. ``"chunks"``: each chunk against the whole reference, holding one
        chunk's lists. ``"auto"``: the self-join when there is no scheduler and the kernels
        have one, else chunks. Both give the same lists, bit for bit.
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
    from ..gaussian import GaussianNovelty
    from ..loop import LoOP

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
