"""Two-pass exact kNN on the GPU (``csrc/cuda/knn_twopass.cu``), the CPU scheme of
``csrc/cpu/knn_twopass.pxi`` on cuBLAS: a float32 GEMM screen with a proven error bound, then
an exact double re-rank of every candidate the bound leaves open. The answer is the direct
kernel's (``knn_cuda.cu``) bit for bit: same neighbours, same double distances, ties to the
lower index, self excluded; queries whose candidate lists overflow (many near-ties) are
recomputed by the direct kernel, which stays the oracle.

Pass 1: for query tiles x reference tiles (``TILE_Q`` x ``TILE_R`` float32 dot products),
cuBLAS (``gemm_nt``) computes G = R32 . Q32^T and ``twopass_filter`` keeps each query's
L = ``LIST_FACTOR`` k + ``LIST_EXTRA`` smallest lower bounds s - SAFETY B per segment of
the tile's rows, s = |q|^2 + |r|^2 - 2 g the screened distance (norms in double): one
launch per tile, blocks of 32 queries x one segment, the lists in shared memory while the
block runs, each thread with ``TWOPASS_ROWS_PER_LANE`` G loads in flight. Pass 2:
``twopass_rerank_*`` takes T = the largest upper bound s + SAFETY B of the k candidates
with the smallest lower bounds, re-ranks exactly every candidate whose lower bound is
<= T, and flags a query whose list may have dropped one.

Per-phase estimates for one 1M x 1M pass, d = 64, k = 20, float32, on one H100/H200 (from
peak rates -- 67 TFLOP/s FP32, 1.7e13 FP64 instr/s, HBM 3.35 / 4.8 TB/s -- not measured;
``benchmarks/gpu_check.sh`` measures them per phase):

* prepare (centre, cast, norms; chunked): ~10 ms.
* GEMM: 1.3e14 FLOP of FP32 SGEMM (pedantic: no tensor cores) at 60-75% of peak: 2.5-3.2 s;
  it writes G, 4 TB (to HBM: 32-128 MiB tiles do not stay in L2 reliably).
* filter: reads G once, 4 TB at ~80% of HBM bandwidth: 1.0-1.5 s; ~6 FP64 instructions per
  pair (0.4 s) overlap with the loads; list insertions, ~L (1 + ln(n / (8 L))) per query
  and segment, one thread per query: ~0.2 s.
* host: 245 x 123 tiles (``TILE_R`` = 8192), ~30 us of Python per tile, hidden behind
  the ~150 us of GPU work per tile.
* re-rank: ~20-50 candidates per query with the FP32 bound: 0.01-0.05 s.
* total: ~3.5-4.7 s per pass (GEMM and filter run one after the other on one stream).

With ``COMPUTE_TYPE = "3xtf32"`` (the fused kernel) the GEMM and filter phases become one:

* 3 x 1.3e14 FLOP of TF32 mma.sync at 50-65% of the 495 TFLOP/s dense peak: 1.2-1.6 s;
  the epilogue, ~8 FP64 instructions per pair (1e12 pairs / 1.7e13 per s): ~0.5 s,
  partly overlapped; list insertions as above, ~0.2 s; no G traffic. Each 32-query block
  reads its segment of R: 31k query blocks x 256 MB = 8 TB through L2; the blocks resident
  together (consecutive blockIdx.x, one segment) stream the same rows at about the same
  time, so most reads should hit L2 -- if they do not, HBM caps the kernel at ~2 s. A wider
  window (c ~6x) gives ~40-60 candidates per query: re-rank ~0.05 s.
* total: ~1.5-2.5 s per pass. This first version stages operands with plain loads and
  synchronises per 64-row phase (no cp.async double buffering): the upper end is likelier.

The screen's compute type is chosen here (``COMPUTE_TYPE``), never taken from CuPy's
process-wide setting (``cupy.matmul`` runs TF32 when ``CUPY_TF32=1``, plain FP32
otherwise), and the bound below is proven for each:

* "fp32": ``gemm_nt`` calls cuBLAS ``gemmEx`` with ``CUBLAS_COMPUTE_32F_PEDANTIC`` (FP32
  products and sums, no reduced-precision path whatever the handle's math mode), then the
  filter kernel, per tile.
* "3xtf32": ``twopass_fused_3xtf32`` computes the dot products on tensor cores
  (``mma.sync.m16n8k8`` TF32) with each float32 input split as x = hi + lo + e (hi, lo
  TF32, |e| <= 2^-22 |x|) and g = lo.hi' + hi.lo' + hi.hi', and filters them in its
  epilogue: pass 1 in one launch, G never written.

(Plain TF32 would need a window ~500x the FP32 one: on clustered data it holds a whole
cluster and nearly every query falls back; it is not offered.)

The error bound B. Let e(q, r) be the direct kernel's double distance, Qn, Rn the double
squared norms, Rmax = max Rn, d the dimension, u = 2^-24, u64 = 2^-53, eta = u (each
float64 input rounded once to float32), gamma = (d + 1) u / (1 - (d + 1) u) (FP32
products and their sum, rounded to nearest, in any order, split-K included), and
alpha = 2 FLT_MIN (subnormals flushed to zero). Then |s - e| <= B(q, r) for every pair, with

    B(q, r) = c (Qn + Rn) + a(q),   c = c1 + 8 (d + 6) u64,   c1 = (1 + eta)^2 (1 + gamma) - 1,
    a(q)    = 5 alpha sqrt(2 d (Qn + Rmax)) + 8 d alpha,

for "fp32", and for "3xtf32"

    c1 = (1 + eta)^2 (1 + 4 * 2^-22 + (1 + 2^-9) gamma3) - 1,  a(q) three times the above,
    gamma3 = n v / (1 - n v),  n = 3 d + 1,  v = 2^-23,

because per dimension q r - (lo.hi' + hi.lo' + hi.hi') = lo.lo' + (hi + lo) e' + e (hi' +
lo') + e e', where |hi| <= (1 + 2^-11) |x|, |lo| <= 2^-11 (1 + 2^-11) |x| (rounding to
nearest) and |e| <= 2^-22 |x|: the four terms are at most 2^-22 (1 + 2^-10), twice
2^-22 (1 + 2^-9) and 2^-44, times |q_t r_t|, together <= 4 * 2^-22 |q_t r_t|, and summed
over t <= 4 * 2^-22 |q||r|; the
products of TF32 values are exact in float, and the 3 d of them plus C are added with a
relative error of at most v = 2^-23 per addition (truncation, as tensor cores align and
add; any order), on a sum of magnitudes <= (1 + 2^-9) |q||r|; subnormal products that a
tensor core flushes lose at most alpha each (hence 3 a). At d = 64, c ~ 2.4e-5, ~6x the
FP32 bound. Either way |g - q.r| <= c1 |q||r| + (abs. terms) and 2 |q||r| <= Qn + Rn; the 8 (d + 6) u64
term covers the double norms, the two additions of s, e's own rounding against the exact
distance (both <= (d + 2) u64 2 (Qn + Rn)) and the centring (below: the double
differences q - mu are rounded once, which moves e by at most 4 u64 (Qn + Rn)). Here q,
r, Qn, Rn are of the centred vectors q - mu, r - mu (mu: the reference mean, in double).
For "fp32" at d = 64, c ~ 4.0e-6: the window s +- SAFETY B is about +-8e-6 of Qn + Rn
wide.
Why it is exact: k rows have e <= s + B <= T, so the true k-th distance is <= T, and
every row of the answer has s - SAFETY B <= s - B <= e <= T. A segment list that is not full holds every
row of its segment; a full one whose largest lower bound exceeds T dropped only rows
above it; a full one whose largest is <= T may have dropped an answer row: the query
overflows to the direct kernel. The bound is per pair, so one far reference row (large
Rn) widens only its own window.

Inputs whose squared norms exceed ``NORM_LIMIT`` (float32 products could overflow), or
are not finite, go to the direct kernel whole.
"""
from __future__ import annotations

