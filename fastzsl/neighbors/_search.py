"""What every index shares: query checks, owned copies, and searching in chunks."""
from __future__ import annotations

import numpy as np

from .._array import array_module, on_device
from .._progress import bar as progress_bar
from .._validation import as_float_matrix, check_same_width


# Queries per kernel call: enough parallel work per call, and a progress bar that moves.
SEARCH_CHUNK = 8192


def _own_copy(X, copy=True):
    """A copy of X that the index owns (read-only, where X is NumPy): what it caches about
    the rows (norms, a tree, an upload) cannot go stale through a change the caller makes
    to its own array. ``copy=False``: X itself (a read-only view of a NumPy X), for an
    index that lives no longer than one call."""
    if on_device(X):
        return X.copy() if copy else X
    X = np.array(X, order="C", copy=True) if copy else np.asarray(X, order="C").view()
    X.flags.writeable = False
    return X


def _search_in_chunks(search_chunk, Q, k, dtype, progress, chunk=None):
    """Run ``search_chunk(rows, first_row_index)`` over Q in chunks (of SEARCH_CHUNK rows
    unless ``chunk`` says) into one (D, I)."""
    n = Q.shape[0]
    chunk = SEARCH_CHUNK if chunk is None else chunk
    if n <= chunk:
        D, I = search_chunk(Q, 0)
        return D.astype(dtype, copy=False), I.astype(np.int64, copy=False)
    xp = array_module(Q)  # the results of CuPy queries are gathered on their device
    D = xp.empty((n, k), dtype=dtype)
    I = xp.empty((n, k), dtype=np.int64)
    with progress_bar(n, f"kNN k={k}", unit="query", enabled=progress) as bar:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            D[start:stop], I[start:stop] = search_chunk(Q[start:stop], start)
            bar.update(stop - start)
    return D, I


def _check_queries(queries, index, exclude_self, keep_device=False):
    Q = as_float_matrix(queries, "queries", keep_device=keep_device)
    check_same_width(Q, index.d, "queries", "the reference")
    if exclude_self and Q.shape[0] != index.ntotal:
        raise ValueError(
            "exclude_self=True needs the queries to be the reference rows themselves, "
            f"but there are {Q.shape[0]} queries and {index.ntotal} reference rows"
        )
    if Q.dtype != index.reference.dtype:
        Q = Q.astype(index.reference.dtype)
    return Q
