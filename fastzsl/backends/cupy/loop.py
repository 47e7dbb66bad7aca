"""LoOP on the GPU (``csrc/cuda/loop_cuda.cu``), in double.

nPLOF is a deterministic two-pass reduction (per-block partials, then one block), so
repeated runs give bit-identical results.
"""
from __future__ import annotations

import math

import numpy as np

from . import _loader
from ._launch import (SUFFIX, _blocks, _cupy, _device_id, _float_dtype, _launch, _on_device,
                      _result, _to_cupy)
from ._loader import REDUCE_THREADS

_ELEMENTWISE_THREADS = 256
_MAX_PARTIALS = 1024  # blocks of the first reduction pass


def _pdist(module, D, extent):
    cp = _cupy()
    n, k = D.shape
    pdist = cp.empty(n, dtype=np.float64)
    if n:
        kernel = module.get_function(f"loop_pdist_{SUFFIX[np.dtype(D.dtype)]}")
        _launch(kernel, (_blocks(n, _ELEMENTWISE_THREADS),), (_ELEMENTWISE_THREADS,),
                (D, np.int64(n), np.int32(k), np.float64(extent), pdist))
    return pdist


def _plof(module, pdist, I, ref_pdist, ev_override):
    cp = _cupy()
    n, k = I.shape
    plof = cp.empty(n, dtype=np.float64)
    if n:
        use_override = not math.isnan(ev_override)
        if not use_override and k and int(I.min()) < 0:
            # The kNN kernels write -1 where a row has fewer than k candidates; the kernel
            # would read ref_pdist[-1].
            raise ValueError("LoOP needs k neighbours in every row; I holds -1 (fewer "
                             "reference rows than k)")
        _launch(module.get_function("loop_plof"), (_blocks(n, _ELEMENTWISE_THREADS),),
                (_ELEMENTWISE_THREADS,), (
                    pdist, I, ref_pdist, np.int64(n), np.int32(k),
                    np.float64(ev_override if use_override else 0.0), np.int32(use_override),
                    plof))
    return plof


def _nplof(module, plof, extent) -> float:
    cp = _cupy()
    n = plof.shape[0]
    if n == 0:
        return 0.0
    parts = min(_MAX_PARTIALS, _blocks(n, REDUCE_THREADS))
    part_sum = cp.empty(parts, dtype=np.float64)
    part_count = cp.empty(parts, dtype=np.int64)
    _launch(module.get_function("loop_nplof_partial"), (parts,), (REDUCE_THREADS,),
            (plof, np.int64(n), part_sum, part_count))
    total = cp.empty(1, dtype=np.float64)
    count = cp.empty(1, dtype=np.int64)
    _launch(module.get_function("loop_nplof_final"), (1,), (REDUCE_THREADS,),
            (part_sum, part_count, np.int32(parts), total, count))
    total, count = float(total[0]), int(count[0])  # two scalars, not arrays, to the host
    return float(extent * math.sqrt(total / count)) if count > 0 else 0.0


def _probability(module, plof, nplof):
    cp = _cupy()
    n = plof.shape[0]
    prob = cp.empty(n, dtype=np.float64)
    if n:
        _launch(module.get_function("loop_probability"), (_blocks(n, _ELEMENTWISE_THREADS),),
                (_ELEMENTWISE_THREADS,), (plof, np.int64(n), np.float64(nplof), prob))
    return prob


def _graph(D, I):
    D = _to_cupy(D)
    D = D.astype(_float_dtype(D), copy=False)
    return D, _to_cupy(I, np.int64)


def loop_fit(D, I, extent):
    with _on_device(_device_id(D, I)):
        module = _loader.load_module("loop_cuda")
        Dd, Id = _graph(D, I)
        pdist = _pdist(module, Dd, extent)
        plof = _plof(module, pdist, Id, pdist, math.nan)
        nplof = _nplof(module, plof, extent)
        prob = _probability(module, plof, nplof)
        return _result(pdist, D), _result(plof, D), nplof, _result(prob, D)


def loop_score(D, I, ref_pdist, nplof, extent, ev_override):
    with _on_device(_device_id(D, I, ref_pdist)):
        module = _loader.load_module("loop_cuda")
        Dd, Id = _graph(D, I)
        ref = _to_cupy(ref_pdist, np.float64)
        pdist = _pdist(module, Dd, extent)
        plof = _plof(module, pdist, Id, ref, float(ev_override))
        return _result(_probability(module, plof, float(nplof)), D)
