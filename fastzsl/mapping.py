r"""The semantic mapping of Socher et al. (2013): image features -> word-vector space.

.. math::

    f(x) = W_2 \tanh(W_1 x + b_1) + b_2

(or, with ``hidden=0``, the one-layer linear map :math:`f(x) = W x + b`, the baseline the
paper compares against), trained on the seen classes only, with the class word vectors as
fixed targets:

.. math::

    J = \frac{1}{2N}\sum_i \lVert w_{y_i} - f(x_i)\rVert^2
        + \frac{\lambda}{2}\bigl(\lVert W_1\rVert^2 + \lVert W_2\rVert^2\bigr).
"""
from __future__ import annotations

import math
import numbers

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._model_files import SaveMixin
from ._optional import import_torch
from ._training import minimize, predict_in_chunks, resolve_optimizer
from ._validation import as_float_matrix, check_finite, check_same_width


def build_network(n_features: int, hidden: int, n_outputs: int):
    """The two-layer tanh network (``hidden > 0``) or the linear map (``hidden == 0``) as a
    torch ``nn.Module``."""
    torch = import_torch()

    class MappingNetwork(torch.nn.Module):
        """f(x) = output(tanh(hidden(x))), or output(x) without a hidden layer."""

        def __init__(self):
            super().__init__()
            self.hidden = torch.nn.Linear(n_features, hidden) if hidden else None
            self.output = torch.nn.Linear(hidden or n_features, n_outputs)

        def forward(self, x):
            return self.output(x if self.hidden is None else torch.tanh(self.hidden(x)))

    return MappingNetwork()


def targets_for(y, class_vectors):
    """Rows of word vectors for labels y; class_vectors a mapping or a (C, d) array."""
    y = np.asarray(y)
    if isinstance(class_vectors, dict):
        labels = np.unique(y).tolist()
        missing = sorted({str(c) for c in labels if c not in class_vectors})
        if missing:
            raise ValueError(f"class_vectors has no vector for labels {missing}")
        lookup = {c: np.asarray(v, dtype=np.float32) for c, v in class_vectors.items()}
        bad = [str(c) for c in labels if not np.isfinite(lookup[c]).all()]
        if bad:
            raise ValueError(f"class_vectors has NaN or infinity in the vectors of labels {bad}")
        return np.stack([lookup[c] for c in y.tolist()])
    W = np.asarray(class_vectors, dtype=np.float32)
    if W.ndim != 2:
        raise ValueError(f"class_vectors must be a mapping or a 2-D array, got shape {W.shape}")
    check_finite(W, "class_vectors")
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= W.shape[0]:
        raise ValueError(
            f"with an array of class vectors, y must hold row indices in [0, {W.shape[0]})")
    return W[y]


