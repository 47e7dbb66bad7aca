"""GaussianNovelty from files: streaming per-class sums, then the training scores."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._validation import check_option
from ._job import FORMAT, FORMAT_VERSION, _claim
from ._source import _read_labels


def _fit_gaussian(estimator, source, model_path, *, labels, scheduler, n_workers, schedule,
                  progress, wait, log):
    from sklearn.base import clone

    from ..gaussian import RULES, VARIANCES

    check_option(estimator.rule, RULES, "rule")
    check_option(estimator.variance, VARIANCES, "variance")
    y = _read_labels(labels, source) if source.exclude is None else source.labels()
    if scheduler is not None:
        log("GaussianNovelty: one streaming pass, run in this process (scheduler unused)")
    classes, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    codes = codes.ravel()
    model = clone(estimator)
    # The first pass reads (and checks) every row and writes nothing: bad input is refused
    # before the job claims the model path.
    _class_parameters(model, source, classes, codes, counts)
    identity = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "estimator": "GaussianNovelty",
                "params": {name: value for name, value in estimator.get_params().items()
                           if name != "n_jobs"},
                "labels": source.exclude or str(Path(labels).resolve()),
                **source.identity()}
    with _claim(model_path, identity, wait, log):
        _training_scores(model, source, codes)
        model.save(model_path)
    return {"estimator": "GaussianNovelty", "classes": classes.tolist()}


def _class_parameters(model, source, classes, codes, counts):
    """means_, variances_, priors_ from one pass of per-class float64 sums.

    Each class's rows are summed as offsets z = f - s from its first row s, and the sum of
    squared deviations from the mean is sum ||z||^2 - ||sum z||^2 / N: shifted by a point of
    the class, the two terms are of the size of the deviations themselves, so no digits are
    lost to a large mean (the textbook sum of squares would lose them)."""
    from .._validation import as_float_matrix

    n_classes, d = len(classes), source.width
    first = np.unique(codes, return_index=True)[1]
    shift = np.empty((n_classes, d))
    sums = np.zeros((n_classes, d))
    squares = np.zeros(n_classes)
    for chunk in source.chunks:
        X = source.rows(chunk, np.float64)
        c = codes[chunk.row:chunk.row + chunk.n_rows]
        for cls, row in enumerate(first):  # the first row of a class is in this chunk
            if chunk.row <= row < chunk.row + chunk.n_rows:
                shift[cls] = X[row - chunk.row]
        Z = X - shift[c]
        order = np.argsort(c, kind="stable")
        present, starts = np.unique(c[order], return_index=True)
        sums[present] += np.add.reduceat(Z[order], starts, axis=0)
        squares += np.bincount(c, weights=np.einsum("ij,ij->i", Z, Z), minlength=n_classes)
    model.classes_ = classes
    model.means_ = as_float_matrix(shift + sums / counts[:, None], "means", dtype=np.float64)
    deviations = np.maximum(squares - np.einsum("ij,ij->i", sums, sums) / counts, 0.0)
    denominator = counts if model.variance == "class" else np.full(n_classes, source.n_rows)
    model.variances_ = deviations / (denominator * d)
    if (model.variances_ == 0).any():
        zero = ", ".join(f"{classes.tolist()[c]!r} (n_samples = {counts[c]})"
                         for c in np.flatnonzero(model.variances_ == 0))
        raise ValueError(
            f"classes {zero} have zero variance: all their points equal their mean")
    model.priors_ = counts / source.n_rows
    model.n_features_in_ = d
    model.offset_ = 1.0 - model.default_threshold


def _training_scores(model, source, codes):
    """The sorted training scores ``GaussianNovelty`` reads probabilities off (one pass)."""
    parts = []
    for chunk in source.chunks:
        X = source.rows(chunk, np.float64)
        if model.rule == "mixture":
            parts.append(model._mixture(X))
        else:
            c = codes[chunk.row:chunk.row + chunk.n_rows]
            parts.append(model.log_likelihood(X)[np.arange(len(c)), c])
    scores = np.concatenate(parts)
    if model.rule == "mixture":
        model._train_scores = np.sort(scores)
    else:
        model._train_scores = [np.sort(scores[codes == c]) for c in range(len(model.classes_))]
