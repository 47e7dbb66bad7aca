r"""faiss's exact flat indexes on fastzsl's kernels: switch with one import line.

::

    import faiss                              # before
    from fastzsl import faiss                 # after

    index = faiss.IndexFlatL2(d)              # or faiss.IndexFlatIP(d)
    index.add(xb)                             # float32 rows (other floats are converted)
    D, I = index.search(xq, k)                # float32 D, int64 I, shape (n_queries, k)
    D, I = faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)

What faiss users rely on is kept: ``add`` appends rows, ``search`` returns float32 ``D``
and int64 ``I`` of shape (n_queries, k), nearest first, squared distances for L2 and inner
products (largest first) for IP; where fewer than k rows exist the missing entries are
``I = -1`` with faiss's padding distance, the largest float32 (``3.4028235e38``, not inf)
for L2 and its negative for IP; ``reset``, ``ntotal``, ``d``, ``is_trained`` (always True)
and ``metric_type`` behave as faiss's, and so does ``IndexFlat(d, metric)``. The search is
fastzsl's exact one (:class:`fastzsl.ExactIndex`).

L2. :class:`IndexFlatL2` keeps float32 rows, as faiss does, and searches them with the
exact kernels: each distance is the float64 sum of squared float32 differences, rounded
once to float32 (faiss, for 20 or more queries at a time, computes ``|x|^2 + |y|^2 - 2 x.y``
with float32 GEMM, whose cancellation error can reach about ``d * 2^-24 * (|x|^2 + |y|^2)``).

Inner product. :class:`IndexFlatIP` maps maximum inner product to nearest neighbour (the
standard augmentation): each row y_j gains the coordinate a_j = sqrt(M - |y_j|^2), with
M = max_j |y_j|^2, and each query x the coordinate 0, so that

.. math::

    \lVert x' - y_j' \rVert^2 = \lVert x \rVert^2 - 2\,x \cdot y_j + \lVert y_j \rVert^2
    + a_j^2 = \lVert x \rVert^2 + M - 2\,x \cdot y_j .

For a fixed query ``|x|^2 + M`` is a constant, so the squared distances ascend exactly as
the inner products descend, and ``x.y_j = (|x|^2 + M - e_j) / 2``. The augmented rows are
float64 (float32 values are exact in float64) and the kernels sum in float64, so each
computed e_j is within a few times ``d * 2^-53 * (|x|^2 + M)`` of its exact value (the
rounding of the d + 1 squares and their sum, and of |y_j|^2 inside a_j): the ranking is
the exact one except between inner products closer than twice that, some 2^29 times finer
than float32's resolution, and equal rows tie exactly (the same arithmetic on the same
numbers), the lower index first.

Ties go to the lower row index for both metrics (fastzsl's kernels); faiss's heap gives no
promise (for IP it often lists the higher index first).

Rows and norms follow ``add``: the first search after an ``add`` builds the index once over
all rows (for IP, M may have grown, so every a_j is recomputed); searches until the next
``add`` reuse its cached norms (and k-d tree, when fastzsl picks one for low dimensions).

Differences from faiss, each for a reason:

- Bad input raises a ValueError naming the problem (wrong width, k < 1, NaN or infinity),
  where faiss raises a bare AssertionError or searches NaN: fastzsl checks every input at
  its boundary.
- :class:`IndexFlatIP` keeps its rows in float64 with one more column (about 2x faiss's
  memory) and searches in float64, so that the ranking above is exact; faiss stores and
  computes in float32.
- Only the calls above exist (no ``add_with_ids``, ``remove_ids``, ``range_search``,
  ``search`` ``params``, GPU transfer); they raise AttributeError or ValueError.
- Inputs are NumPy (or what ``np.asarray`` takes); CuPy and torch tensors are not accepted.
"""
from __future__ import annotations

import numbers

import numpy as np

from ._validation import as_float_matrix, check_option, check_same_width
from .neighbors import ExactIndex

METRIC_INNER_PRODUCT = 0  # faiss's values
METRIC_L2 = 1
METRICS = (METRIC_L2, METRIC_INNER_PRODUCT)
# faiss's distance for a missing neighbour (I = -1): the largest float32, negated for IP
PAD_L2 = np.float32(np.finfo(np.float32).max)
PAD_IP = -PAD_L2


