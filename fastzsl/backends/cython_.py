"""Cython + OpenMP CPU backend: the compiled kernels of csrc/cpu (fastzsl._ext.*_cpu).

Two-pass kNN and GEMM-form Gaussian kernels with proven error bounds (their kNN distances bit-match
the direct kernels of csrc/cpu and of the numba backend; the Gaussian kernel takes direct
differences instead where the classes are few and d small); built by setup.py. When
the extension is not built this module still imports, ``KERNELS`` is None and
``is_available()`` says how to build it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import _knn_bf16, _knn_screen
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
    """``knn_cpu.knn``, bit for bit: float64 queries through the float32 screen of
    ``_knn_screen`` (a search of many queries: rounding the reference tile by tile, with
    no float32 copy), float32 queries through the BF16 screen of ``_knn_bf16``
    where the CPU has AVX512_BF16 (``FASTZSL_BF16``; more than
    ``knn_cpu.split_max_queries`` queries until a search has made ``prepared``'s view of
    the reference, more than ``_knn_bf16.FIRST_CHUNK`` after), both at about the speed of
    the lower precision.
    ``prepared``: ``prepare(reference)`` (the reference's norms, its float32 copy for
    float64 once needed, its bfloat16 copy for float32), kept by a caller that searches
    one reference many times (``ExactIndex``): it saves passes over the reference per
    call, most of the work for a single query."""
    if getattr(queries, "dtype", None) == np.float64:
        # the BF16 screen, where it runs, takes the float32 search of the float64 screen
        bf16 = _knn_bf16.mode(_knn_cpu) is not None
        return _knn_screen.knn(_knn_cpu, queries, reference, k, self_offset, prepared,
                               _knn32 if bf16 else None)
    return _knn32(queries, reference, k, self_offset, prepared)


def _knn32(queries, reference, k, self_offset, prepared):
    """:func:`knn` of float32 queries (and the float64 screen's float32 search)."""
    held = isinstance(prepared, _knn_bf16.Prepared)
    prepared32 = prepared.prepared32 if held else prepared
    screen = _knn_bf16.mode(_knn_cpu)
    # Making the screen's view rounds and packs the whole reference: for up to the float32
    # kernel's split-path limit of queries that costs more than the screen saves (one-shot
    # searches of blobs 100k x 50 and normal rows 50k x 128, k = 20: 1.15x-1.8x the float32
    # kernel's time at 100-256 queries, 0.75x-1.17x at 512). A view made by an earlier
    # search is used from the pilot's size on (index of the normal rows: 0.62x at 100).
    fewest = (_knn_bf16.FIRST_CHUNK if held and prepared.has_view()
              else _knn_cpu.split_max_queries)
    if (screen is not None and getattr(queries, "dtype", None) == np.float32
            and len(queries) > fewest and (not held or prepared.pays())):
        queries = np.ascontiguousarray(queries)
        reference = np.ascontiguousarray(reference, dtype=np.float32)
        if prepared32 is None:
            prepared32 = _knn_cpu.reference_norms(reference)
        answer = _knn_bf16.knn(
            _knn_cpu, queries, reference, k, self_offset, prepared32,
            (lambda: prepared.view(_knn_cpu, reference)) if held
            else (lambda: _knn_bf16.prepare(_knn_cpu, reference)), screen)
        if answer is not None:
            D, I, pays = answer
            if held and not pays:
                prepared.does_not_pay()
            return D, I
    return _knn_cpu.knn(queries, reference, k, self_offset, prepared32)


def prepare(reference):
    """What :func:`knn` reuses across searches of ``reference`` (``KernelSet.knn_prepare``):
    its norms; for float64 those of its rows rounded to float32, and its float32 copy
    (half the reference's memory again) once a search of a few queries needs it; where the
    BF16 screen runs, the float32 rows' bfloat16 copy, made by the first search of enough
    queries (half the float32 rows' memory again)."""
    prepared = _knn_screen.prepare(_knn_cpu, reference)
    if reference.shape[1] < _knn_bf16.MIN_DIM or _knn_bf16.mode(_knn_cpu) is None:
        return prepared
    if isinstance(prepared, _knn_screen.ScreenPrepared) and prepared.prepared32 is not None:
        return dataclasses.replace(prepared,
                                   prepared32=_knn_bf16.Prepared(prepared.prepared32))
    if getattr(reference, "dtype", None) == np.float32 and prepared is not None:
        return _knn_bf16.Prepared(prepared)
    return prepared


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
        gaussian_checks_finite=True,
        knn_self=_knn_cpu.knn_self,
        self_join=_knn_cpu.SelfJoin.open,
        knn_prepare=prepare,
        rerank=_knn_cpu.rerank,
        unit_rows=_knn_cpu.unit_rows,
    )


def is_available():
    if _MISSING:
        return False, (
            f"the compiled extension {_MISSING}; "
            "rebuild with: pip install --no-build-isolation -e ."
        )
    return True, ""
