"""Isotropic Gaussian log-likelihoods and their fused row reductions on the GPU
(``csrc/cuda/gaussian_cuda.cu``). The (n, C) matrix is written only when ``full``.
"""
from __future__ import annotations

import numpy as np

from . import _loader
from ._launch import (NULL, SUFFIX, _blocks, _cupy, _device_id, _device_info, _float_dtype,
                      _launch, _on_device, _result, _rows_smem, _to_cupy)
from ._loader import ACC_DTYPE, MAX_BLOCK_THREADS, TILE_DIMS, TILE_ROWS

# Rows (threads) per block.
_ROWS_PER_BLOCK = {np.dtype(np.float32): MAX_BLOCK_THREADS,
                   np.dtype(np.float64): MAX_BLOCK_THREADS // 2}
_CLASS_PARAMS = 4  # doubles per class beside each tile: 2 var, log norm, log weight, threshold


def gaussian_loglik(F, means, variances, log_weights, thresholds, full):
    cp = _cupy()
    with _on_device(_device_id(F, means)):
        Fd = _to_cupy(F)
        dtype = _float_dtype(Fd)
        Fd = Fd.astype(dtype, copy=False)
        M = _to_cupy(means, dtype)
        var = _to_cupy(variances, np.float64)
        lw = _to_cupy(log_weights, np.float64)
        thr = _to_cupy(thresholds, np.float64)
        n, d = Fd.shape
        if d < 1:  # the kernel reads the class parameters only inside the dimension loop
            raise ValueError("gaussian_loglik on the cupy backend needs at least one dimension "
                             "(features have d = 0)")
        n_classes = M.shape[0]
        full = bool(full)
        L = cp.empty((n, n_classes), dtype=dtype) if full else None
        row_max = cp.empty(n, dtype=dtype)
        row_argmax = cp.empty(n, dtype=np.int64)
        row_lse = cp.empty(n, dtype=dtype)
        all_below = cp.empty(n, dtype=np.bool_)
        if n:
            bq = _ROWS_PER_BLOCK[dtype]
            stage = bq * (TILE_ROWS + 1) if full else 0  # elements of L, in dtype
            # The class parameters and the class tile (and the rows, _rows_smem) are double
            # for either dtype; only the staged slab of L has the output's dtype.
            fixed = (_CLASS_PARAMS * TILE_ROWS * 8 + TILE_ROWS * TILE_DIMS * ACC_DTYPE.itemsize
                     + stage * dtype.itemsize)
            _, smem_optin = _device_info(cp.cuda.Device().id)
            rows, resident = _rows_smem(bq, d, smem_optin - fixed)
            smem = fixed + rows
            kernel = _loader.load_module("gaussian_cuda").get_function(
                f"gaussian_{SUFFIX[dtype]}")
            _launch(kernel, (_blocks(n, bq),), (bq,), (
                Fd, M, var, lw, thr, np.int64(n), np.int32(n_classes), np.int32(d),
                np.int32(full), np.int32(resident), L if full else NULL, row_max, row_argmax,
                row_lse, all_below,
            ), shared_mem=smem)
        return (_result(L, F), _result(row_max, F), _result(row_argmax, F),
                _result(row_lse, F), _result(all_below, F))
