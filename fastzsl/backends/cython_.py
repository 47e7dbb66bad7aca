"""Cython + OpenMP CPU backend: the compiled kernels of csrc/cpu (fastzsl._ext.*_cpu).

Two-pass kNN and GEMM-form Gaussian kernels with proven error bounds (their kNN distances bit-match
the direct kernels of csrc/cpu and of the numba backend); built by setup.py. When
the extension is not built this module still imports, ``KERNELS`` is None and
``is_available()`` says how to build it.
"""
from __future__ import annotations

import numpy as np

from . import _knn_screen
from ._base import KernelSet

_MISSING = ""
try:
    from fastzsl._ext import knn_cpu as _knn_cpu
except ImportError as exc:  # pragma: no cover - depends on the build
    _MISSING = f"fastzsl._ext.knn_cpu is not built ({exc})"
if not _MISSING:
    try:
        from fastzsl._ext import loop_cpu as _loop_cpu
    except ImportError as exc:  # pragma: no cover
        _MISSING = f"fastzsl._ext.loop_cpu is not built ({exc})"
if not _MISSING:
    try:
        from fastzsl._ext import gaussian_cpu as _gaussian_cpu
    except ImportError as exc:  # pragma: no cover
        _MISSING = f"fastzsl._ext.gaussian_cpu is not built ({exc})"


def knn(queries, reference, k, self_offset, prepared=None):
    """``knn_cpu.knn``; float64 queries through the float32 screen of ``_knn_screen`` (the
    same answer, bit for bit, at about float32 speed). ``prepared``: ``prepare(reference)``
    (the reference's norms, and its float32 copy for float64), kept by a caller that searches
    one reference many times (``ExactIndex``): it saves passes over the reference per call,
    most of the work for a single query."""
    if getattr(queries, "dtype", None) == np.float64:
        return _knn_screen.knn(_knn_cpu, queries, reference, k, self_offset, prepared)
    return _knn_cpu.knn(queries, reference, k, self_offset, prepared)


def prepare(reference):
    """What :func:`knn` reuses across searches of ``reference`` (``KernelSet.knn_prepare``)."""
    return _knn_screen.prepare(_knn_cpu, reference)


if _MISSING:
    KERNELS = None
else:
    KERNELS = KernelSet(
        name="cython",
        device="cpu",
        knn=knn,
        loop_fit=_loop_cpu.loop_fit,
        loop_score=_loop_cpu.loop_score,
        gaussian_loglik=_gaussian_cpu.gaussian_loglik,
        knn_self=_knn_cpu.knn_self,
        self_join=_knn_cpu.SelfJoin.open,
        knn_prepare=prepare,
        rerank=_knn_cpu.rerank,
    )


def is_available():
    if _MISSING:
        return False, (
            f"the compiled extension {_MISSING}; "
            "rebuild with: pip install --no-build-isolation -e ."
        )
    return True, ""
