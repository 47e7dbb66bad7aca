"""``fastzsl evaluate``: a trained run's accuracies on the Fashion-MNIST test images."""
from __future__ import annotations

from ._args import add_data_dir_option


def add_parser(subparsers):
    p = subparsers.add_parser("evaluate", help="evaluate a trained run on the Fashion-MNIST test set",
                              description="Evaluate a trained run folder on the Fashion-MNIST "
                                          "test images.")
    p.add_argument("run", help="folder written by 'fastzsl train'")
    add_data_dir_option(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from fastzsl.app.experiment import evaluate_run

    print(evaluate_run(args.run, args.data_dir))
    return 0
