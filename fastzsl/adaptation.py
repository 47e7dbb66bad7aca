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

The stated share enters only this last step, so changing it needs no refit. A point of
the pooled set (a batch or training image scored again) is scored without itself, as in
the fit: a query whose nearest pooled point is at distance 0 drops that point.
"""
from __future__ import annotations

import numpy as np

from ._validation import as_float_matrix, check_k, check_same_width
from .calibration import ScoreCalibrator, check_prior

N_NEIGHBORS = 100  # chosen on development pairs (benchmarks/novelty_adaptation.py)
MAX_ROWS = 50_000  # rows kept of each set: the ratio needs a sample, not every image


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

    def fit(self, reference, batch):
        """Pool ``reference`` (training images) and ``batch`` (images to classify, no
        labels), both in the same space, and fit the map from a point's count of batch
        neighbours to P(batch | count) at equal weights."""
        from .neighbors import make_index

        reference = as_float_matrix(reference, "reference", dtype=np.float32)
        batch = as_float_matrix(batch, "batch", dtype=np.float32)
        check_same_width(batch, reference.shape[1], "batch", "the reference")
        if isinstance(self.max_rows, bool) or not isinstance(self.max_rows, (int, np.integer)) \
                or self.max_rows < 1:
            raise ValueError(f"max_rows must be an int >= 1, got {self.max_rows!r}")
        rng = np.random.default_rng(self.random_state)
        reference, batch = (_cut(a, self.max_rows, rng) for a in (reference, batch))
        pooled = np.vstack([reference, batch])
        k = check_k(self.n_neighbors, pooled.shape[0], exclude_self=True, name="n_neighbors")
        self.is_batch_ = np.r_[np.zeros(len(reference), bool), np.ones(len(batch), bool)]
        self.index_ = make_index(pooled, backend=self.backend, copy=False)
        _, I = self.index_.search(pooled, k, exclude_self=True)
        counts = self.is_batch_[I].sum(axis=1)
        weights = np.where(self.is_batch_, 0.5 / len(batch), 0.5 / len(reference))
        self.calibrator_ = ScoreCalibrator("isotonic").fit(counts, self.is_batch_,
                                                            sample_weight=weights)
        self.n_features_in_ = pooled.shape[1]
        return self

    def batch_probability(self, X) -> np.ndarray:
        """c = P(batch | count of batch neighbours) of each row of X, at equal weights."""
        X = as_float_matrix(X, "X", dtype=np.float32)
        check_same_width(X, self.n_features_in_, "X", "BatchAdaptation")
        k = self.n_neighbors
        D, I = self.index_.search(X, k + 1, squared=True)
        # A pooled point scored again leaves itself out, as the fit did.
        itself = D[:, :1] == 0
        neighbours = np.where(itself, I[:, 1:], I[:, :k])
        return self.calibrator_.transform(self.is_batch_[neighbours].sum(axis=1))

    def unseen_probability(self, X, share) -> np.ndarray:
        """P(unseen | x) of each row of X when ``share`` of the batch is unseen."""
        share = check_prior(share)
        c = self.batch_probability(X)
        return np.clip(1.0 - (1.0 - share) * (1.0 - c) / c, 0.0, 1.0)

    # ------------------------------------------------------------------ model files
    def _export(self):
        meta, arrays = self.calibrator_._export()
        return ({"params": {"n_neighbors": self.n_neighbors, "max_rows": self.max_rows,
                            "backend": self.backend, "random_state": self.random_state},
                 "calibrator": meta},
                {"calibrator_points": arrays["points"], "pooled": self.index_.reference,
                 "is_batch": self.is_batch_})

    @classmethod
    def _restore(cls, meta, arrays):
        from .neighbors import make_index

        adaptation = cls(**meta["params"])
        adaptation.calibrator_ = ScoreCalibrator._restore(
            meta["calibrator"], {"points": arrays["calibrator_points"]})
        adaptation.is_batch_ = np.asarray(arrays["is_batch"], dtype=bool)
        pooled = np.asarray(arrays["pooled"], dtype=np.float32)
        adaptation.index_ = make_index(pooled, backend=adaptation.backend)
        adaptation.n_features_in_ = pooled.shape[1]
        return adaptation


def _cut(a, max_rows, rng):
    """``a``, or ``max_rows`` of its rows drawn without replacement (kept in order)."""
    if a.shape[0] <= max_rows:
        return a
    return a[np.sort(rng.choice(a.shape[0], max_rows, replace=False))]
