r"""P(unseen | x) learnt from an unlabelled batch of the images to classify.

The novelty gate's calibration comes from pseudo-unseen rounds of the seen classes, so it
holds only as far as the real unseen classes are as novel as the held-out seen ones were
(``docs/method.md`` section 4c). When the user has a batch of the images to classify (no
labels) and states their unseen share :math:`\pi`, P(unseen | x) follows from densities
that need no unseen label. The batch's density is a mixture,

.. math::

    f_\text{batch} = (1 - \pi) f_\text{seen} + \pi f_\text{unseen},
    \qquad
    P(\text{unseen} \mid x) = 1 - (1 - \pi)\,\frac{f_\text{seen}(x)}{f_\text{batch}(x)},

and the images of the seen classes to classify are drawn like the training images, so
:math:`f_\text{seen}` is the training images' density (learning from positive and
unlabelled data, Elkan & Noto, KDD 2008). :class:`BatchAdaptation` estimates the ratio
by neighbours: the training images (the reference) and the batch are pooled in one
space; a point's score is how many of its ``n_neighbors`` nearest pooled points are batch
images (the point itself left out); an isotonic map of that count, fitted with the two
sets weighted equally, is :math:`c = P(\text{batch} \mid \text{score})`, so
:math:`f_\text{batch} / f_\text{seen} = c / (1 - c)` and

.. math::

    P(\text{unseen} \mid x) = \max\bigl(0,\ 1 - (1 - \pi)(1 - c) / c\bigr).

The stated share enters only this last step, so changing it needs no refit. A batch image
scored again is scored without itself, as in the fit. It is recognised by a key of its
row (:func:`row_keys`), not by a distance of 0: the caller may compute the space's
coordinates with a GEMM whose rounding depends on how many rows it is given, so the same
image can land a few ulps away from its pooled copy. :class:`fastzsl.novelty_gate.NoveltyGate`
keys the raw feature rows; by default the rows themselves are the keys.
"""
from __future__ import annotations

import numpy as np

from ._validation import as_float_matrix, check_k, check_same_width
from .calibration import ScoreCalibrator, check_prior

N_NEIGHBORS = 100  # chosen on development pairs (benchmarks/novelty_adaptation.py)
MAX_ROWS = 50_000  # rows kept of each set: the ratio needs a sample, not every image
KEY_BLOCK = 1024   # rows keyed at a time (bounds the uint64 temporary)