import math

import numpy as np

from ..._array import array_kind
from . import _loader
from ._launch import SUFFIX, _blocks, _cupy, _launch, _to_cupy
from ._loader import (TWOPASS_FILTER_THREADS, TWOPASS_MAX_SEGMENTS, TWOPASS_ROWS_PER_LANE,
                      TWOPASS_THREADS)

# --- switch and tunables (module constants, so tests can force each path) -----------------
# "auto": twopass when n_q * n_ref * d >= TWOPASS_MIN_WORK and k <= TWOPASS_MAX_K, else the
# direct kernel; "direct" / "twopass" force one.
KNN_METHOD = "auto"
TWOPASS_MIN_WORK = 2**33  # ~8.6e9 (pair, dimension) terms: below, launches and GEMM tiles cost more
TWOPASS_MAX_K = 256  # the re-rank's insertion is O(k) per candidate, O(k^2) per query
TILE_Q = 4096
TILE_R = 8192  # G tiles of TILE_Q x TILE_R float32: 128 MiB
SEGMENTS = 8  # lists per query per tile (the filter's blocks: TILE_Q / 32 x SEGMENTS)
# Dynamic shared memory of a filter block (opt-in above 48 KB; H100/H200 allow 227 KB).
FILTER_SMEM_BYTES = 96 * 1024
LIST_FACTOR = 2
LIST_EXTRA = 32
SAFETY = 2.0
NORM_LIMIT = 1e30  # |q||r| stays far below FLT_MAX, and every float64 element fits float32
# Rows are centred and cast (float64 temporaries) this many bytes of float64 at a time, so
# device memory stays near the reference (its copy, when on the host, plus the float32
# screen copy), whatever its size.
PREP_CHUNK_BYTES = 256 * 2**20
# The screen's compute types (the module docstring proves a bound for each): "fp32",
# cuBLAS CUBLAS_COMPUTE_32F_PEDANTIC then the filter kernel, one launch per tile; "3xtf32",
# the fused tensor-core kernel (sm_80 or newer, rows that fit FUSED_SMEM_BYTES; otherwise
# "fp32" runs, and LAST_CALL says so).
COMPUTE_TYPES = ("fp32", "3xtf32")
COMPUTE_TYPE = "fp32"
FUSED_SMEM_BYTES = 160 * 1024
# Per-phase CUDA-event times in LAST_CALL["phase_s"] (events around every tile: for
# benchmarks, not for production runs).
TIME_PHASES = False

