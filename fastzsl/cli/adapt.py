"""``fastzsl adapt``: P(unseen | x) of a saved model adapted to a batch of images to score."""
from __future__ import annotations

import argparse

from ._args import positive_int

DESCRIPTION = """Adapt MODEL's P(unseen | x) to the images in INPUT and write the adapted
model to OUTPUT (a model file, for 'fastzsl score' or fastzsl.load).

MODEL is a ZeroShotClassifier file (model.fzsl of 'fastzsl train'); INPUT holds feature
rows of the images to classify, no labels (a .npy or .parquet file or a folder of them,
as for 'fastzsl score'). A seeded sample of --rows of them is compared with the training
images by neighbours in the model's LoOP space, and P(unseen | x) becomes the density
ratio of the two at the stated unseen share (fastzsl.adaptation). State the share the
images really have: P(unseen | x) is calibrated at that share.

examples:
  fastzsl adapt fastzsl-run/model.fzsl features.npy adapted.fzsl --unseen-share 0.2
  fastzsl score adapted.fzsl features.npy scores/
"""


def share(text) -> float:
    """A probability strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
    return value


def add_parser(subparsers):
    from fastzsl.adaptation import MAX_ROWS, N_NEIGHBORS

    p = subparsers.add_parser(
        "adapt", help="adapt a model's P(unseen) to a batch of unlabelled images",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION)
    p.add_argument("model", help="ZeroShotClassifier model file (.fzsl)")
    p.add_argument("input", help=".npy or .parquet file, or a folder of them")
    p.add_argument("output", help="adapted model file to write (.fzsl)")
    p.add_argument("--unseen-share", type=share, required=True,
                   help="the share of INPUT's images that belong to unseen classes")
    p.add_argument("--rows", type=positive_int, default=MAX_ROWS,
                   help="rows of INPUT sampled for the comparison (default: %(default)s)")
    p.add_argument("--neighbors", type=positive_int, default=N_NEIGHBORS,
                   help="neighbours per point (default: %(default)s)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from fastzsl import ZeroShotClassifier, load
    from fastzsl.batch import open_input, sample_rows

    model = load(args.model)
    if not isinstance(model, ZeroShotClassifier):
        raise ValueError(f"{args.model} holds a {type(model).__name__}; adapt needs a "
                         "ZeroShotClassifier model file")
    rows = sample_rows(open_input(args.input), args.rows)
    model.set_params(unseen_prior=args.unseen_share)
    model.adapt(rows, n_neighbors=args.neighbors, max_rows=args.rows)
    model.save(args.output)
    p = model.outlier_probability(rows)
    print(f"adapted on {len(rows)} rows of {args.input} at unseen share "
          f"{args.unseen_share}; {(p > 0.5).mean():.1%} of them have P(unseen) > 0.5; "
          f"written to {args.output}")
    return 0
