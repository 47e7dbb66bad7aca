"""``fastzsl novelty``: novelty detection on Fashion-MNIST pixels, held-out classes
against the rest."""
from __future__ import annotations

from ._args import (add_backend_option, add_data_dir_option, add_neighbours_option,
                    add_unseen_option, positive_int)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "novelty", help="novelty detection of held-out Fashion-MNIST classes",
        description="LoOP and Gaussian novelty scores of held-out Fashion-MNIST classes "
                    "(ROC-AUC). Reference set: training images of the seen classes; queries: "
                    "the 10,000 test images. Needs the Debian package dataset-fashion-mnist.")
    add_unseen_option(p, "held-out class names")
    p.add_argument("--dims", type=positive_int, default=50,
                   help="PCA dimensions (default: %(default)s)")
    add_neighbours_option(p)
    p.add_argument("--extent", type=float, default=3.0, help="LoOP lambda (default: %(default)s)")
    p.add_argument("--n-reference", type=int, default=0,
                   help="subsample the reference set to this many images (default: all)")
    add_backend_option(p)
    add_data_dir_option(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.set_defaults(handler=run)


def run(args) -> int:
    from fastzsl.app.novelty import novelty_experiment

    novelty_experiment(unseen=args.unseen, dims=args.dims, k=args.k, extent=args.extent,
                       n_reference=args.n_reference, backend=args.backend,
                       data_dir=args.data_dir, seed=args.seed, out=args.out)
    return 0
