"""fastzsl: zero-shot classification with novelty detection (Socher et al., NIPS 2013) at
the scale of millions of images.

Public API: estimators (:class:`ZeroShotClassifier`, :class:`SemanticMapper`,
:class:`SoftmaxClassifier`, :class:`LoOP`, :class:`GaussianNovelty`, and
:class:`KNNTransformer`, scikit-learn's kNN graph for ``metric="precomputed"`` estimators),
model files (``ZeroShotClassifier.save``, :func:`load`), FAISS-like functions
(:func:`knn`, :func:`loop_fit`, :func:`loop_score`, :func:`gaussian_loglik`), and batch
scoring of feature files of any size (:func:`score_file`, :func:`read_scores`) and
chunked, resumable fitting of novelty detectors on them (:func:`fit_file`).

Drop-in modules: ``fastzsl.faiss`` is faiss's exact flat indexes (``IndexFlatL2``,
``IndexFlatIP``, ``knn``) and ``fastzsl.pynomaly`` is PyNomaly's API, both on fastzsl's
kernels. Importing fastzsl loads none of torch, numba, cupy, faiss or dask; each loads when
first used.
"""
from importlib import import_module

from ._version import __version__

# public name -> module that defines it (imported on first access, PEP 562)
_EXPORTS = {
    "knn": "fastzsl.neighbors",
    "ExactIndex": "fastzsl.neighbors",
    "FaissIndex": "fastzsl.neighbors",
    "loop_fit": "fastzsl.loop",
    "loop_score": "fastzsl.loop",
    "LoOP": "fastzsl.loop",
    "LoOPFit": "fastzsl.loop",
    "gaussian_loglik": "fastzsl.gaussian",
    "KNNTransformer": "fastzsl.knn_graph",
    "GaussianNovelty": "fastzsl.gaussian",
    "CoatesNgFeatures": "fastzsl.features",
    "SemanticMapper": "fastzsl.mapping",
    "SoftmaxClassifier": "fastzsl.softmax",
    "ZeroShotClassifier": "fastzsl.zeroshot",
    "load": "fastzsl.persistence",
    "class_vectors": "fastzsl.embeddings",
    "load_glove_50d": "fastzsl.embeddings",
    "available_backends": "fastzsl.backends",
    "BackendUnavailableError": "fastzsl.backends",
    "score_file": "fastzsl.batch",
    "read_scores": "fastzsl.batch",
    "fit_file": "fastzsl.fitting",
}

__all__ = sorted(_EXPORTS)

# The compiled kernels' OpenMP runtime is loaded now (a tiny extension), so that a
# threadpoolctl.threadpool_limits entered after ``import fastzsl`` limits them too.
import_module("fastzsl._threads").load_openmp()


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastzsl' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
