"""Argument types and options shared by the commands."""
from __future__ import annotations

import argparse
import os


def comma_list(text) -> list:
    """'a, b,,c' -> ['a', 'b', 'c']: a comma-separated list, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def shown_folder(path) -> str:
    """An output folder as printed: with one trailing separator ('out/', never 'out//')."""
    text = os.fspath(path)
    stripped = text.rstrip("/" + os.sep)
    return stripped + os.sep if stripped else text[:1]


def positive_int(text) -> int:
    """A whole number >= 1 (argparse reports anything else as a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def add_backend_option(parser, default="auto", help="kernel backend (default: %(default)s)"):
    """``--backend``: 'auto' or a registered backend name, available here or not (a backend
    that cannot load is reported when the command needs it)."""
    from fastzsl.backends import registered_backends

    parser.add_argument("--backend", default=default, choices=["auto", *registered_backends()],
                        help=help)


def add_data_dir_option(parser, help="folder with the Fashion-MNIST IDX files"):
    parser.add_argument("--data-dir", default=None, help=help)


def add_unseen_option(parser, what="zero-shot classes"):
    """``--unseen``: comma-separated Fashion-MNIST class names (default: the main job's)."""
    from fastzsl.app.experiment import DEFAULT_UNSEEN

    parser.add_argument("--unseen", type=comma_list, default=",".join(DEFAULT_UNSEEN),
                        help=f"comma-separated {what} (default: %(default)s)")


def add_neighbours_option(parser):
    parser.add_argument("--k", type=positive_int, default=20,
                        help="LoOP neighbours (default: %(default)s)")