# The last two-pass call: its compute type, query count, how many queries fell back to the
# direct kernel (also LAST_OVERFLOW_ROWS), and per-phase seconds when TIME_PHASES is on.
# The backend's kNN entry sets method "direct" here when it does not run the two-pass path.
LAST_CALL: dict = {}
LAST_OVERFLOW_ROWS = 0

_U32 = 2.0**-24
_U_TC = 2.0**-23  # a tensor core's addition: truncated, not rounded to nearest
_U64 = 2.0**-53
_FLT_MIN = float(np.finfo(np.float32).tiny)
_ONE = np.ones(1, np.float32)  # gemmEx's alpha and beta, host pointers
_ZERO = np.zeros(1, np.float32)


def chosen(Q, reference, k: int) -> bool:
    """Whether the backend's kNN entry runs the two-pass scheme for this problem."""
    if KNN_METHOD == "direct":
        return False
    n_q, d = Q.shape
    n_r = reference.shape[0]
    if n_q == 0 or d < 1 or k < 1 or k > n_r or n_r >= 2**31:  # int32 list indices
        return False
    if _filter_layout(_list_length(k, n_r)) is None:
        return False
    if KNN_METHOD == "twopass":
        return True
    if KNN_METHOD != "auto":
        raise ValueError(f"KNN_METHOD={KNN_METHOD!r}: expected 'auto', 'direct' or 'twopass'")
    return k <= TWOPASS_MAX_K and n_q * n_r * d >= TWOPASS_MIN_WORK


def error_bound(qn, rmax: float, d: int, compute_type: str = "fp32"):
    """(c, a): |screened - exact distance| <= c (Qn + Rn) + a[q] for every pair (module
    docstring) when the screen runs ``compute_type``; ``qn`` the queries' double squared
    norms, ``rmax`` the largest Rn."""
    cp = _cupy()
    alpha = 2 * _FLT_MIN
    a = 5 * alpha * cp.sqrt(2.0 * d * (qn + rmax)) + 8 * d * alpha
    if compute_type == "fp32":
        gamma = (d + 1) * _U32 / (1 - (d + 1) * _U32)
        c1 = (1 + _U32) ** 2 * (1 + gamma) - 1
    elif compute_type == "3xtf32":
        n = 3 * d + 1  # additions into one output: 3 products per dimension, and C
        gamma = n * _U_TC / (1 - n * _U_TC)
        c1 = (1 + _U32) ** 2 * (1 + 4 * 2.0**-22 + (1 + 2.0**-9) * gamma) - 1
        a = 3 * a  # three products per term can each lose a subnormal
    else:
        raise ValueError(f"compute type {compute_type!r}: expected one of {COMPUTE_TYPES}")
    return c1 + 8 * (d + 6) * _U64, a


