"""Minimising a torch objective: full-batch L-BFGS or mini-batch Adam, seeded.

Both estimators that train (SemanticMapper, SoftmaxClassifier) go through here, so the
optimiser choice, seeding and progress bars live in one place.
"""
from __future__ import annotations

import numpy as np

from ._optional import import_torch
from ._progress import bar as progress_bar
from ._validation import check_option

OPTIMIZERS = ("auto", "lbfgs", "adam")
# "auto" uses full-batch L-BFGS up to this many input values (n_samples x n_features);
# beyond it one L-BFGS iteration costs a pass over all data, and Adam converges sooner.
LBFGS_MAX_VALUES = 2 * 10**7


def resolve_optimizer(optimizer: str, n_samples: int, n_features: int) -> str:
    check_option(optimizer, OPTIMIZERS, "optimizer")
    if optimizer == "auto":
        return "lbfgs" if n_samples * n_features <= LBFGS_MAX_VALUES else "adam"
    return optimizer


def minimize(batch_loss, params, n_samples, *, optimizer, max_iter, epochs, batch_size, lr,
             seed, progress, desc):
    """Minimise ``batch_loss(rows)`` (rows: a LongTensor of sample indices, or None for all).

    Returns a list of the loss values seen (one per L-BFGS evaluation or Adam epoch).
    """
    torch = import_torch()

    history = []
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, max_eval=max_iter * 5 // 4,
                                history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)
        with progress_bar(max_iter, f"{desc} (L-BFGS)", enabled=progress, unit="eval") as bar:
            def closure():
                opt.zero_grad()
                loss = batch_loss(None)
                loss.backward()
                history.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]:.5g}", refresh=False)
                return loss

            opt.step(closure)
        return history

    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    with progress_bar(epochs, f"{desc} (Adam)", enabled=progress, unit="epoch") as bar:
        for _ in range(epochs):
            order = torch.randperm(n_samples, generator=generator)
            total, batches = 0.0, 0
            for start in range(0, n_samples, batch_size):
                opt.zero_grad()
                loss = batch_loss(order[start:start + batch_size])
                loss.backward()
                opt.step()
                total += loss.item()
                batches += 1
            history.append(total / batches)
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]:.5g}", refresh=False)
    return history


def predict_in_chunks(fn, X: np.ndarray, chunk_rows: int = 1 << 15) -> np.ndarray:
    """Apply a torch function to row chunks of X without gradients; stack as NumPy."""
    torch = import_torch()

    outputs = []
    with torch.no_grad():
        for start in range(0, X.shape[0], chunk_rows):
            outputs.append(fn(torch.from_numpy(X[start:start + chunk_rows])).numpy())
    return np.concatenate(outputs)
