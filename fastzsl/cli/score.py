"""``fastzsl score``: batch-score feature files of any size: chunked, resumable, on Dask."""
from __future__ import annotations

import argparse
import sys
import time

from ._args import add_backend_option, positive_int, shown_folder

DESCRIPTION = """Score every row of INPUT with MODEL, chunk by chunk, into the folder OUTPUT.

MODEL is a model file: model.fzsl of 'fastzsl train' (a ZeroShotClassifier; INPUT holds
image features, e.g. from the run's features.fzsl) or a saved LoOP / GaussianNovelty
(INPUT holds semantic-space points). INPUT is a .npy file, a .parquet file (one
fixed-size-list column or one float column per feature) or a folder of such shards,
read in name order, float32 or float64. OUTPUT gets _manifest.json and one result file
per chunk: row, predicted_class, top_probability, p_unseen (and proba with --proba) for
a ZeroShotClassifier; row, p_unseen, is_novel for a detector.

A killed or failed job loses nothing: rerun the same command and it continues from the
last finished chunk. Read the results with fastzsl.batch.read_scores(OUTPUT), or the
Parquet folder with pandas/pyarrow.

examples:
  fastzsl score fastzsl-run/model.fzsl features.npy scores/
  fastzsl score loop.fzsl shards/ scores/ --format parquet --chunk-size 100000
  fastzsl score loop.fzsl shards/ scores/ --scheduler local --workers 2
  fastzsl score loop.fzsl /shared/shards/ /shared/scores/ --scheduler tcp://10.0.0.1:8786
"""


def add_parser(subparsers):
    p = subparsers.add_parser(
        "score", help="batch-score a .npy/.parquet file or folder of shards (resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION)
    p.add_argument("model", help="model file (.fzsl)")
    p.add_argument("input", help=".npy or .parquet file, or a folder of them")
    p.add_argument("output", help="output folder (created; an unfinished run there resumes)")
    p.add_argument("--chunk-size", type=positive_int, default=None,
                   help="rows per chunk (default: about 32 MB of input rows)")
    p.add_argument("--format", choices=["npy", "parquet"], default="npy",
                   help="result file format (default: %(default)s)")
    p.add_argument("--proba", action="store_true",
                   help="also write the full P(y|x) rows (ZeroShotClassifier)")
    add_backend_option(p, default=None,
                       help="kernel backend (default: the one saved in the model)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on Dask: 'local' for a LocalCluster on this machine, or a "
                        "scheduler address such as tcp://host:8786 (default: this process)")
    p.add_argument("--workers", type=positive_int, default=2,
                   help="LocalCluster workers with --scheduler local (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--wait", action="store_true",
                   help="if another job is scoring into OUTPUT, wait for it to finish (then "
                        "score what is left) instead of refusing")
    p.set_defaults(handler=run)


def run(args) -> int:
    from fastzsl.batch import score_file

    log = (lambda message: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    start = time.perf_counter()
    manifest = score_file(args.model, args.input, args.output, chunk_size=args.chunk_size,
                          output_format=args.format, with_proba=args.proba,
                          backend=args.backend, scheduler=args.scheduler,
                          n_workers=args.workers, progress=not args.quiet, wait=args.wait,
                          log=log)
    seconds = time.perf_counter() - start
    print(f"{manifest['n_rows']} rows in {manifest['n_chunks']} chunks written to "
          f"{shown_folder(args.output)} ({manifest['chunks_scored_now']} chunks scored now, "
          f"{seconds:.1f} s)")
    return 0
