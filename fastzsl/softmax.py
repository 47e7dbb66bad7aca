r"""The seen-class classifier: multinomial logistic regression on the image features.

As in the authors' code: no bias, and an L2 penalty on the mean loss,

.. math::

    J = -\frac{1}{N}\sum_i \log \operatorname{softmax}(W^\top x_i)_{y_i}
        + \frac{\lambda}{2}\lVert W\rVert^2 .
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ._model_files import SaveMixin
from ._optional import import_torch
from ._training import minimize, predict_in_chunks, resolve_optimizer
from ._validation import as_float_matrix, check_same_width


class SoftmaxClassifier(SaveMixin, ClassifierMixin, BaseEstimator):
    """Softmax regression over the seen classes, P(y | seen, x).

    Parameters
    ----------
    l2 : float, default=1e-3
    optimizer : {"auto", "lbfgs", "adam"}, default="auto"
    max_iter : int, default=500
    epochs, batch_size, lr : default=20, 256, 1e-3
    random_state : int, default=0
    progress : bool, default=False

    Attributes
    ----------
    classes_ : ndarray of shape (C,)
    coef_ : ndarray of shape (n_features, C), float32
    loss_curve_ : list of float
    n_features_in_ : int
    """

    def __init__(self, *, l2=1e-3, optimizer="auto", max_iter=500, epochs=20, batch_size=256,
                 lr=1e-3, random_state=0, progress=False):
        self.l2 = l2
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.random_state = random_state
        self.progress = progress

    def fit(self, X, y):
        torch = import_torch()

        X = as_float_matrix(X, "X", dtype=np.float32)
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}")
        self.classes_, codes = np.unique(y, return_inverse=True)
        n, n_features = X.shape
        self.n_features_in_ = n_features
        self.optimizer_ = resolve_optimizer(self.optimizer, n, n_features)
        W = torch.zeros(n_features, len(self.classes_), requires_grad=True)
        X_t, y_t = torch.from_numpy(X), torch.from_numpy(codes.astype(np.int64))

        def batch_loss(rows):
            x, t = (X_t, y_t) if rows is None else (X_t[rows], y_t[rows])
            return torch.nn.functional.cross_entropy(x @ W, t) + 0.5 * self.l2 * (W ** 2).sum()

        self.loss_curve_ = minimize(
            batch_loss, [W], n, optimizer=self.optimizer_, max_iter=self.max_iter,
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            seed=self.random_state, progress=self.progress, desc="seen softmax")
        self.coef_ = W.detach().numpy().copy()
        return self

    def predict_proba(self, X):
        """P(y | seen, x): shape (n, C), columns in ``classes_`` order, float64."""
        check_is_fitted(self)
        X = as_float_matrix(X, "X", dtype=np.float32)
        check_same_width(X, self.n_features_in_, "X", "SoftmaxClassifier")
        return self._proba(X)

    def _proba(self, X):
        """:meth:`predict_proba` of X that the caller has checked (float32, C-contiguous,
        finite, n_features_in_ wide): a scoring call validates its input once."""
        torch = import_torch()

        W = torch.from_numpy(self.coef_)
        return predict_in_chunks(lambda x: torch.softmax((x @ W).double(), dim=1), X)

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    # ------------------------------------------------------------------ model files
    def _export(self):
        meta = {"params": self.get_params(), "classes": self.classes_.tolist(),
                "optimizer": self.optimizer_, "loss_curve": list(self.loss_curve_)}
        return meta, {"coef": self.coef_}

    @classmethod
    def _restore(cls, meta, arrays):
        model = cls(**meta["params"])
        model.classes_ = np.asarray(meta["classes"])
        model.coef_ = arrays["coef"]
        model.n_features_in_ = model.coef_.shape[0]
        model.optimizer_, model.loss_curve_ = meta["optimizer"], meta["loss_curve"]
        return model