def gemm_nt(A, B, out, pedantic: bool = True):
    """out = A . B^T in float32 on cuBLAS (``gemmEx``), A (m, d), B (n, d), out (m, n), all
    C-contiguous float32. ``pedantic``: CUBLAS_COMPUTE_32F_PEDANTIC (plain FP32 whatever
    the handle's math mode: the screen's bound is proven for it), else CUBLAS_COMPUTE_32F
    (FP32 SGEMM as ``cupy.matmul`` runs it without CUPY_TF32, for baselines)."""
    cp = _cupy()
    cublas, f32 = cp.cuda.cublas, cp.cuda.runtime.CUDA_R_32F
    m, d = A.shape
    n = B.shape[0]
    for x in (A, B, out):
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            raise ValueError("gemm_nt takes C-contiguous float32 arrays")
    if B.shape[1] != d or out.shape != (m, n):
        raise ValueError(f"gemm_nt: shapes {A.shape} . {B.shape}^T -> {out.shape}")
    compute = cublas.CUBLAS_COMPUTE_32F_PEDANTIC if pedantic else cublas.CUBLAS_COMPUTE_32F
    # Column-major view: out^T (n x m) = B (d x n, transposed) . A^T (d x m).
    cublas.gemmEx(cp.cuda.get_cublas_handle(), cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_N,
                  int(n), int(m), int(d), _ONE.ctypes.data, B.data.ptr, f32, int(d),
                  A.data.ptr, f32, int(d), _ZERO.ctypes.data, out.data.ptr, f32, int(n),
                  compute, cublas.CUBLAS_GEMM_DEFAULT)
    return out


