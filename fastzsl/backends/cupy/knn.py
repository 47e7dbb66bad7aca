"""Exact kNN on the GPU (``csrc/cuda/knn_cuda.cu``).

The n_queries x n_reference matrix is never held: one fused kernel keeps each query's k
best in shared memory while reference tiles stream by. The reference is processed in
chunks of ``REF_CHUNK_ROWS`` rows (by default as many as fit in ``REF_CHUNK_BYTES``; a
NumPy reference is uploaded chunk by chunk, unless ``prepare`` uploaded it once for an
index), and small query sets also split each chunk across thread blocks; the per-split
and per-chunk top-k lists are merged on the device.

Distances are double sums for float32 input too, and the kernel's lists, the per-split and
per-chunk lists and the merges hold them as double; a float32 answer is rounded from them
once, at the end (as the NumPy reference rounds its double sums), so the order and ties
are those of the double distances. For float32 input the kernel screens on FP32 sums (at
twice the FP64 rate) and recomputes in double every pair its proven bound cannot rule out
of a query's list (``csrc/cuda/knn_cuda.cu``), so the lists hold the same doubles.
"""
from __future__ import annotations

import numpy as np

from ..._array import array_kind
from . import _loader, knn_twopass
from ._launch import (NULL, SUFFIX, _blocks, _cupy, _device_id, _device_info, _float_dtype,
                      _launch, _on_device, _result, _rows_smem, _to_cupy)
from ._loader import ACC_DTYPE, KNN_MAX_SPLITS, MAX_BLOCK_THREADS, TILE_DIMS, TILE_ROWS

# --- tunables (module constants, so tests can force the rare paths) -----------------------
# Reference rows per kNN launch; None: as many as fit in REF_CHUNK_BYTES.
REF_CHUNK_ROWS: int | None = None
REF_CHUNK_BYTES = 512 * 2**20
# Split a reference chunk over at most KNN_MAX_SPLITS blocks per query block, each split
# at least MIN_SPLIT_ROWS rows, until about SPLIT_TARGET_BLOCKS_PER_SM blocks per SM run.
MIN_SPLIT_ROWS = 2048
SPLIT_TARGET_BLOCKS_PER_SM = 4
# Top-k lists live in shared memory when a block's lists fit in this budget (the block
# shrinks from 128 to 32 queries for large k first); else in a global scratch buffer.
LIST_SMEM_BYTES = 48 * 1024
FORCE_GLOBAL_LISTS = False
# The most bytes of global top-k scratch one launch may use (lists in global memory only);
# larger query sets run in several launches of fewer queries.
SCRATCH_BYTES = 1 << 30
# The largest host reference an index uploads whole (prepare); larger ones stream by
# in chunks of REF_CHUNK_BYTES at every search.
PREPARE_MAX_BYTES = 8 << 30

_MERGE_THREADS = 128
_MAX_INDEX = 2**31 - 1 - TILE_ROWS  # the kernel keeps reference rows as int within a launch


def _knn_layout(k: int, d: int, smem_optin: int, dtype=ACC_DTYPE):
    """(threads per block, dynamic shared memory bytes, queries resident?, lists global?).

    The tiles and the staged queries have the input's dtype (float32 input is screened on
    float sums, then recomputed in double where it may matter: knn_cuda.cu); the lists'
    distances are double (``ACC_DTYPE``) for either."""
    size, dc = np.dtype(dtype).itemsize, TILE_DIMS
    ref_tile = TILE_ROWS * dc * size

    def lists(bq):
        return bq * k * (ACC_DTYPE.itemsize + 4)

    bq, list_bytes, global_lists = MAX_BLOCK_THREADS, 0, True
    if not FORCE_GLOBAL_LISTS:
        for candidate in (MAX_BLOCK_THREADS, 64, 32):
            if lists(candidate) <= LIST_SMEM_BYTES:
                bq, list_bytes, global_lists = candidate, lists(candidate), False
                break
        else:
            if ref_tile + 32 * (dc + 1) * size + lists(32) <= smem_optin:
                bq, list_bytes, global_lists = 32, lists(32), False
    rows, resident = _rows_smem(bq, d, smem_optin - ref_tile - list_bytes, size)
    return bq, ref_tile + rows + list_bytes, resident, global_lists