class IndexFlat:
    """Exact search over added rows, by L2 (squared distance) or inner product.

    Parameters
    ----------
    d : int
        Row width.
    metric : {METRIC_L2, METRIC_INNER_PRODUCT}, default=METRIC_L2

    Attributes
    ----------
    d : int
    ntotal : int
        Rows added since creation or the last ``reset()``.
    is_trained : bool
        Always True (a flat index needs no training).
    metric_type : int
    """

    is_trained = True

    def __init__(self, d, metric=METRIC_L2):
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
            raise ValueError(f"d must be a positive integer, got {d!r}")
        check_option(metric, METRICS, "metric (METRIC_L2 or METRIC_INNER_PRODUCT)")
        self.d = int(d)
        self.metric_type = metric
        self.reset()

    def reset(self):
        """Remove every row."""
        self._index = None  # ExactIndex over the rows added before the last search
        self._pending = []  # float32 rows added since
        self.ntotal = 0

    def add(self, x):
        """Append the rows of ``x`` (n, d); float32 as in faiss (other floats converted)."""
        x = self._rows(x, "x")
        if x.shape[0]:
            self._pending.append(x.copy())  # the index's own rows, as in faiss
            self.ntotal += x.shape[0]

    def search(self, x, k, *, params=None, D=None, I=None):
        """The k nearest rows of each query: ``(D, I)``, float32 and int64 (n_queries, k).

        Nearest first: ascending squared distances (L2) or descending inner products (IP).
        Beyond ``ntotal`` the entries are I = -1 with D = 3.4028235e38 (L2) or its negative
        (IP), as in faiss. ``D`` and ``I``, when given, are filled and returned, as in faiss.
        """
        if params is not None:
            raise ValueError("search params are not supported by fastzsl.faiss flat indexes")
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        Q = self._rows(x, "queries")
        found = min(int(k), self.ntotal)
        pad = PAD_L2 if self.metric_type == METRIC_L2 else PAD_IP
        D_out = np.full((Q.shape[0], k), pad, dtype=np.float32)
        I_out = np.full((Q.shape[0], k), -1, dtype=np.int64)
        if found and Q.shape[0]:
            D_out[:, :found], I_out[:, :found] = self._search(Q, found)
        if D is not None:
            D[...] = D_out
            D_out = D
        if I is not None:
            I[...] = I_out
            I_out = I
        return D_out, I_out

    # ------------------------------------------------------------------ internals
    def _rows(self, x, name):
        x = np.asarray(x)
        if x.ndim == 2 and x.shape[0] == 0:  # no rows: nothing to add or search, as in faiss
            x = np.zeros((1, x.shape[1]), dtype=np.float32)
            check_same_width(x, self.d, name, f"an index of d={self.d}")
            return x[:0]
        X = as_float_matrix(x, name, dtype=np.float32)
        check_same_width(X, self.d, name, f"an index of d={self.d}")
        return X

    def _exact_index(self) -> ExactIndex:
        """The index over every row, built again only after an add."""
        if self._pending:
            parts = ([self._stored_rows()] if self._index is not None else []) + self._pending
            rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
            self._pending = []
            self._index = ExactIndex(self._reference(rows))
        return self._index

    def _stored_rows(self):
        """The float32 rows the current index holds."""
        if self.metric_type == METRIC_L2:
            return self._index.reference
        return self._index.reference[:, :self.d].astype(np.float32)  # exact: were float32

    def _reference(self, rows):
        """What the exact index searches: the rows (L2), or the augmented rows (IP)."""
        if self.metric_type == METRIC_L2:
            return rows
        rows = rows.astype(np.float64)
        sq_norms = np.einsum("ij,ij->i", rows, rows)
        self._max_sq_norm = float(sq_norms.max())
        extra = np.sqrt(np.maximum(self._max_sq_norm - sq_norms, 0.0))
        return np.column_stack([rows, extra])

    def _search(self, Q, k):
        index = self._exact_index()
        if self.metric_type == METRIC_L2:
            return index.search(Q, k)
        Q = Q.astype(np.float64)
        D, I = index.search(np.column_stack([Q, np.zeros(Q.shape[0])]), k)
        constant = np.einsum("ij,ij->i", Q, Q)[:, None] + self._max_sq_norm
        return ((constant - D) / 2).astype(np.float32), I


class IndexFlatL2(IndexFlat):
    """faiss's ``IndexFlatL2(d)``: exact search by squared Euclidean distance."""

    def __init__(self, d):
        super().__init__(d, METRIC_L2)


class IndexFlatIP(IndexFlat):
    """faiss's ``IndexFlatIP(d)``: exact maximum inner product search (largest first),
    through the augmentation in the module's docstring."""

    def __init__(self, d):
        super().__init__(d, METRIC_INNER_PRODUCT)


def knn(xq, xb, k, metric=METRIC_L2, metric_arg=0.0):
    """faiss's ``knn``: the k nearest rows of ``xb`` for each row of ``xq``, exact.

    Parameters
    ----------
    xq : array-like of shape (n_queries, d)
    xb : array-like of shape (n_rows, d)
    k : int
    metric : {METRIC_L2, METRIC_INNER_PRODUCT}, default=METRIC_L2
    metric_arg : float, default=0.0
        Accepted as in faiss; the two metrics here take no argument.

    Returns
    -------
    D : ndarray of shape (n_queries, k), float32
    I : ndarray of shape (n_queries, k), int64

    Examples
    --------
    >>> import numpy as np
    >>> from fastzsl import faiss
    >>> xb = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    >>> D, I = faiss.knn(xb[:1], xb, 2)
    >>> D.tolist(), I.tolist()
    ([[0.0, 1.0]], [[0, 1]])
    >>> D, I = faiss.knn(np.array([[1.0, 0.0]]), xb, 4, metric=faiss.METRIC_INNER_PRODUCT)
    >>> I.tolist()
    [[2, 1, 0, -1]]
    """
    xb = np.asarray(xb)
    if xb.ndim != 2:
        raise ValueError(f"xb must be 2-D (n_rows, d), got shape {xb.shape}")
    index = IndexFlat(xb.shape[1], metric)
    index.add(xb)
    return index.search(xq, k)