class SemanticMapper(SaveMixin, TransformerMixin, BaseEstimator):
    """Two-layer tanh (or linear) network from image features to the word-vector space (torch).

    Parameters
    ----------
    hidden : int, default=200
        Hidden units (the authors' code; older code used 100); 0 makes the mapping the
        one-layer linear map f(x) = W x + b.
    l2 : float, default=1e-4
        lambda of the weight penalty (lambda/2)(||W1||^2 + ||W2||^2).
    optimizer : {"auto", "lbfgs", "adam"}, default="auto"
        Full-batch L-BFGS (the paper's code) or mini-batch Adam; "auto" takes L-BFGS while
        n_samples x n_features <= 2e7.
    max_iter : int, default=500
        L-BFGS iterations.
    epochs, batch_size, lr : int, int, float, default=20, 256, 1e-3
        Adam settings.
    bias_l2 : bool, default=False
        Reference code: also penalise the biases.
    sparsity_weight : float, default=0.0
        Reference code (beta = 5): KL sparsity penalty beta sum_j KL(rho || rho_hat_j) with
        rho_hat_j = (mean_i a_ij + 1) / 2 over the tanh activations a (needs hidden > 0).
    sparsity_target : float, default=0.035
        rho.
    random_state : int, default=0
    progress : bool, default=False

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained network (``module_.hidden``, ``module_.output``).
    loss_curve_ : list of float
    optimizer_ : str
    n_features_in_ : int
    n_outputs_ : int
    """

    def __init__(self, *, hidden=200, l2=1e-4, optimizer="auto", max_iter=500, epochs=20,
                 batch_size=256, lr=1e-3, bias_l2=False, sparsity_weight=0.0,
                 sparsity_target=0.035, random_state=0, progress=False):
        self.hidden = hidden
        self.l2 = l2
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.bias_l2 = bias_l2
        self.sparsity_weight = sparsity_weight
        self.sparsity_target = sparsity_target
        self.random_state = random_state
        self.progress = progress

    def fit(self, X, y, class_vectors):
        """Train f so that f(x_i) lands on the word vector of y_i.

        Parameters
        ----------
        X : array-like of shape (n, n_features)
        y : array-like of shape (n,)
            Labels (keys of ``class_vectors``), or row indices when it is an array.
        class_vectors : dict or array-like of shape (C, d)
        """
        torch = import_torch()

        hidden = self.hidden
        if isinstance(hidden, bool) or not isinstance(hidden, numbers.Integral) or hidden < 0:
            raise ValueError(f"hidden must be an int >= 0 (0: linear mapping), got {hidden!r}")
        if hidden == 0 and self.sparsity_weight:
            raise ValueError("sparsity_weight penalises hidden units: it needs hidden > 0")
        X = as_float_matrix(X, "X", dtype=np.float32)
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}")
        T = targets_for(y, class_vectors)
        n, n_features = X.shape
        self.n_features_in_, self.n_outputs_ = n_features, T.shape[1]
        self.optimizer_ = resolve_optimizer(self.optimizer, n, n_features)

        generator = torch.Generator().manual_seed(self.random_state)
        self.module_ = build_network(n_features, hidden, self.n_outputs_)
        layers = [m for m in (self.module_.hidden, self.module_.output) if m is not None]
        # The authors' init: U[-r, r], r = sqrt(6 / (I + h + d)); biases 0.
        r = math.sqrt(6.0 / (n_features + hidden + self.n_outputs_))
        with torch.no_grad():
            for layer in layers:
                layer.weight.uniform_(-r, r, generator=generator)
                layer.bias.zero_()

        X_t, T_t = torch.from_numpy(X), torch.from_numpy(np.ascontiguousarray(T))
        weights = [layer.weight for layer in layers]
        biases = [layer.bias for layer in layers]
        penalised = weights + (biases if self.bias_l2 else [])
        rho = self.sparsity_target

        def batch_loss(rows):
            x, t = (X_t, T_t) if rows is None else (X_t[rows], T_t[rows])
            if self.sparsity_weight:
                activations = torch.tanh(self.module_.hidden(x))
                out = self.module_.output(activations)
            else:
                out = self.module_(x)
            loss = 0.5 * ((out - t) ** 2).sum(dim=1).mean()
            loss = loss + 0.5 * self.l2 * sum((p ** 2).sum() for p in penalised)
            if self.sparsity_weight:
                rho_hat = ((activations.mean(dim=0) + 1.0) / 2.0).clamp(1e-6, 1 - 1e-6)
                kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
                loss = loss + self.sparsity_weight * kl.sum()
            return loss

        self.loss_curve_ = minimize(
            batch_loss, list(self.module_.parameters()), n, optimizer=self.optimizer_,
            max_iter=self.max_iter, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            seed=self.random_state, progress=self.progress, desc="semantic mapping")
        self.module_.eval()
        return self

    def transform(self, X):
        """Map image features into the word-vector space: array of shape (n, d), float32."""
        check_is_fitted(self)
        X = as_float_matrix(X, "X", dtype=np.float32)
        check_same_width(X, self.n_features_in_, "X", "SemanticMapper")
        return self._map(X)

    def _map(self, X):
        """:meth:`transform` of X that the caller has checked (float32, C-contiguous,
        finite, n_features_in_ wide): a scoring call validates its input once."""
        return predict_in_chunks(self.module_, X)

    def fit_transform(self, X, y=None, class_vectors=None):
        return self.fit(X, y, class_vectors).transform(X)

    # ------------------------------------------------------------------ model files
    def _export(self):
        meta = {"params": self.get_params(), "n_features_in": self.n_features_in_,
                "n_outputs": self.n_outputs_, "optimizer": self.optimizer_,
                "loss_curve": list(self.loss_curve_)}
        arrays = {name: t.detach().numpy() for name, t in self.module_.state_dict().items()}
        return meta, arrays

    @classmethod
    def _restore(cls, meta, arrays):
        torch = import_torch()
        mapper = cls(**meta["params"])
        mapper.n_features_in_, mapper.n_outputs_ = meta["n_features_in"], meta["n_outputs"]
        mapper.optimizer_, mapper.loss_curve_ = meta["optimizer"], meta["loss_curve"]
        mapper.module_ = build_network(mapper.n_features_in_, mapper.hidden, mapper.n_outputs_)
        mapper.module_.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
        mapper.module_.eval()
        return mapper