def _n_splits(n_q: int, n_rows: int, bq: int, n_sm: int) -> int:
    query_blocks = _blocks(n_q, bq)
    target = SPLIT_TARGET_BLOCKS_PER_SM * n_sm
    if query_blocks >= target:
        return 1
    wanted = -(-target // query_blocks)
    return max(1, min(KNN_MAX_SPLITS, wanted, n_rows // max(1, MIN_SPLIT_ROWS)))


def _ref_chunk_rows(d: int, itemsize: int) -> int:
    rows = REF_CHUNK_ROWS if REF_CHUNK_ROWS is not None else REF_CHUNK_BYTES // max(1, d * itemsize)
    return int(max(1, min(rows, _MAX_INDEX)))


def _knn_device(Q, reference, k: int, self_offset: int):
    """Exact kNN of CuPy queries Q against ``reference`` (CuPy or host), on the device."""
    if k < 1:  # the kernel's list insertion would write before the list
        raise ValueError(f"k={k}: the number of neighbours must be at least 1")
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
    bq, smem, resident, global_lists = _knn_layout(k, d, smem_optin, dtype)
    if global_lists and bq * k > 2**31 - 1:
        raise ValueError(f"k={k} is too large for the cupy backend's kNN kernel")
    module = _loader.load_module("knn_cuda")
    kernel = module.get_function(f"knn_{SUFFIX[dtype]}")
    # Merges read double lists; the last one writes the answer in the input's dtype, the
    # others keep the carried state in double.
    merge_out = module.get_function(f"knn_merge_{SUFFIX[dtype]}")
    merge_acc = module.get_function(f"knn_merge_{SUFFIX[ACC_DTYPE]}")
    direct = dtype == ACC_DTYPE  # the kernel's double lists are the answer's dtype

    query_blocks = _blocks(n_q, bq)
    if global_lists:
        per_block = KNN_MAX_SPLITS * bq * k * (ACC_DTYPE.itemsize + 4)  # scratch, worst case
        max_rows = max(1, SCRATCH_BYTES // per_block) * bq
        if n_q > max_rows:  # fewer queries per launch (the scratch stays capped), same answer
            for q0 in range(0, n_q, max_rows):
                q1 = min(q0 + max_rows, n_q)
                D_out[q0:q1], I_out[q0:q1] = _knn_device(
                    Q[q0:q1], reference, k, self_offset + q0 if self_offset >= 0 else -1)
            return D_out, I_out
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
        if only and c1 == n_r and direct:  # one launch covers everything: the answer
            part_d, part_i = D_out, I_out
        else:
            part_d = cp.empty((splits, n_q, k), dtype=ACC_DTYPE)
            part_i = cp.empty((splits, n_q, k), dtype=np.int64)
        if global_lists:
            scratch_d = cp.empty(splits * query_blocks * bq * k, dtype=ACC_DTYPE)
            scratch_i = cp.empty(splits * query_blocks * bq * k, dtype=np.int32)
        else:
            scratch_d = scratch_i = NULL
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
        new_d = D_out if last else cp.empty((n_q, k), dtype=ACC_DTYPE)
        new_i = I_out if last else cp.empty((n_q, k), dtype=np.int64)
        prev_d, prev_i = state if state is not None else (NULL, NULL)
        _launch(merge_out if last else merge_acc, (_blocks(n_q, _MERGE_THREADS),), (_MERGE_THREADS,), (
            prev_d, prev_i, np.int32(state is not None), part_d, part_i, np.int32(splits),
            np.int64(n_q), np.int32(k), new_d, new_i,
        ))
        state = (new_d, new_i)
    if state[0] is not D_out:  # the last chunk was an "only" launch into part buffers
        D_out[...] = state[0].astype(dtype)  # float32: rounded once from the double sums
        I_out[...] = state[1]
    return D_out, I_out


def knn(queries, reference, k, self_offset, prepared=None):
    """``prepared``: the reference on the device, from :func:`prepare` (None: as given)."""
    ref = reference if prepared is None else prepared
    with _on_device(_device_id(queries, ref)):
        Q = _to_cupy(queries)
        Q = Q.astype(_float_dtype(Q), copy=False)
        if array_kind(ref) == "torch":
            ref = _to_cupy(ref)
        if knn_twopass.chosen(Q, ref, int(k)):  # GEMM screen + exact re-rank; falls back here
            D, I = knn_twopass.knn(Q, ref, int(k), int(self_offset), _knn_device)
        else:
            knn_twopass.LAST_CALL = {"method": "direct", "compute_type": "float64 (direct kernel)",
                                     "queries": int(Q.shape[0]), "overflow_rows": 0,
                                     "phase_s": None}
            D, I = _knn_device(Q, ref, int(k), int(self_offset))
        return _result(D, queries), _result(I, queries)


def prepare(reference):
    """The reference on the device, uploaded once for every search of an index (an index
    searches in chunks of queries; each call would upload a host reference again). A
    reference already there, or too large to hold, is searched as it is (None)."""
    if array_kind(reference) != "numpy" or reference.nbytes > PREPARE_MAX_BYTES:
        return None
    return _to_cupy(reference)


