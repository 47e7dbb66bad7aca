"""Zero-shot and generalized zero-shot metrics (Socher et al. 2013; Xian et al. 2018)."""
from __future__ import annotations

import numpy as np


def _accuracy(y_true, y_pred, mask):
    return float(np.mean(y_true[mask] == y_pred[mask])) if mask.any() else float("nan")


def zero_shot_accuracies(y_true, y_pred, unseen_classes) -> dict:
    """Seen, unseen and overall accuracy over all classes (the paper's Figure 3 numbers).

    A seen-class image labelled with an unseen class (or the reverse) counts as an error.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    is_unseen = np.isin(y_true, list(unseen_classes))
    return {
        "seen_accuracy": _accuracy(y_true, y_pred, ~is_unseen),
        "unseen_accuracy": _accuracy(y_true, y_pred, is_unseen),
        "overall_accuracy": _accuracy(y_true, y_pred, np.ones_like(is_unseen)),
    }


def per_class_mean_accuracy(y_true, y_pred, classes) -> float:
    """Mean over ``classes`` (those present in y_true) of each class's accuracy."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = [np.mean(y_pred[y_true == c] == c) for c in classes if np.any(y_true == c)]
    return float(np.mean(scores)) if scores else float("nan")


def gzsl_scores(y_true, y_pred, seen_classes, unseen_classes) -> dict:
    """Generalized zero-shot scores: per-class mean accuracy on seen (tr) and unseen (ts)
    test images, predictions over all classes, and their harmonic mean H."""
    tr = per_class_mean_accuracy(y_true, y_pred, seen_classes)
    ts = per_class_mean_accuracy(y_true, y_pred, unseen_classes)
    h = 2 * tr * ts / (tr + ts) if (tr + ts) > 0 else 0.0
    return {"seen_per_class_accuracy": tr, "unseen_per_class_accuracy": ts, "harmonic_mean": h}
