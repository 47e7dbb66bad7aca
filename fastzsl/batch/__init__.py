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
from .._files import BatchError
from .._locks import LOCK, output_lock
from ._dask import dask_client, worker_model_loads
from ._job import FORMAT, FORMAT_VERSION, score_file
from ._results import MANIFEST, OUTPUT_FORMATS, read_scores
from ._scoring import novelty_threshold, output_columns, score_rows
from ._shards import (DEFAULT_CHUNK_BYTES, INPUT_SUFFIXES, Chunk, Shard, open_input,
                      plan_chunks, read_rows, sample_rows)
from ._tasks import JobSpec

__all__ = ["BatchError", "Chunk", "DEFAULT_CHUNK_BYTES", "FORMAT", "FORMAT_VERSION",
           "INPUT_SUFFIXES", "JobSpec", "LOCK", "MANIFEST", "OUTPUT_FORMATS", "Shard",
           "dask_client", "novelty_threshold", "open_input", "output_columns", "output_lock",
           "plan_chunks", "read_rows", "read_scores", "sample_rows", "score_file", "score_rows",
           "worker_model_loads"]