def row_keys(X) -> np.ndarray:
    """A 64-bit key of each row's float32 bytes (a polynomial hash, mod 2^64): equal rows
    get equal keys, and distinct rows collide with probability about 2^-64 a pair."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    words = X.view(np.uint32).reshape(X.shape[0], -1)
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(words.shape[1], 0x9E3779B97F4A7C15, np.uint64),
                            dtype=np.uint64)
        keys = np.empty(X.shape[0], np.uint64)
        for start in range(0, X.shape[0], KEY_BLOCK):
            block = words[start:start + KEY_BLOCK].astype(np.uint64)
            keys[start:start + KEY_BLOCK] = (block * powers).sum(axis=1, dtype=np.uint64)
    return keys


class BatchAdaptation:
    """P(unseen | x) from the density ratio of a batch of images to classify and the
    training images, estimated by neighbours (see the module doc).

    Parameters
    ----------
    n_neighbors : int, default=100
        Neighbours of a point in the pooled set that give its score.
    max_rows : int, default=50_000
        Each of the two sets is cut to this many seeded rows (the batch may be millions).
    backend : str, default="auto"
        Kernel backend of the kNN search.
    random_state : int, default=0
        Seeds the cut.
    """

    def __init__(self, n_neighbors=N_NEIGHBORS, *, max_rows=MAX_ROWS, backend="auto",
                 random_state=0):
        self.n_neighbors = n_neighbors
        self.max_rows = max_rows
        self.backend = backend
        self.random_state = random_state

    def fit(self, reference, batch, batch_keys=None):
        """Pool ``reference`` (training images) and ``batch`` (images to classify, no
        labels), both in the same space, and fit the map from a point's count of batch
        neighbours to P(batch | count) at equal weights. ``batch_keys``: a key per batch
        row that scoring recognises it by (default: :func:`row_keys` of the batch)."""
        from .neighbors import make_index

        reference = as_float_matrix(reference, "reference", dtype=np.float32)
        batch = as_float_matrix(batch, "batch", dtype=np.float32)
        check_same_width(batch, reference.shape[1], "batch", "the reference")
        keys = row_keys(batch) if batch_keys is None else np.asarray(batch_keys, np.uint64)
        if keys.shape != (batch.shape[0],):
            raise ValueError(f"batch_keys must have shape ({batch.shape[0]},), got {keys.shape}")
        if isinstance(self.max_rows, bool) or not isinstance(self.max_rows, (int, np.integer)) \
                or self.max_rows < 1:
            raise ValueError(f"max_rows must be an int >= 1, got {self.max_rows!r}")
        rng = np.random.default_rng(self.random_state)
        reference = reference[_cut(reference.shape[0], self.max_rows, rng)]
        kept = _cut(batch.shape[0], self.max_rows, rng)
        batch, keys = batch[kept], keys[kept]
        pooled = np.vstack([reference, batch])
        k = check_k(self.n_neighbors, pooled.shape[0], exclude_self=True, name="n_neighbors")
        self.is_batch_ = np.r_[np.zeros(len(reference), bool), np.ones(len(batch), bool)]
        self.index_ = make_index(pooled, backend=self.backend, copy=False)
        _, I = self.index_.search(pooled, k, exclude_self=True)
        counts = self.is_batch_[I].sum(axis=1)
        weights = np.where(self.is_batch_, 0.5 / len(batch), 0.5 / len(reference))
        self.calibrator_ = ScoreCalibrator("isotonic").fit(counts, self.is_batch_,
                                                            sample_weight=weights)
        self._set_keys(keys)
        self.n_features_in_ = pooled.shape[1]
        return self

    def _set_keys(self, keys):
        """The batch rows' keys, sorted, and the pooled index of each."""
        order = np.argsort(keys, kind="stable")
        self.keys_ = keys[order]
        self.key_rows_ = (np.count_nonzero(~self.is_batch_) + order).astype(np.int64)

    def batch_probability(self, X, keys=None) -> np.ndarray:
        """c = P(batch | count of batch neighbours) of each row of X, at equal weights.
        A row whose key (``keys``, default :func:`row_keys` of X) is a batch row's is
        scored without that row, as the fit scored it."""
        X = as_float_matrix(X, "X", dtype=np.float32)
        check_same_width(X, self.n_features_in_, "X", "BatchAdaptation")
        keys = row_keys(X) if keys is None else np.asarray(keys, np.uint64)
        k = self.n_neighbors
        _, I = self.index_.search(X, k + 1, squared=True)
        at = np.minimum(np.searchsorted(self.keys_, keys), len(self.keys_) - 1)
        own = np.where(self.keys_[at] == keys, self.key_rows_[at], -1)
        # leave the row's own pooled point out where it is listed, else the (k+1)-th
        is_own = I == own[:, None]
        drop = np.where(is_own.any(axis=1), is_own.argmax(axis=1), k)
        keep = np.arange(k + 1)[None, :] != drop[:, None]
        neighbours = I[keep].reshape(len(I), k)
        return self.calibrator_.transform(self.is_batch_[neighbours].sum(axis=1))

    def unseen_probability(self, X, share, keys=None) -> np.ndarray:
        """P(unseen | x) of each row of X when ``share`` of the batch is unseen (``keys``:
        see :meth:`batch_probability`)."""
        share = check_prior(share)
        c = self.batch_probability(X, keys)
        return np.clip(1.0 - (1.0 - share) * (1.0 - c) / c, 0.0, 1.0)

    # ------------------------------------------------------------------ model files
    def _export(self):
        meta, arrays = self.calibrator_._export()
        return ({"params": {"n_neighbors": self.n_neighbors, "max_rows": self.max_rows,
                            "backend": self.backend, "random_state": self.random_state},
                 "calibrator": meta},
                {"calibrator_points": arrays["points"], "pooled": self.index_.reference,
                 "is_batch": self.is_batch_, "batch_keys": self.keys_,
                 "batch_key_rows": self.key_rows_})

    @classmethod
    def _restore(cls, meta, arrays):
        from .neighbors import make_index

        adaptation = cls(**meta["params"])
        adaptation.calibrator_ = ScoreCalibrator._restore(
            meta["calibrator"], {"points": arrays["calibrator_points"]})
        adaptation.is_batch_ = np.asarray(arrays["is_batch"], dtype=bool)
        pooled = np.asarray(arrays["pooled"], dtype=np.float32)
        adaptation.index_ = make_index(pooled, backend=adaptation.backend)
        adaptation.keys_ = np.asarray(arrays["batch_keys"], dtype=np.uint64)
        adaptation.key_rows_ = np.asarray(arrays["batch_key_rows"], dtype=np.int64)
        adaptation.n_features_in_ = pooled.shape[1]
        return adaptation


def _cut(n, max_rows, rng):
    """Indices of ``max_rows`` of ``n`` rows drawn without replacement (all, when fewer),
    in order."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(rng.choice(n, max_rows, replace=False))
