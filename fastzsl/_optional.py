"""Optional libraries, imported when a feature first needs them.

Each ``import_<name>()`` returns the module or raises ImportError naming the feature that
needs it and the command that installs it, so a missing extra reads the same everywhere.
"""
from __future__ import annotations

import importlib


def _import(module: str, feature: str, install: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is needed for {feature} ({exc}); install it with: {install}") from None


def import_faiss():
    return _import("faiss", "kNN methods 'faiss' and 'ivf'", "pip install 'fastzsl[faiss]'")


def import_torch():
    return _import("torch", "the zero-shot model (SemanticMapper, SoftmaxClassifier)",
                   "pip install 'fastzsl[model]'")


def import_gensim_keyed_vectors():
    return _import("gensim.models", "gensim KeyedVectors (word-vector files, GloVe)",
                   "pip install 'fastzsl[model]'").KeyedVectors


def import_pyarrow():
    """``(pyarrow, pyarrow.parquet)``."""
    pq = _import("pyarrow.parquet", "Parquet files", "pip install 'fastzsl[data]'")
    return importlib.import_module("pyarrow"), pq
