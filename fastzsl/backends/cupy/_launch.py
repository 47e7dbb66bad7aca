"""What every kernel wrapper of the cupy backend shares: arrays in and out, devices, launches.

Arrays come in as NumPy (copied to the current device), CuPy (used on their device) or
torch tensors (CUDA tensors shared zero-copy); :func:`_result` hands a device result back
in the kind of the caller's input. Both go through ``fastzsl._array``, the one place
that converts array kinds.
"""
from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache

import numpy as np

from ..._array import array_kind, as_device_array, like, on_device, to_host
from ._loader import ACC_DTYPE, TILE_DIMS

# A block's queries (kNN) or rows (Gaussian), all d dimensions, stay in shared memory for
# the whole launch when they fit in this many bytes; else they are re-staged per tile.
RESIDENT_ROWS_BYTES = 48 * 1024

SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
DEFAULT_SMEM = 48 * 1024  # dynamic shared memory a launch gets without opting in
NULL = np.uintp(0)  # a null device pointer argument


def _cupy():
    import cupy

    return cupy


# --- arrays in and out -------------------------------------------------------------------


def _device_id(*arrays):
    """The CUDA device of the first CuPy array or CUDA tensor among ``arrays``, else None."""
    for x in arrays:
        kind = array_kind(x)
        if kind == "cupy":
            return x.device.id
        if kind == "torch" and x.is_cuda:
            return x.device.index if x.device.index is not None else 0
    return None


def _on_device(device_id):
    return nullcontext() if device_id is None else _cupy().cuda.Device(device_id)


def _to_cupy(x, dtype=None):
    """``x`` as a C-contiguous CuPy array on the current device (no copy where possible)."""
    if array_kind(x) == "torch":
        x = x.detach()
    x = as_device_array(x) if on_device(x) else np.asarray(to_host(x))
    return _cupy().ascontiguousarray(x, dtype=dtype)


def _float_dtype(x) -> np.dtype:
    dtype = np.dtype(x.dtype)
    return dtype if dtype in SUFFIX else np.dtype(np.float64)


def _result(x, template):
    """Device result ``x`` returned in the kind of ``template`` (NumPy, CuPy or torch)."""
    return None if x is None else like(x, template)


# --- launches ----------------------------------------------------------------------------


def _blocks(n: int, threads: int) -> int:
    """Blocks of ``threads`` that cover ``n`` items (at least one)."""
    return max(1, (n + threads - 1) // threads)


def _launch(kernel, grid, block, args, shared_mem=0):
    if shared_mem > DEFAULT_SMEM:
        kernel.max_dynamic_shared_size_bytes = int(shared_mem)
    kernel(grid, block, args, shared_mem=int(shared_mem))


@lru_cache(maxsize=None)
def _device_info(device_id: int) -> tuple[int, int]:
    """(streaming multiprocessors, opt-in shared memory per block in bytes) of a device."""
    attributes = _cupy().cuda.Device(device_id).attributes
    return (int(attributes["MultiProcessorCount"]),
            int(attributes.get("MaxSharedMemoryPerBlockOptin", DEFAULT_SMEM)))


def _rows_smem(bq: int, d: int, smem_left: int, size: int = ACC_DTYPE.itemsize):
    """(bytes, resident?) of a block's ``bq`` query/feature rows in shared memory, staged as
    elements of ``size`` bytes (double, ``ACC_DTYPE``, unless the kernel stages floats)."""
    dc = TILE_DIMS
    d_pad = -(-d // dc) * dc
    resident = bq * d_pad * size
    if resident <= min(RESIDENT_ROWS_BYTES, smem_left):
        return resident, True
    return bq * (dc + 1) * size, False
