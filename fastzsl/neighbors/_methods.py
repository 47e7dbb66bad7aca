"""The kNN methods, and which one ``method="auto"`` runs."""
from __future__ import annotations


METHODS = ("auto", "exact", "kdtree", "faiss", "ivf")


EXACT_METHODS = ("auto", "exact", "kdtree")  # the methods of ExactIndex


FAISS_METHODS = ("faiss", "ivf")  # the methods of FaissIndex


# method="auto" searches with the k-d tree when d <= KDTREE_MAX_DIM and the reference has at
# least KDTREE_MIN_N rows (and no backend is named): the crossover measured on 2 cores by
# benchmarks/kdtree_crossover.py (results/kdtree-crossover-cpu-2core.md; in-sample k = 10 on
# Gaussian blobs): the tree is 1.4-5x faster up to d = 5 from N = 20k, about even (20k) to
# 1.4x faster (50k, 100k) at d = 6, and 2x slower at d = 8; below about 4000 points
# brute force wins (d = 4: 2x faster at N = 2000, the tree 1.35x faster at N = 5000).
KDTREE_MAX_DIM = 6


KDTREE_MIN_N = 4000


def check_method(method) -> str:
    """``method`` when it is one of :data:`METHODS`, else an error naming them."""
    if isinstance(method, str) and method in METHODS:
        return method
    raise ValueError(f"unknown kNN method {method!r}; choose one of {METHODS}")


def resolve_method(method, d, n_reference, backend="auto", *, device_input=False):
    """The kNN method that ``method`` runs for a (n_reference, d) reference: ``"auto"`` is
    ``"kdtree"`` for low-dimensional data (d <= KDTREE_MAX_DIM, n_reference >=
    KDTREE_MIN_N) unless a backend is named or the reference is on a GPU
    (``device_input``; the brute-force kernels then run), else ``"exact"``; any other
    method is itself."""
    if method != "auto":
        return method
    if backend in ("auto", None) and not device_input and d <= KDTREE_MAX_DIM \
            and n_reference >= KDTREE_MIN_N:
        return "kdtree"
    return "exact"
