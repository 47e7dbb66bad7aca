"""The ``fastzsl`` command line.

    fastzsl train     the zero-shot model on Fashion-MNIST, end to end (the main job)
    fastzsl evaluate  a trained model's accuracies on the Fashion-MNIST test images
    fastzsl predict   class and P(unseen) of images or feature rows in a .npy file
    fastzsl adapt     a model's P(unseen) adapted to a batch of unlabelled images to score
    fastzsl score     batch-score feature files of any size: chunked, resumable, on Dask
    fastzsl fit       fit LoOP / GaussianNovelty on feature files of any size, the same way
    fastzsl novelty   novelty detection on Fashion-MNIST pixels: held-out classes vs the rest
    fastzsl reproduce the paper's experiments (Fashion-MNIST or CIFAR-10): tables and figures
    fastzsl backends  which kernel backends load here
    fastzsl bench     the benchmark suite (kernels against their peers), as a ratio table

One module per command, each with ``add_parser(subparsers)`` and ``run(args) -> int``; the
work itself lives in :mod:`fastzsl.app` and the library. Importing this package loads no
command and no heavy library.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("train", "evaluate", "predict", "adapt", "score", "fit", "novelty", "reproduce",
            "backends", "bench")


def user_errors() -> tuple:
    """The exceptions that report a user's mistake or a missing input, not a bug.

    ``main`` prints them as ``error: <message>`` and exits with 2; anything else keeps its
    traceback. ValueError: bad arguments or input data (UnknownClassError included: it is
    one); FileNotFoundError: a missing data set, model or input file; ImportError: an
    optional dependency that is not installed (the message names the pip install);
    BatchError: a batch job's input, output folder or manifest is unusable;
    BackendUnavailableError: a backend named explicitly cannot run here.
    """
    from fastzsl.backends import BackendUnavailableError
    from fastzsl.batch import BatchError

    return (ValueError, FileNotFoundError, ImportError, BatchError, BackendUnavailableError)


def build_parser() -> argparse.ArgumentParser:
    from fastzsl import __version__

    parser = argparse.ArgumentParser(
        prog="fastzsl",
        description="Zero-shot classification with novelty detection (Socher et al. 2013): "
                    "exact kNN, LoOP and Gaussian kernels on CPU and GPU.",
    )
    parser.add_argument("--version", action="version", version=f"fastzsl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log backend choices")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    try:
        return args.handler(args)
    except Exception as exc:
        if not isinstance(exc, user_errors()):
            raise
        print(f"error: {explain(exc)}", file=sys.stderr)
        return 2


def explain(exc: Exception) -> str:
    """The message of a user error; a missing optional library gets the extra that brings it
    (``No module named 'matplotlib'`` alone does not say what to install)."""
    from fastzsl._optional import install_hint

    message = str(exc)
    name = getattr(exc, "name", None)
    if isinstance(exc, ImportError) and name and "pip install" not in message:
        hint = install_hint(name)
        if hint:
            message += f"; install it with: {hint}"
    return message

