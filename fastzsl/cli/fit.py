"""``fastzsl fit``: fit a novelty detector on feature files of any size: chunked,
resumable, on Dask."""
from __future__ import annotations

import argparse
import sys

from ._args import add_backend_option, positive_int

DESCRIPTION = """Fit a LoOP or GaussianNovelty detector on every row of INPUT and write the
model file MODEL (read it with fastzsl.load, score with it with 'fastzsl score').

INPUT is what 'fastzsl score' reads: a .npy file, a .parquet file or a folder of such
shards, float32 or float64 rows. LoOP searches the rows' kNN lists chunk by chunk, each
chunk against all rows, and keeps them in MODEL.parts/ until MODEL is written: a killed
job loses nothing, rerun the same command and it continues (and ends with the same model
file, byte for byte). The model equals LoOP(...).fit(X) on all rows in memory.
GaussianNovelty needs --labels: a 1-D .npy, a one-column .parquet file, a folder of
shards parallel to INPUT's, or the name of a column of Parquet INPUT.

examples:
  fastzsl fit features.npy loop.fzsl --detector loop --n-neighbors 20
  fastzsl fit shards/ loop.fzsl --detector loop --scheduler local --workers 2
  fastzsl fit /shared/shards/ /shared/loop.fzsl --scheduler tcp://10.0.0.1:8786
  fastzsl fit shards/ loop.fzsl --knn ivf --nprobe 64
  fastzsl fit features.npy gaussian.fzsl --detector gaussian --labels labels.npy
"""


def add_parser(subparsers):
    p = subparsers.add_parser(
        "fit", help="fit LoOP / GaussianNovelty on a .npy/.parquet file or folder of shards "
                    "(chunked, resumable, on Dask)",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION)
    p.add_argument("input", help=".npy or .parquet file, or a folder of them")
    p.add_argument("model", help="model file to write (.fzsl)")
    p.add_argument("--detector", choices=["loop", "gaussian"], default="loop",
                   help="what to fit (default: %(default)s)")
    p.add_argument("--n-neighbors", type=positive_int, default=20,
                   help="LoOP neighbours k (default: %(default)s)")
    p.add_argument("--extent", type=float, default=3.0,
                   help="LoOP's lambda (default: %(default)s)")
    p.add_argument("--knn", choices=["auto", "exact", "kdtree", "faiss", "ivf"], default="auto",
                   help="LoOP's kNN method; ivf is approximate (default: %(default)s)")
    p.add_argument("--nlist", type=positive_int, default=None,
                   help="IVF lists (default: round(4 sqrt(n)))")
    p.add_argument("--nprobe", type=positive_int, default=None,
                   help="IVF lists visited per query (default: nlist // 16, at least 8)")
    add_backend_option(p, help="LoOP's exact-kNN kernels, e.g. cupy on GPU workers "
                               "(default: %(default)s)")
    p.add_argument("--labels", default=None,
                   help="GaussianNovelty: the label of every row: a file or folder of shards "
                        "parallel to INPUT, or the name of a column of Parquet INPUT")
    p.add_argument("--rule", choices=["paper", "mixture"], default="paper",
                   help="GaussianNovelty's rule (default: %(default)s)")
    p.add_argument("--chunk-size", type=positive_int, default=None,
                   help="rows per chunk (default: about 32 MB of input rows)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="search on Dask: 'local' for a LocalCluster on this machine, or a "
                        "scheduler address such as tcp://host:8786 (default: this process)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="LocalCluster workers with --scheduler local (default: one per core)")
    p.add_argument("--schedule", choices=["auto", "self-join", "chunks"], default="auto",
                   help="LoOP's exact search in one process: 'self-join' searches each pair "
                        "of row blocks once (half the work), a pair of chunks at a time; "
                        "'chunks' searches each chunk against every row (default: "
                        "%(default)s, the self-join where it applies)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.add_argument("--wait", action="store_true",
                   help="if another job is fitting MODEL, wait for it instead of refusing")
    p.set_defaults(handler=run)


def run(args) -> int:
    from fastzsl import GaussianNovelty, LoOP
    from fastzsl.fitting import fit_file

    if args.detector == "loop":
        knn_params = {key: value for key, value in (("nlist", args.nlist),
                                                    ("nprobe", args.nprobe)) if value}
        estimator = LoOP(n_neighbors=args.n_neighbors, extent=args.extent,
                         backend=args.backend, knn=args.knn, knn_params=knn_params or None)
    else:
        estimator = GaussianNovelty(rule=args.rule, backend=args.backend)
    log = (lambda message: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    summary = fit_file(estimator, args.input, args.model, labels=args.labels,
                       chunk_size=args.chunk_size, scheduler=args.scheduler,
                       n_workers=args.workers, schedule=args.schedule,
                       progress=not args.quiet, wait=args.wait,
                       log=log)
    print(f"{summary['estimator']} fitted on {summary['n_rows']} rows in {summary['n_chunks']} "
          f"chunks, written to {summary['model']} ({summary['seconds']:.1f} s)")
    return 0
