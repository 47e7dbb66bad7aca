"""Dispatch by model kind: the result columns of a zero-shot classifier or a novelty
detector, and a loaded model set up for scoring (backend, no per-call progress bars)."""
from __future__ import annotations

import numpy as np

from .._files import BatchError


def _model_kind(model) -> str:
    """"zeroshot" for a classifier with a novelty gate, "detector" for a detector of the
    novelty-detector protocol (``outlier_probability``)."""
    if hasattr(model, "predict_proba_with_novelty"):
        return "zeroshot"
    if hasattr(model, "outlier_probability"):
        return "detector"
    raise BatchError(f"cannot batch-score a {type(model).__name__}; expected a fitted "
                     "ZeroShotClassifier or a novelty detector (LoOP, GaussianNovelty)")


def novelty_threshold(model) -> float:
    """The threshold on P(unseen|x) of the detector's own ``predict``."""
    return getattr(model, "default_threshold", 0.5)


def output_columns(model, with_proba: bool) -> list[tuple[str, str, tuple]]:
    """(name, dtype, shape per row) of the result columns, in file order."""
    columns = [("row", "<i8", ())]
    if _model_kind(model) == "zeroshot":
        width = max(len(c) for c in model.classes_.tolist())
        columns += [("predicted_class", f"<U{width}", ()), ("top_probability", "<f8", ()),
                    ("p_unseen", "<f8", ())]
        if with_proba:
            columns.append(("proba", "<f8", (len(model.classes_),)))
    else:
        columns += [("p_unseen", "<f8", ()), ("is_novel", "|b1", ())]
    return columns


def score_rows(model, X, with_proba=False) -> dict:
    """The result columns (without ``row``) of one chunk of feature rows."""
    if _model_kind(model) == "zeroshot":
        predicted, proba, p_unseen = model.predict_with_proba(X)
        # the predicted class's probability (predict may route hard, predict_proba is soft)
        column = {c: j for j, c in enumerate(model.classes_.tolist())}
        top = np.array([column[c] for c in predicted.tolist()], dtype=np.int64)
        out = {"predicted_class": predicted,
               "top_probability": proba[np.arange(len(top)), top], "p_unseen": p_unseen}
        if with_proba:
            out["proba"] = proba
        return out
    p_unseen = np.asarray(model.outlier_probability(X), dtype=np.float64)
    return {"p_unseen": p_unseen, "is_novel": p_unseen > novelty_threshold(model)}


def _parts(model) -> list:
    """The model and its novelty detector(s): what carries backend and progress settings."""
    gate = getattr(model, "gate_", None)
    return [model] + (gate.detectors_() if gate is not None else [])


def _quiet(model):
    """Turn off the per-chunk progress bars of the model and its detectors."""
    for part in _parts(model):
        if hasattr(part, "progress"):
            part.progress = False
    return model


def _with_backend(model, backend):
    """The loaded model with its kernels switched to ``backend`` (indexes rebuilt)."""
    from ..loop import LoOP

    if backend is None:
        return model
    for part in _parts(model):
        if "backend" not in part.get_params():
            continue
        part.set_params(backend=backend)
        if isinstance(part, LoOP):
            part._build_index(part.index_.reference)
    return model