def _chunk_rows(d: int) -> int:
    return max(1, PREP_CHUNK_BYTES // max(1, 8 * d))


def _device_copy(X, dtype):
    """``X`` on the device as ``dtype``: a device array as it is, a host one uploaded in
    chunks (no whole-array float64 or staging copy)."""
    cp = _cupy()
    if array_kind(X) == "cupy":
        return cp.ascontiguousarray(X, dtype=dtype)
    out = cp.empty(X.shape, dtype=dtype)
    step = _chunk_rows(X.shape[1])
    for c0 in range(0, X.shape[0], step):
        out[c0:c0 + step] = _to_cupy(X[c0:c0 + step], dtype)
    return out


def _mean(X):
    """The column mean of device ``X`` in double, summed chunk by chunk."""
    cp = _cupy()
    total = cp.zeros(X.shape[1], dtype=np.float64)
    step = _chunk_rows(X.shape[1])
    for c0 in range(0, X.shape[0], step):
        total += X[c0:c0 + step].astype(np.float64).sum(axis=0)
    return total / X.shape[0]


def _centred(X, mu):
    """(float32 X - mu, double squared norms of X - mu), chunk by chunk."""
    cp = _cupy()
    n = X.shape[0]
    X32 = cp.empty(X.shape, dtype=np.float32)
    norms = cp.empty(n, dtype=np.float64)
    step = _chunk_rows(X.shape[1])
    for c0 in range(0, n, step):
        c1 = min(c0 + step, n)
        Xc = X[c0:c1].astype(np.float64) - mu
        norms[c0:c1] = (Xc * Xc).sum(axis=1)
        X32[c0:c1] = Xc.astype(np.float32)
    return X32, norms


def _list_length(k: int, n_r: int) -> int:
    return min(max(LIST_FACTOR * k + LIST_EXTRA, k), n_r)


def _filter_layout(L: int):
    """(queries per filter block, its dynamic shared memory bytes): the most queries, a
    power of two up to 32, whose lists (L) and phase buffers fit in FILTER_SMEM_BYTES;
    None if not even one query's do."""
    per_query_buffer = TWOPASS_FILTER_THREADS * TWOPASS_ROWS_PER_LANE  # B x qb, any qb
    for qb in (32, 16, 8, 4, 2, 1):
        smem = 12 * (L * qb + per_query_buffer) + 8 * qb
        if smem <= FILTER_SMEM_BYTES:
            return qb, smem
    return None  # too long: chosen() sends the problem to the direct kernel


FUSED_QUERIES = 32  # queries per block of the fused kernel (its FUSED_QB)
_FUSED_ROWS = 64  # reference rows per phase (its FUSED_RB)


def _fused_smem(L: int, d: int) -> int:
    """Dynamic shared memory of a fused block: lists, phase buffer, cut-offs (12 B per
    entry), and the TF32 hi/lo rows of its queries and of a phase (padded rows)."""
    qb, rb = FUSED_QUERIES, _FUSED_ROWS
    ld = -(-d // 8) * 8 + 4
    return 12 * (L * qb + rb * qb) + 8 * qb + 8 * ld * (qb + rb)


def _fused_runs(k: int, n_r: int, d: int) -> bool:
    """Whether the fused 3xTF32 kernel can run here: tensor cores (sm_80+), rows that fit."""
    cp = _cupy()
    major = int(cp.cuda.Device().compute_capability) // 10
    return major >= 8 and _fused_smem(_list_length(k, n_r), d) <= FUSED_SMEM_BYTES


class _Phases:
    """CUDA-event seconds per phase, when TIME_PHASES is on (else every call is free)."""

    def __init__(self, cp):
        self.cp, self.on, self.pairs = cp, TIME_PHASES, {}

    def mark(self):
        if not self.on:
            return None
        event = self.cp.cuda.Event()
        event.record()
        return event

    def add(self, phase, start, end):
        if self.on:
            self.pairs.setdefault(phase, []).append((start, end))

    def seconds(self):
        if not self.on:
            return None
        self.cp.cuda.get_current_stream().synchronize()
        return {phase: sum(self.cp.cuda.get_elapsed_time(a, b) for a, b in pairs) / 1e3
                for phase, pairs in self.pairs.items()}


def knn(Q, reference, k: int, self_offset: int, direct):
    """(D, I) of CuPy queries Q against ``reference`` (device or host: a host reference is
    uploaded in chunks); ``direct(Q, ref, k, self_offset)`` is the direct kernel's entry,
    used for overflowed queries and out-of-range input."""
    global LAST_CALL, LAST_OVERFLOW_ROWS
    cp = _cupy()
    dtype = np.dtype(Q.dtype)
    n_q, d = Q.shape
    compute = COMPUTE_TYPE
    if compute not in COMPUTE_TYPES:
        raise ValueError(f"COMPUTE_TYPE={compute!r}: expected one of {COMPUTE_TYPES}")
    if compute == "3xtf32" and not _fused_runs(k, reference.shape[0], d):
        compute = "fp32"
    LAST_CALL = {"method": "twopass", "compute_type": compute, "queries": n_q,
                 "overflow_rows": None, "phase_s": None}
    phases = _Phases(cp)
    t0 = phases.mark()
    R = _device_copy(reference, dtype)
    n_r = R.shape[0]
    f64 = np.float64
    # The screen sees centred copies: distances do not change, norms (and so the margins,
    # which scale with them) shrink to the spread of the data, not its offset.
    mu = _mean(R)
    Q32, qn = _centred(Q, mu)
    R32, rn = _centred(R, mu)
    rmax, qmax = float(rn.max()), float(qn.max())
    if not (rmax <= NORM_LIMIT and qmax <= NORM_LIMIT):  # also NaN / inf, in either
        LAST_CALL.update(method="direct (norms out of range)", overflow_rows=n_q)
        LAST_OVERFLOW_ROWS = n_q
        return direct(Q, R, k, self_offset)
    c, a = error_bound(qn, rmax, d, compute)
    w = np.float64(SAFETY * c)
    a = cp.ascontiguousarray(SAFETY * a, dtype=f64)
    t1 = phases.mark()
    phases.add("prepare", t0, t1)

    n_seg = max(1, min(SEGMENTS, TWOPASS_MAX_SEGMENTS))
    L = _list_length(k, n_r)
    list_s = cp.full((n_seg, L, n_q), math.inf, dtype=f64)
    list_i = cp.full((n_seg, L, n_q), -1, dtype=np.int32)
    module = _loader.load_module("knn_twopass")
    self_on = self_offset >= 0
    if compute == "3xtf32":  # pass 1 in one launch
        e0 = phases.mark()
        _launch(module.get_function("twopass_fused_3xtf32"),
                (_blocks(n_q, FUSED_QUERIES), n_seg), (TWOPASS_FILTER_THREADS,), (
                    Q32, R32, np.int64(n_q), np.int64(n_r), np.int32(d), qn, rn, w, a,
                    np.int64(self_offset if self_on else 0), np.int32(self_on), np.int32(L),
                    list_s, list_i), shared_mem=_fused_smem(L, d))
        phases.add("fused_screen_filter", e0, phases.mark())
    else:
        _screen_tiles(Q32, R32, qn, rn, w, a, self_offset, L, list_s, list_i, module, phases)
    return _finish(Q, R, k, self_offset, direct, module, L, n_seg, list_s, list_i, qn, rn, w,
                   a, phases)


def _screen_tiles(Q32, R32, qn, rn, w, a, self_offset, L, list_s, list_i, module, phases):
    """Pass 1 with the FP32 GEMM: cuBLAS per tile, then the filter kernel."""
    cp = _cupy()
    n_q, n_r = Q32.shape[0], R32.shape[0]
    n_seg = list_s.shape[0]
    filt = module.get_function("twopass_filter")
    qb, smem = _filter_layout(L)
    self_on = self_offset >= 0
    # One tile buffer for every GEMM (the filter reads what the GEMM just wrote; the cache
    # lines of a reused buffer may still be in L2, a fresh one's never are).
    G_buf = cp.empty(min(TILE_Q, n_q) * min(TILE_R, n_r), dtype=np.float32)
    for q0 in range(0, n_q, TILE_Q):
        q1 = min(q0 + TILE_Q, n_q)
        Qt = Q32[q0:q1]
        for r0 in range(0, n_r, TILE_R):
            r1 = min(r0 + TILE_R, n_r)
            G = G_buf[:(r1 - r0) * (q1 - q0)].reshape(r1 - r0, q1 - q0)  # (rows, queries)
            e0 = phases.mark()
            gemm_nt(R32[r0:r1], Qt, G)
            e1 = phases.mark()
            segs = max(1, min(n_seg, r1 - r0))
            _launch(filt, (_blocks(q1 - q0, qb), segs), (TWOPASS_FILTER_THREADS,), (
                G, np.int64(q1 - q0), np.int64(r1 - r0), np.int64(q0), np.int64(r0), qn, rn,
                w, a, np.int64(self_offset if self_on else 0), np.int32(self_on), np.int32(L),
                np.int64(n_q), list_s, list_i, np.int32(qb)), shared_mem=smem)
            e2 = phases.mark()
            phases.add("gemm", e0, e1)
            phases.add("filter", e1, e2)


def _finish(Q, R, k, self_offset, direct, module, L, n_seg, list_s, list_i, qn, rn, w, a,
            phases):
    """Pass 2: the exact re-rank, then the overflowed queries on the direct kernel."""
    global LAST_OVERFLOW_ROWS
    cp = _cupy()
    f64 = np.float64
    dtype = np.dtype(Q.dtype)
    n_q, d = Q.shape
    out_d = cp.empty((n_q, k), dtype=f64)
    out_i = cp.empty((n_q, k), dtype=np.int64)
    overflow = cp.empty(n_q, dtype=np.int32)
    t2 = phases.mark()
    _launch(module.get_function(f"twopass_rerank_{SUFFIX[dtype]}"),
            (_blocks(n_q, TWOPASS_THREADS),), (TWOPASS_THREADS,), (
                Q, R, np.int32(d), np.int64(n_q), np.int32(k), np.int32(L), np.int32(n_seg),
                list_s, list_i, qn, rn, w, a, out_d, out_i, overflow))
    phases.add("rerank", t2, phases.mark())
    D = out_d if dtype == f64 else out_d.astype(dtype)  # float32: rounded once, as direct
    rows = cp.flatnonzero(overflow)
    LAST_OVERFLOW_ROWS = n_over = int(rows.shape[0])
    LAST_CALL["overflow_rows"] = n_over
    if n_over:
        t3 = phases.mark()
        _fall_back(Q, R, k, self_offset, direct, rows, D, out_i)
        phases.add("fallback", t3, phases.mark())
    LAST_CALL["phase_s"] = phases.seconds()
    return D, out_i


def _fall_back(Q, R, k, self_offset, direct, rows, D, out_i):
    """Rows ``rows`` of (D, out_i) recomputed by the direct kernel, in one launch."""
    cp = _cupy()
    Qo = cp.ascontiguousarray(Q[rows])
    if self_offset < 0:  # against the device copy
        D[rows], out_i[rows] = direct(Qo, R, k, -1)
        return
    # Self excluded, queries scattered: their k + 1 nearest with self included, then
    # self dropped (k < n_r here: a list overflows only when full, L >= k entries out
    # of the n_r - 1 rows other than self). The direct kernel orders by (distance,
    # index), so the k left are exactly the k it gives with self excluded.
    Dd, Id = direct(Qo, R, k + 1, -1)
    is_self = Id == (rows + self_offset)[:, None]
    at = cp.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    cols = cp.arange(k)[None, :]
    cols = cols + (cols >= at[:, None])
    D[rows] = cp.take_along_axis(Dd, cols, axis=1)
    out_i[rows] = cp.take_along_axis(Id, cols, axis=1)
