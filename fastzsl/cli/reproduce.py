"""``fastzsl reproduce``: the paper's experiments (Fashion-MNIST or CIFAR-10), tables and
figures in a results folder."""
from __future__ import annotations

import argparse
import textwrap

from ._args import add_backend_option, comma_list, positive_int

DESCRIPTION = textwrap.fill(
    "Run the paper's experiments and write a results folder (README.md, JSON, PNGs). On "
    "Fashion-MNIST (default) or CIFAR-10, with GloVe 50-d class vectors and Coates & Ng k-means "
    "features: 2-way zero-shot accuracy for several unseen pairs; seen/unseen/overall accuracy "
    "against the threshold for LoOP and the Gaussian detector, soft (Eq. 2) and hard; "
    "generalized zero-shot numbers; distractor words; 2-layer tanh against linear mapping; "
    "novelty detection in the semantic against the raw feature space; calibration of "
    "P(unseen|x); LoOP with exact against IVF kNN. --quick runs the same at small sizes. "
    "Needs the model, the GloVe vectors and the figures (pip install "
    "'fastzsl[model,data,plot]') and the data set.", width=88)
EPILOG = ("examples:\n"
          "  fastzsl reproduce --quick --out results-quick\n"
          "  fastzsl reproduce --seeds 3 --out results\n"
          "  fastzsl reproduce --dataset cifar10 --data-dir ~/data/cifar-10-batches-py\n"
          "  fastzsl reproduce --all-pairs --out results-all-pairs")


def add_parser(subparsers):
    from fastzsl.app.datasets import DATASETS

    p = subparsers.add_parser(
        "reproduce", help="the paper's experiments: tables and figures in a results folder",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist",
                   help="data set (default: %(default)s)")
    p.add_argument("--data-dir", default=None,
                   help="Fashion-MNIST IDX folder (default: the Debian package's), or the "
                        "'cifar-10-batches-py' folder (required for cifar10)")
    p.add_argument("--seeds", type=positive_int, default=3,
                   help="number of seeds; runs seeds 0..N-1 (default: %(default)s)")
    p.add_argument("--out", default="results", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes (64 centroids, stride 2, 300 images per class, 3 pairs): "
                        "a smoke run")
    p.add_argument("--unseen", type=comma_list, default=None,
                   help="comma-separated unseen classes of the main setting (default: "
                        "sandal,pullover for fashion-mnist, cat,truck for cifar10)")
    p.add_argument("--centroids", type=positive_int, default=None,
                   help="k-means dictionary size (default: 400; 64 with --quick)")
    p.add_argument("--stride", type=positive_int, default=None,
                   help="patch stride (default: 1 for fashion-mnist, 2 for cifar10; 2 with "
                        "--quick)")
    p.add_argument("--all-pairs", action="store_true",
                   help="instead of the experiments: the whole default model for every pair "
                        "of classes held out (45 on Fashion-MNIST; seed 0): ROC-AUC, ECE and "
                        "Brier skill at unseen shares 0.05/0.2/0.5, H, seen accuracy and the "
                        "gate's choices per pair, and a grid figure of the ROC-AUC")
    add_backend_option(p)
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.set_defaults(handler=run)


def run(args) -> int:
    from fastzsl.app.reproduce import reproduce, settings_for

    settings = settings_for(args.dataset, args.quick, centroids=args.centroids,
                            stride=args.stride)
    if args.all_pairs:
        from fastzsl.app.reproduce.all_pairs import run_all_pairs

        run_all_pairs(args.dataset, data_dir=args.data_dir, st=settings, out=args.out,
                      backend=args.backend, progress=args.progress)
        return 0
    reproduce(args.dataset, data_dir=args.data_dir, seeds=args.seeds, out=args.out,
              quick=args.quick, unseen=args.unseen, settings=settings, backend=args.backend,
              progress=args.progress)
    return 0
