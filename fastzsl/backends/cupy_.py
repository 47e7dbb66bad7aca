"""CuPy backend: fastzsl's CUDA kernels (``csrc/cuda/*.cu``), compiled at run time by NVRTC.

Semantics are those of the NumPy reference (:mod:`fastzsl.backends.numpy_`): exact squared
Euclidean distances as sums of squared differences (float accumulation for float32,
double for float64), ties to the lower reference index, LoOP's zero conventions, and
Gaussian reductions in double.

Every kernel wrapper accepts NumPy arrays (copied to the current device; results come back
as NumPy, so the public functions work unchanged), CuPy arrays (computed on their device;
results stay there as CuPy) and torch tensors (CUDA tensors are shared zero-copy; results
come back as torch tensors on the same device).

kNN never holds the n_queries x n_reference matrix: one fused kernel keeps each query's
k best in shared memory while reference tiles stream by. The reference is processed in
chunks of ``REF_CHUNK_ROWS`` rows (by default as many as fit in ``REF_CHUNK_BYTES``; a
NumPy reference is uploaded chunk by chunk), and small query sets also split each chunk
across thread blocks; the per-split and per-chunk top-k lists are merged on the device.

CuPy is imported only when a kernel runs; ``is_available`` says why it cannot.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from functools import lru_cache

import numpy as np

from .. import _cuda
from .._array import array_kind
from ._base import KernelSet

# --- tunables (module constants, so tests can force the rare paths) -----------------------
# Reference rows per kNN launch; None: as many as fit in REF_CHUNK_BYTES.
REF_CHUNK_ROWS: int | None = None
REF_CHUNK_BYTES = 512 * 2**20
# Split a reference chunk over at most this many blocks per query block, each split at
# least MIN_SPLIT_ROWS rows, until about SPLIT_TARGET_BLOCKS_PER_SM blocks per SM run.
MAX_SPLITS = 64  # knn_cuda.cu's MAX_LISTS - 1
MIN_SPLIT_ROWS = 2048
SPLIT_TARGET_BLOCKS_PER_SM = 4
# Top-k lists live in shared memory when a block's lists fit in this budget (the block
# shrinks from 128 to 32 queries for large k first); else in a global scratch buffer.
LIST_SMEM_BYTES = 48 * 1024
FORCE_GLOBAL_LISTS = False
# A block's queries (kNN) or rows (Gaussian), all d dimensions, stay in shared memory for
# the whole launch when they fit in this many bytes; else they are re-staged per tile.
RESIDENT_ROWS_BYTES = 48 * 1024

# Must match the kernels (RS, and DC per dtype).
_RS = 32
_DC = {np.dtype(np.float32): 32, np.dtype(np.float64): 16}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
_DEFAULT_SMEM = 48 * 1024
_REDUCE_THREADS = 256  # loop_cuda.cu's REDUCE_THREADS
_ELEMENTWISE_THREADS = 256
_MAX_INDEX = 2**31 - 1 - _RS  # the kNN kernel keeps reference rows as int within a launch

_NULL = np.uintp(0)


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
    cp = _cupy()
    kind = array_kind(x)
    if kind == "torch":
        x = x.detach()
        x = cp.from_dlpack(x.contiguous()) if x.is_cuda else x.numpy()
    elif kind == "numpy":
        x = np.asarray(x)
    return cp.ascontiguousarray(x, dtype=dtype)


def _float_dtype(x) -> np.dtype:
    dtype = np.dtype(x.dtype)
    return dtype if dtype in _SUFFIX else np.dtype(np.float64)


def _result(x, template):
    """Device result ``x`` returned in the kind of ``template`` (NumPy, CuPy or torch)."""
    if x is None:
        return None
    kind = array_kind(template)
    if kind == "cupy":
        return x
    if kind == "torch":
        import torch

        if template.is_cuda:
            return torch.from_dlpack(x)
        return torch.from_numpy(x.get())
    return x.get()


def _blocks(n: int, threads: int) -> int:
    return max(1, (n + threads - 1) // threads)


def _launch(kernel, grid, block, args, shared_mem=0):
    if shared_mem > _DEFAULT_SMEM:
        kernel.max_dynamic_shared_size_bytes = int(shared_mem)
    kernel(grid, block, args, shared_mem=int(shared_mem))


# --- kNN ---------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _device_info(device_id: int) -> tuple[int, int]:
    """(streaming multiprocessors, opt-in shared memory per block in bytes) of a device."""
    attributes = _cupy().cuda.Device(device_id).attributes
    return (int(attributes["MultiProcessorCount"]),
            int(attributes.get("MaxSharedMemoryPerBlockOptin", _DEFAULT_SMEM)))


def _rows_smem(bq: int, d: int, dtype: np.dtype, smem_left: int):
    """(bytes, resident?) of a block's query/row tile in shared memory."""
    dc = _DC[dtype]
    d_pad = -(-d // dc) * dc
    resident = bq * d_pad * dtype.itemsize
    if resident <= min(RESIDENT_ROWS_BYTES, smem_left):
        return resident, True
    return bq * (dc + 1) * dtype.itemsize, False


def _knn_layout(k: int, d: int, dtype: np.dtype, smem_optin: int):
    """(threads per block, dynamic shared memory bytes, queries resident?, lists global?)."""
    size, dc = dtype.itemsize, _DC[dtype]
    ref_tile = _RS * dc * size

    def lists(bq):
        return bq * k * (size + 4)

    bq, list_bytes, global_lists = 128, 0, True
    if not FORCE_GLOBAL_LISTS:
        for candidate in (128, 64, 32):
            if lists(candidate) <= LIST_SMEM_BYTES:
                bq, list_bytes, global_lists = candidate, lists(candidate), False
                break
        else:
            if ref_tile + 32 * (dc + 1) * size + lists(32) <= smem_optin:
                bq, list_bytes, global_lists = 32, lists(32), False
    rows, resident = _rows_smem(bq, d, dtype, smem_optin - ref_tile - list_bytes)
    return bq, ref_tile + rows + list_bytes, resident, global_lists


def _n_splits(n_q: int, n_rows: int, bq: int, n_sm: int) -> int:
    query_blocks = _blocks(n_q, bq)
    target = SPLIT_TARGET_BLOCKS_PER_SM * n_sm
    if query_blocks >= target:
        return 1
    wanted = -(-target // query_blocks)
    return max(1, min(MAX_SPLITS, wanted, n_rows // max(1, MIN_SPLIT_ROWS)))


def _ref_chunk_rows(d: int, itemsize: int) -> int:
    rows = REF_CHUNK_ROWS if REF_CHUNK_ROWS is not None else REF_CHUNK_BYTES // max(1, d * itemsize)
    return int(max(1, min(rows, _MAX_INDEX)))


def _knn_device(Q, reference, k: int, self_offset: int):
    """Exact kNN of CuPy queries Q against ``reference`` (CuPy or host), on the device."""
    cp = _cupy()
    dtype = np.dtype(Q.dtype)
    n_q, d = Q.shape
    n_r = reference.shape[0]
    D_out = cp.empty((n_q, k), dtype=dtype)
    I_out = cp.empty((n_q, k), dtype=np.int64)
    if n_q == 0:
        return D_out, I_out
    if k > n_r:
        raise ValueError(f"k={k} is larger than the reference ({n_r} rows)")

    n_sm, smem_optin = _device_info(cp.cuda.Device().id)
    bq, smem, resident, global_lists = _knn_layout(k, d, dtype, smem_optin)
    if global_lists and bq * k > 2**31 - 1:
        raise ValueError(f"k={k} is too large for the cupy backend's kNN kernel")
    module = _cuda.load_module("knn_cuda")
    kernel = module.get_function(f"knn_{_SUFFIX[dtype]}")
    merge = module.get_function(f"knn_merge_{_SUFFIX[dtype]}")

    query_blocks = _blocks(n_q, bq)
    chunk = _ref_chunk_rows(d, dtype.itemsize)
    starts = list(range(0, n_r, chunk))
    state = None  # (D, I) of the chunks so far
    for c0 in starts:
        c1 = min(c0 + chunk, n_r)
        R = _to_cupy(reference[c0:c1], dtype)
        n_rows = c1 - c0
        splits = _n_splits(n_q, n_rows, bq, n_sm)
        span = -(-n_rows // splits)
        only = state is None and splits == 1
        if only and c1 == n_r:  # one launch covers everything: write the answer directly
            part_d, part_i = D_out, I_out
        else:
            part_d = cp.empty((splits, n_q, k), dtype=dtype)
            part_i = cp.empty((splits, n_q, k), dtype=np.int64)
        if global_lists:
            scratch_d = cp.empty(splits * query_blocks * bq * k, dtype=dtype)
            scratch_i = cp.empty(splits * query_blocks * bq * k, dtype=np.int32)
        else:
            scratch_d = scratch_i = _NULL
        self_on = self_offset >= 0
        _launch(kernel, (query_blocks, splits), (bq,), (
            Q, R, np.int64(n_q), np.int64(n_rows), np.int32(d), np.int32(k),
            np.int64(self_offset - c0 if self_on else 0), np.int32(self_on),
            np.int64(span), np.int64(c0), np.int32(resident), part_d, part_i, scratch_d,
            scratch_i,
        ), shared_mem=smem)
        if only:
            state = (D_out, I_out) if part_d is D_out else (part_d[0], part_i[0])
            continue
        last = c1 == n_r
        new_d = D_out if last else cp.empty((n_q, k), dtype=dtype)
        new_i = I_out if last else cp.empty((n_q, k), dtype=np.int64)
        prev_d, prev_i = state if state is not None else (_NULL, _NULL)
        _launch(merge, (_blocks(n_q, 128),), (128,), (
            prev_d, prev_i, np.int32(state is not None), part_d, part_i, np.int32(splits),
            np.int64(n_q), np.int32(k), new_d, new_i,
        ))
        state = (new_d, new_i)
    if state[0] is not D_out:  # the last chunk was an "only" launch into part buffers
        D_out[...] = state[0]
        I_out[...] = state[1]
    return D_out, I_out


def knn(queries, reference, k, self_offset):
    with _on_device(_device_id(queries, reference)):
        Q = _to_cupy(queries)
        Q = Q.astype(_float_dtype(Q), copy=False)
        ref = reference
        if array_kind(ref) == "torch":
            ref = _to_cupy(ref)
        D, I = _knn_device(Q, ref, int(k), int(self_offset))
        return _result(D, queries), _result(I, queries)


# --- LoOP --------------------------------------------------------------------------------


def _pdist(module, D, extent):
    cp = _cupy()
    n, k = D.shape
    pdist = cp.empty(n, dtype=np.float64)
    if n:
        kernel = module.get_function(f"loop_pdist_{_SUFFIX[np.dtype(D.dtype)]}")
        _launch(kernel, (_blocks(n, _ELEMENTWISE_THREADS),), (_ELEMENTWISE_THREADS,),
                (D, np.int64(n), np.int32(k), np.float64(extent), pdist))
    return pdist


def _plof(module, pdist, I, ref_pdist, ev_override):
    cp = _cupy()
    n, k = I.shape
    plof = cp.empty(n, dtype=np.float64)
    if n:
        use_override = not math.isnan(ev_override)
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
    parts = min(1024, _blocks(n, _REDUCE_THREADS))
    part_sum = cp.empty(parts, dtype=np.float64)
    part_count = cp.empty(parts, dtype=np.int64)
    _launch(module.get_function("loop_nplof_partial"), (parts,), (_REDUCE_THREADS,),
            (plof, np.int64(n), part_sum, part_count))
    total = cp.empty(1, dtype=np.float64)
    count = cp.empty(1, dtype=np.int64)
    _launch(module.get_function("loop_nplof_final"), (1,), (_REDUCE_THREADS,),
            (part_sum, part_count, np.int32(parts), total, count))
    total, count = float(total.get()[0]), int(count.get()[0])
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
        module = _cuda.load_module("loop_cuda")
        Dd, Id = _graph(D, I)
        pdist = _pdist(module, Dd, extent)
        plof = _plof(module, pdist, Id, pdist, math.nan)
        nplof = _nplof(module, plof, extent)
        prob = _probability(module, plof, nplof)
        return _result(pdist, D), _result(plof, D), nplof, _result(prob, D)


def loop_score(D, I, ref_pdist, nplof, extent, ev_override):
    with _on_device(_device_id(D, I, ref_pdist)):
        module = _cuda.load_module("loop_cuda")
        Dd, Id = _graph(D, I)
        ref = _to_cupy(ref_pdist, np.float64)
        pdist = _pdist(module, Dd, extent)
        plof = _plof(module, pdist, Id, ref, float(ev_override))
        return _result(_probability(module, plof, float(nplof)), D)


# --- Gaussian ----------------------------------------------------------------------------


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
        n_classes = M.shape[0]
        full = bool(full)
        L = cp.empty((n, n_classes), dtype=dtype) if full else None
        row_max = cp.empty(n, dtype=dtype)
        row_argmax = cp.empty(n, dtype=np.int64)
        row_lse = cp.empty(n, dtype=dtype)
        all_below = cp.empty(n, dtype=np.bool_)
        if n:
            bq = 128 if dtype == np.float32 else 64
            stage = bq * (_RS + 1) if full else 0  # elements
            fixed = 4 * _RS * 8 + (_RS * _DC[dtype] + stage) * dtype.itemsize
            _, smem_optin = _device_info(cp.cuda.Device().id)
            rows, resident = _rows_smem(bq, d, dtype, smem_optin - fixed)
            smem = fixed + rows
            kernel = _cuda.load_module("gaussian_cuda").get_function(
                f"gaussian_{_SUFFIX[dtype]}")
            _launch(kernel, (_blocks(n, bq),), (bq,), (
                Fd, M, var, lw, thr, np.int64(n), np.int32(n_classes), np.int32(d),
                np.int32(full), np.int32(resident), L if full else _NULL, row_max, row_argmax,
                row_lse, all_below,
            ), shared_mem=smem)
        return (_result(L, F), _result(row_max, F), _result(row_argmax, F),
                _result(row_lse, F), _result(all_below, F))


KERNELS = KernelSet(
    name="cupy",
    device="cuda",
    knn=knn,
    loop_fit=loop_fit,
    loop_score=loop_score,
    gaussian_loglik=gaussian_loglik,
)

_INSTALL = "pip install 'fastzsl[gpu]' (CuPy for your CUDA version) on a machine with a CUDA GPU"
_NO_DEVICE = "the cupy backend needs a CUDA GPU and its driver"


def is_available():
    """(True, "") when CuPy imports and sees a CUDA device, else (False, what to install)."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CuPy that cannot find its CUDA libraries
        return False, f"cupy is not importable ({exc}); {_INSTALL}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"no CUDA device is visible to cupy ({exc}); {_NO_DEVICE}"
    if count < 1:
        return False, f"no CUDA device is visible to cupy; {_NO_DEVICE}"
    return True, ""
