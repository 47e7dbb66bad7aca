"""``fastzsl.load``: read any fastzsl model file back into its fitted estimator.

The format (JSON metadata and raw arrays in a zip, checksummed, never unpickled) and the
save protocol live in :mod:`fastzsl._model_files`; this module maps the estimator name a
file records to the class that restores it.
"""
from __future__ import annotations

import importlib

from ._model_files import FORMAT, FORMAT_VERSION, load_archive, save_archive

__all__ = ["FORMAT", "FORMAT_VERSION", "RESTORERS", "load", "load_archive", "save_archive"]

# estimator name in a file's metadata -> "module:Class" whose ``_restore`` rebuilds it
RESTORERS = {
    "ZeroShotClassifier": "fastzsl.zeroshot:ZeroShotClassifier",
    "CoatesNgFeatures": "fastzsl.features:CoatesNgFeatures",
    "LoOP": "fastzsl.loop:LoOP",
    "GaussianNovelty": "fastzsl.gaussian:GaussianNovelty",
    "SemanticMapper": "fastzsl.mapping:SemanticMapper",
    "SoftmaxClassifier": "fastzsl.softmax:SoftmaxClassifier",
    "NoveltyGate": "fastzsl.novelty_gate:NoveltyGate",
    "PerClass": "fastzsl.novelty_gate:PerClass",
}


def load(path):
    """Load a model file written by a fastzsl ``save`` method (nothing is unpickled).

    Returns the estimator the file holds (a ``ZeroShotClassifier``, ``LoOP``,
    ``GaussianNovelty``, ``CoatesNgFeatures``, ``SemanticMapper`` or ``SoftmaxClassifier``),
    fitted as it was saved.
    """
    meta, arrays = load_archive(path)
    kind = meta.get("estimator") if isinstance(meta, dict) else None
    if kind not in RESTORERS:
        raise ValueError(f"{path} holds an unknown estimator {kind!r}; "
                         f"fastzsl reads {sorted(RESTORERS)}")
    module, name = RESTORERS[kind].split(":")
    cls = getattr(importlib.import_module(module), name)
    try:
        return cls._restore(meta, arrays)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ValueError(f"{path} is missing or has malformed model parts ({exc!r})") from None
