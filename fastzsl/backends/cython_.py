"""Cython + OpenMP CPU backend: the compiled kernels of csrc/cpu (fastzsl._ext.*_cpu).

GEMM-form kNN and Gaussian kernels with proven error bounds (their kNN distances bit-match
the direct kernels of csrc/cpu and of the numba backend); built by setup.py. When
the extension is not built this module still imports, ``KERNELS`` is None and
``is_available()`` says how to build it.
"""
from __future__ import annotations

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
    """``knn_cpu.knn``. ``prepared``: ``knn.prepare(reference)`` (the reference's norms),
    kept by a caller that searches one reference many times (``ExactIndex``): it saves a
    pass over the reference per call, most of the work for a single query."""
    return _knn_cpu.knn(queries, reference, k, self_offset, prepared)


if _MISSING:
    KERNELS = None
else:
    knn.prepare = _knn_cpu.reference_norms
    KERNELS = KernelSet(
        name="cython",
        device="cpu",
        knn=knn,
        loop_fit=_loop_cpu.loop_fit,
        loop_score=_loop_cpu.loop_score,
        gaussian_loglik=_gaussian_cpu.gaussian_loglik,
        knn_self=_knn_cpu.knn_self,
    )


def is_available():
    if _MISSING:
        return False, (
            f"the compiled extension {_MISSING}; "
            "rebuild with: pip install --no-build-isolation -e ."
        )
    return True, ""
