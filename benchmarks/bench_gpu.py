"""GPU benchmark of fastzsl's cupy backend (a script, not a pytest module: no test here).

Run on a CUDA machine from the repository root (``benchmarks/gpu_check.sh`` does):

    PYTHONPATH=. python3 benchmarks/bench_gpu.py [--quick|--tiny] [--budget SECONDS]
        [--cases preflight,methods,...] [--append] [--knn-method auto|direct|twopass]

Every result is written as soon as it is taken: ``OUT/gpu.json`` and ``OUT/gpu.md`` are
rewritten after each timing (a run cut short by a timeout keeps every number it took), and
each timing is printed with its value. A case that fails records its error and the next
case still runs (exit status 1). Every timed case is first checked against fastzsl's NumPy
reference or the direct kernel, then timed with CUDA events (median of several runs after
one warm-up; fewer runs when the time budget runs short). Every kNN timing records the
method that ran, the screen's compute type and how many queries fell back to the direct
kernel (``knn_twopass.LAST_CALL``). Cases, in the order they run (float32, synthetic
Gaussian blobs generated on the GPU, d = 64, k = 20):

* ``preflight`` (about a minute): the compile (or cache load) time of every kernel module,
  the compute types in force (the two-pass screen's; ``cupy.matmul``'s for float32, and
  ``CUPY_TF32``), then one 4,096-query x 1M slice of the two-pass kNN, with each screen
  compute type (FP32 cuBLAS + filter; fused 3xTF32), with per-phase CUDA-event times
  (prepare, GEMM, filter or fused, re-rank, fallback) and fallback counts, against the
  direct kernel on the same slice (answers equal bit for bit).
* ``methods``: 100k x 1M, the direct kernel against the two-pass scheme (each compute type).
* ``gaussian``: log-likelihood reductions, n = 4M, C = 1000, against a cuBLAS SGEMM of the
  same shape pinned to FP32 (``CUBLAS_COMPUTE_32F``), and ``cupy.matmul`` (whose compute
  type is recorded: TF32 when ``CUPY_TF32=1``).
* ``knn_loop``: exact kNN + LoOP, N_ref = N_q = 1M -- the reference's own kNN graph (self
  excluded) and LoOP fit, then the queries' kNN and LoOP scores; ``--knn-method`` pins the
  kNN method. Baseline: torch on the same GPU, blocked ``torch.mm`` distances (||q||^2 -
  2 q.r + ||r||^2, float32, TF32 off) + ``torch.topk``, and the same LoOP arithmetic.
* ``big_reference``: 10M references, 2000 queries: the split + merge path (NumPy reference
  on 1 query, float64 brute force on the GPU on 16), then 256 queries against the
  reference on the host (uploaded in chunks).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
EXTENT = 3.0
CASES = ("preflight", "methods", "gaussian", "knn_loop", "big_reference")
MODULES = ("knn_cuda", "knn_twopass", "loop_cuda", "gaussian_cuda")
# Seconds a full-size case needs at the least (estimates for one H100/H200); with less
# budget left it is skipped, and recorded as skipped.
NEEDS_S = {"preflight": 0, "methods": 25, "gaussian": 20, "knn_loop": 100, "big_reference": 45}
SIZES = {
    "full": dict(preflight=(1_000_000, 4096, 64, 20), methods=(1_000_000, 100_000, 64, 20),
                 gaussian=(4_000_000, 1000, 64), knn_loop=(1_000_000, 1_000_000, 64, 20),
                 big_reference=(10_000_000, 2000, 64, 20)),
    "quick": dict(preflight=(200_000, 4096, 64, 20), methods=(200_000, 20_000, 64, 20),
                  gaussian=(400_000, 1000, 64), knn_loop=(100_000, 100_000, 64, 20),
                  big_reference=(1_000_000, 500, 64, 20)),
    "tiny": dict(preflight=(20_000, 512, 20, 7), methods=(20_000, 2000, 20, 7),
                 gaussian=(3000, 40, 20), knn_loop=(3000, 2000, 20, 7),
                 big_reference=(20_000, 300, 20, 7)),
    # The CPU test harness (tests/cuda_host): checks the script; timings mean nothing.
    "tiny-cpu": dict(preflight=(1500, 64, 16, 5), methods=(500, 100, 8, 5),
                     gaussian=(400, 12, 8), knn_loop=(600, 300, 8, 5),
                     big_reference=(3000, 40, 8, 5)),
}


class Budget:
    def __init__(self, seconds):
        self.start = time.perf_counter()
        self.seconds = seconds

    def left(self):
        return self.seconds - (time.perf_counter() - self.start)


def timed(fn, runs, cp, warmup=True):
    """(seconds per run from CUDA events, the last run's output); one untimed warm-up first
    unless ``warmup`` is False (the case already ran, so kernels are compiled)."""
    if warmup:
        fn()
        cp.cuda.Device().synchronize()
    times, out = [], None
    for _ in range(runs):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return times, out


def runs_for(one_run_s, budget_s, most=3):
    """How many runs of one_run_s fit in budget_s (at least 1, at most ``most``)."""
    return int(max(1, min(most, budget_s // max(one_run_s, 1e-9))))


def timed_adaptive(fn, cp, budget_s, most=3):
    """Time one run, then repeat while ``budget_s`` allows (no warm-up: already warm)."""
    times, out = timed(fn, 1, cp, warmup=False)
    extra = runs_for(times[0], budget_s, most) - 1
    if extra > 0:
        more, out = timed(fn, extra, cp, warmup=False)
        times += more
    return times, out


def median(xs):
    return float(np.median(xs)) if xs else float("nan")


def knn_info():
    """The last kNN call: method, screen compute type, queries, fallbacks, phase seconds."""
    from fastzsl.backends.cupy import knn_twopass

    return dict(knn_twopass.LAST_CALL)


def compute_types():
    """The GEMM compute types in force: the two-pass screen's (pinned), cupy.matmul's."""
    from fastzsl.backends.cupy import knn_twopass

    out = {"twopass_screen_default": knn_twopass.COMPUTE_TYPE,
           "twopass_screens": "fp32: cuBLAS gemmEx CUBLAS_COMPUTE_32F_PEDANTIC + filter; "
                              "3xtf32: fused mma.sync TF32 hi/lo kernel",
           "CUPY_TF32": os.environ.get("CUPY_TF32", "(unset)")}
    try:
        from cupy._core import _routines_linalg as linalg

        out["cupy_matmul_float32"] = linalg.compute_type_to_str(linalg.get_compute_type(np.float32))
    except Exception as exc:  # the CPU harness, or a CuPy without these internals
        out["cupy_matmul_float32"] = f"unknown ({type(exc).__name__})"
    return out


class Results:
    """Everything measured so far; ``save`` rewrites OUT/gpu.json and OUT/gpu.md."""

    def __init__(self, out: Path, header: dict, append: bool, log):
        self.out, self.log = out, log
        out.mkdir(parents=True, exist_ok=True)
        path = out / "gpu.json"
        self.data = json.loads(path.read_text()) if append and path.is_file() else {}
        self.data.update(header)
        self.data.setdefault("cases", {})
        self.save()

    def case(self, name, **info):
        case = self.data["cases"][name] = {**info, "times_s": {}, "knn": {}}
        self.save()
        return case

    def timing(self, case, label, times, knn=None):
        case["times_s"][label] = [float(t) for t in times]
        note = ""
        if knn is not None:
            case["knn"][label] = knn
            note = (f"  [{knn.get('method')}, {knn.get('compute_type')}, fell back: "
                    f"{knn.get('overflow_rows')}/{knn.get('queries')}, phases: {knn.get('phase_s')}]")
        self.save()
        self.log(f"  TIME {label}: median {median(times):.4f} s over {len(times)} run(s){note}")

    def save(self):
        self.data["summary"] = summarize(self.data["cases"])
        for name, text in (("gpu.json", json.dumps(self.data, indent=2) + "\n"),
                           ("gpu.md", markdown(self.data))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)


def blobs(cp, n, d, centers, seed, spread=1.0):
    rs = cp.random.RandomState(seed)
    labels = rs.randint(0, centers.shape[0], size=n)
    return (centers[labels] + rs.standard_normal((n, d), dtype=cp.float32) * spread).astype(cp.float32)


def gpu_exact_check(cp, assert_knn_equal, tol, Q, R, D, I, rows, k, exclude_self=False):
    """Rows of (D, I) against float64 sums of squared differences on the GPU, stable order."""
    n_ref = R.shape[0]
    index = cp.arange(n_ref)
    for row in rows:
        q = Q[row].astype(cp.float64)
        d2 = cp.empty(n_ref, dtype=cp.float64)
        for s in range(0, n_ref, 1_000_000):
            diff = R[s:s + 1_000_000].astype(cp.float64) - q
            d2[s:s + 1_000_000] = (diff * diff).sum(1)
        if exclude_self:
            d2[row] = cp.inf
        order = cp.lexsort(cp.stack([index, d2]))[:k]
        assert_knn_equal(D[row:row + 1].get(), I[row:row + 1].get(), d2[order].get()[None],
                         order.get()[None], **tol)



# ------------------------------------------------------------------ torch baseline
def torch_knn(torch, Q, R, k, exclude_self, block=2048):
    """Blocked torch.mm squared distances + torch.topk (float32, no TF32)."""
    n_q = Q.shape[0]
    r2 = (R * R).sum(1)[None, :]
    D = torch.empty((n_q, k), dtype=Q.dtype, device=Q.device)
    I = torch.empty((n_q, k), dtype=torch.int64, device=Q.device)
    for s in range(0, n_q, block):
        q = Q[s:s + block]
        d2 = torch.addmm(r2, q, R.T, beta=1.0, alpha=-2.0)  # ||r||^2 - 2 q.r, one buffer
        d2.add_((q * q).sum(1, keepdim=True))
        if exclude_self:
            rows = torch.arange(q.shape[0], device=Q.device)
            d2[rows, rows + s] = float("inf")
        vals, idx = torch.topk(d2, k, dim=1, largest=False, sorted=True)
        D[s:s + block] = vals.clamp_min_(0)
        I[s:s + block] = idx
    return D, I


def torch_loop(torch, D, I, extent, ref_pdist=None, nplof=None):
    pdist = extent * torch.sqrt(D.double().mean(1))
    ev = (pdist if ref_pdist is None else ref_pdist)[I].mean(1)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=D.device)
    zero = torch.zeros((), dtype=torch.float64, device=D.device)
    plof = torch.where(ev == 0, torch.where(pdist > 0, inf, zero), pdist / ev - 1.0)
    if nplof is None:
        finite = plof[torch.isfinite(plof)]
        nplof = float(extent * torch.sqrt((finite * finite).mean())) if finite.numel() else 0.0
    ratio = plof / (nplof * math.sqrt(2.0)) if nplof > 0 else torch.where(plof > 0, inf, zero)
    return pdist, nplof, torch.erf(ratio).clamp_min(0)



# ------------------------------------------------------------------ cases
class _Method:
    """Pins ``knn_twopass.KNN_METHOD``, its COMPUTE_TYPE and TIME_PHASES inside a ``with``."""

    def __init__(self, method, compute_type=None, phases=False):
        from fastzsl.backends.cupy import knn_twopass

        self.tp, self.method, self.phases = knn_twopass, method, phases
        self.compute_type = compute_type or knn_twopass.COMPUTE_TYPE

    def __enter__(self):
        self.saved = self.tp.KNN_METHOD, self.tp.COMPUTE_TYPE, self.tp.TIME_PHASES
        self.tp.KNN_METHOD, self.tp.COMPUTE_TYPE = self.method, self.compute_type
        self.tp.TIME_PHASES = self.phases

    def __exit__(self, *exc):
        self.tp.KNN_METHOD, self.tp.COMPUTE_TYPE, self.tp.TIME_PHASES = self.saved


def _twopass_labels():
    """(label, compute type) of every two-pass screen: "fastzsl_knn_twopass" is "fp32"."""
    from fastzsl.backends.cupy import knn_twopass

    return [("fastzsl_knn_twopass" + ("" if ct == "fp32" else f"_{ct}"), ct)
            for ct in knn_twopass.COMPUTE_TYPES]


def _data(cp, n_ref, n_q, d, seed):
    centers = cp.random.RandomState(seed).standard_normal((10, d), dtype=cp.float32) * 10
    return blobs(cp, n_ref, d, centers, seed + 1), blobs(cp, n_q, d, centers, seed + 2)


def preflight_case(ctx, n_ref, n_q, d, k):
    """Compile times, compute types, and one two-pass slice with per-phase times."""
    from fastzsl.backends.cupy import _loader

    cp, rec = ctx.cp, ctx.rec
    case = rec.case("preflight", n_ref=n_ref, n_q=n_q, d=d, k=k, dtype="float32",
                    compile_s={}, compute_types=compute_types())
    ctx.log(f"  compute types: {case['compute_types']}")
    for name in MODULES:  # the first load in this process: NVRTC, or CuPy's disk cache
        t0 = time.perf_counter()
        _loader.load_module(name)
        case["compile_s"][name] = time.perf_counter() - t0
        rec.save()
        ctx.log(f"  TIME compile {name}: {case['compile_s'][name]:.2f} s")
    R, Q = _data(cp, n_ref, n_q, d, 20)
    answers = {}
    for label, compute in _twopass_labels():
        with _Method("twopass", compute, phases=True):  # events per tile: phases, not speed
            t, _ = timed(lambda: ctx.K.knn(Q, R, k, -1), 1, cp)
            rec.timing(case, f"{label}_with_phase_events", t, knn_info())
        with _Method("twopass", compute):
            t, answers[label] = timed(lambda: ctx.K.knn(Q, R, k, -1), 2, cp, warmup=False)
            rec.timing(case, label, t, knn_info())
    with _Method("direct"):
        t, (D1, I1) = timed(lambda: ctx.K.knn(Q, R, k, -1), 2, cp)
        rec.timing(case, "fastzsl_knn_direct", t, knn_info())
    same = {label: bool((I1 == I2).all()) and bool((D1 == D2).all())
            for label, (D2, I2) in answers.items()}
    case["correctness"] = {"twopass_equals_direct": all(same.values()), "each": same}
    rec.save()
    assert all(same.values()), f"two-pass kNN differs from the direct kernel: {same}"


def methods_case(ctx, n_ref, n_q, d, k):
    """The direct kernel against the two-pass GEMM scheme (knn_twopass.py) on one problem:
    equal answers (bit for bit), then the time of each and how many queries fell back."""
    cp, rec = ctx.cp, ctx.rec
    case = rec.case("methods", n_ref=n_ref, n_q=n_q, d=d, k=k, dtype="float32")
    R, Q = _data(cp, n_ref, n_q, d, 9)
    answers = {}
    for label, method, compute in [("fastzsl_knn_direct", "direct", None)] + [
            (label, "twopass", compute) for label, compute in _twopass_labels()]:
        with _Method(method, compute):
            t, answers[label] = timed(lambda: ctx.K.knn(Q, R, k, -1), 2, cp)
            rec.timing(case, label, t, knn_info())
    D1, I1 = answers.pop("fastzsl_knn_direct")
    same = {label: bool((I1 == I2).all()) and bool((D1 == D2).all())
            for label, (D2, I2) in answers.items()}
    n_np = 2
    ctx.assert_knn_equal(D1[:n_np].get(), I1[:n_np].get(),
                         *ctx.numpy_.knn(Q[:n_np].get(), R.get(), k, -1),
                         **ctx.TOL[np.dtype(np.float32)])
    case["correctness"] = {"twopass_equals_direct": all(same.values()), "each": same,
                           "rows_vs_numpy": n_np}
    rec.save()
    assert all(same.values()), f"two-pass kNN differs from the direct kernel: {same}"
    ctx.log(f"  two-pass == direct on {n_q:,} x {n_ref:,}")


def gaussian_case(ctx, n, C, d):
    from fastzsl.backends.cupy import knn_twopass

    cp, rec, numpy_ = ctx.cp, ctx.rec, ctx.numpy_
    case = rec.case("gaussian", n=n, C=C, d=d, dtype="float32", compute_types=compute_types())
    centers = cp.random.RandomState(3).standard_normal((C, d), dtype=cp.float32) * 3
    F = blobs(cp, n, d, centers, 4)
    means = centers.astype(cp.float32)
    rs = np.random.default_rng(5)
    variances = cp.asarray(rs.uniform(0.8, 1.2, size=C))
    log_weights = cp.asarray(np.log(rs.dirichlet(np.ones(C))))
    n_check = min(2000, n)
    ref = numpy_.gaussian_loglik(F[:n_check].get(), means.get(), variances.get(),
                                 log_weights.get(), np.full(C, np.inf), True)
    thresholds = cp.asarray(np.median(ref[0], axis=0) + 1e-3)
    ref = numpy_.gaussian_loglik(F[:n_check].get(), means.get(), variances.get(),
                                 log_weights.get(), thresholds.get(), True)
    got = ctx.K.gaussian_loglik(F[:n_check], means, variances, log_weights, thresholds, True)
    tol = ctx.TOL[np.dtype(np.float32)]
    np.testing.assert_allclose(got[0].get(), ref[0], **tol)
    np.testing.assert_allclose(got[1].get(), ref[1], **tol)
    np.testing.assert_array_equal(got[2].get(), ref[2])
    np.testing.assert_allclose(got[3].get(), ref[3], **tol)
    np.testing.assert_array_equal(got[4].get(), ref[4])
    case["correctness"] = {"rows_checked_vs_numpy": n_check}
    got = ref = None
    ctx.log("  Gaussian matches the NumPy reference")
    t, _ = timed(lambda: ctx.K.gaussian_loglik(F, means, variances, log_weights, thresholds,
                                               False), 5, cp)
    rec.timing(case, "fastzsl_gaussian_reductions", t)
    out = cp.empty((n, C), dtype=cp.float32)
    t, _ = timed(lambda: knn_twopass.gemm_nt(F, means, out, pedantic=False), 5, cp)
    rec.timing(case, "cublas_sgemm_fp32_same_shape", t)  # CUBLAS_COMPUTE_32F, no TF32
    out = None
    MT = cp.ascontiguousarray(means.T)
    t, _ = timed(lambda: cp.matmul(F, MT), 5, cp)
    rec.timing(case, "cupy_matmul_same_shape", t)  # compute type: case["compute_types"]
    _ = None
    cp.get_default_memory_pool().free_all_blocks()
    if ctx.budget.left() > NEEDS_S["knn_loop"] * ctx.scale:
        t, _ = timed(lambda: ctx.K.gaussian_loglik(F, means, variances, log_weights,
                                                   thresholds, True), 3, cp)
        rec.timing(case, "fastzsl_gaussian_full_matrix", t)


def knn_loop_case(ctx, n_ref, n_q, d, k):
    cp, rec, K, numpy_, torch = ctx.cp, ctx.rec, ctx.K, ctx.numpy_, ctx.torch
    case = rec.case("knn_loop", n_ref=n_ref, n_q=n_q, d=d, k=k, dtype="float32",
                    extent=EXTENT, knn_method=ctx.knn_method)
    R, Q = _data(cp, n_ref, n_q, d, 0)
    tol = ctx.TOL[np.dtype(np.float32)]
    reserve = NEEDS_S["big_reference"] * ctx.scale  # left for the case after this one

    def share(fraction):
        return max(0.0, (ctx.budget.left() - reserve) * fraction)

    with _Method(ctx.knn_method):
        # The correctness pass (compiles, warms up) is the first timing of each kNN.
        t, (Df, If) = timed(lambda: K.knn(R, R, k, 0), 1, cp, warmup=False)
        rec.timing(case, "fastzsl_knn_fit_graph_first", t, knn_info())
        pdist, plof, nplof, prob_fit = K.loop_fit(Df, If, EXTENT)
        t, (Dq, Iq) = timed(lambda: K.knn(Q, R, k, -1), 1, cp, warmup=False)
        rec.timing(case, "fastzsl_knn_queries_first", t, knn_info())
        prob = K.loop_score(Dq, Iq, pdist, nplof, EXTENT, math.nan)
        # kNN rows: the NumPy reference on a few (slow on the CPU at this size), an exact
        # float64 brute force on the GPU on more.
        R_h, Q_h = R.get(), Q.get()
        n_np = 8 if n_ref >= 500_000 else 32
        ref_q = numpy_.knn(Q_h[:n_np], R_h, k, -1)
        ctx.assert_knn_equal(Dq[:n_np].get(), Iq[:n_np].get(), *ref_q, **tol)
        ctx.assert_knn_equal(Df[:n_np // 2].get(), If[:n_np // 2].get(),
                             *numpy_.knn(R_h[:n_np // 2], R_h, k, 0), **tol)
        n_gpu = 64
        gpu_exact_check(cp, ctx.assert_knn_equal, tol, Q, R, Dq, Iq,
                        range(0, n_q, max(1, n_q // n_gpu)), k)
        gpu_exact_check(cp, ctx.assert_knn_equal, tol, R, R, Df, If,
                        range(0, n_ref, max(1, n_ref // n_gpu)), k, exclude_self=True)
        Df_h, If_h = Df.get(), If.get()
        ref_fit = numpy_.loop_fit(Df_h, If_h, EXTENT)
        for got, want in zip((pdist.get(), plof.get(), nplof, prob_fit.get()), ref_fit):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        ref_prob = numpy_.loop_score(Dq.get(), Iq.get(), ref_fit[0], ref_fit[2], EXTENT, math.nan)
        np.testing.assert_allclose(prob.get(), ref_prob, rtol=1e-10, atol=1e-12)
        case["correctness"] = {
            "knn_rows_checked_vs_numpy": n_np + n_np // 2,
            "knn_rows_checked_vs_gpu_float64": 2 * n_gpu,
            "loop_checked_vs_numpy": "all rows (fit and score, from the GPU graph), rtol 1e-10",
            "fraction_outliers_prob_gt_0.5": float((prob > 0.5).mean()),
        }
        rec.save()
        ctx.log("  fastzsl kNN + LoOP match the NumPy reference")
        Df = If = pdist = plof = prob_fit = Dq = Iq = prob = None  # free the GPU memory
        cp.get_default_memory_pool().free_all_blocks()

        t, (Df, If) = timed_adaptive(lambda: K.knn(R, R, k, 0), cp, share(0.25))
        rec.timing(case, "fastzsl_knn_fit_graph", t, knn_info())
        t, fit = timed(lambda: K.loop_fit(Df, If, EXTENT), 5, cp)
        rec.timing(case, "fastzsl_loop_fit", t)
        pdist, nplof = fit[0], fit[2]
        t, (Dq, Iq) = timed_adaptive(lambda: K.knn(Q, R, k, -1), cp, share(0.3))
        rec.timing(case, "fastzsl_knn_queries", t, knn_info())
        t, _ = timed(lambda: K.loop_score(Dq, Iq, pdist, nplof, EXTENT, math.nan), 5, cp)
        rec.timing(case, "fastzsl_loop_score", t)
        Df = If = Dq = Iq = fit = pdist = None
        cp.get_default_memory_pool().free_all_blocks()

    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
        Rt, Qt = torch.from_dlpack(R), torch.from_dlpack(Q)
        Dt, It = torch_knn(torch, Qt[:n_np], Rt, k, False)  # also warms cuBLAS up
        Dr, Ir = ref_q
        same = np.mean([len(set(a) & set(b)) / k for a, b in zip(It.cpu().numpy(), Ir)])
        case["correctness"]["torch_recall_vs_numpy"] = float(same)
        case["correctness"]["torch_max_abs_distance_error"] = float(
            np.abs(Dt.cpu().numpy() - Dr).max())
        if same < 0.95:
            raise AssertionError(f"torch baseline recall {same} < 0.95: baseline broken")
        t, (Dt, It) = timed_adaptive(lambda: torch_knn(torch, Rt, Rt, k, True), cp, share(0.4))
        rec.timing(case, "torch_knn_fit_graph", t)
        t, tfit = timed(lambda: torch_loop(torch, Dt, It, EXTENT), 5, cp)
        rec.timing(case, "torch_loop_fit", t)
        tpdist, tnplof = tfit[0], tfit[1]
        t, (Dtq, Itq) = timed_adaptive(lambda: torch_knn(torch, Qt, Rt, k, False), cp, share(0.6))
        rec.timing(case, "torch_knn_queries", t)
        t, _ = timed(lambda: torch_loop(torch, Dtq, Itq, EXTENT, tpdist, tnplof), 5, cp)
        rec.timing(case, "torch_loop_score", t)
        Dt = It = Dtq = Itq = Rt = Qt = tfit = tpdist = None
        torch.cuda.empty_cache()


def big_reference_case(ctx, n_ref, n_q, d, k):
    cp, rec, K, numpy_ = ctx.cp, ctx.rec, ctx.K, ctx.numpy_
    case = rec.case("big_reference", n_ref=n_ref, n_q=n_q, d=d, k=k, dtype="float32",
                    knn_method=ctx.knn_method)
    R, Q = _data(cp, n_ref, n_q, d, 6)
    tol = ctx.TOL[np.dtype(np.float32)]
    with _Method(ctx.knn_method):
        t, (D_d, I_d) = timed(lambda: K.knn(Q, R, k, -1), 3, cp)
        rec.timing(case, "fastzsl_knn_device_reference", t, knn_info())
        D, I = D_d.get(), I_d.get()
        # Exact float64 brute force on the GPU for 16 queries, the NumPy reference for one.
        n_gpu = min(16, n_q)
        gpu_exact_check(cp, ctx.assert_knn_equal, tol, Q, R, D_d, I_d, range(n_gpu), k)
        R_h = R.get()
        n_np = 1
        ctx.assert_knn_equal(D[:n_np], I[:n_np], *numpy_.knn(Q[:n_np].get(), R_h, k, -1), **tol)
        ctx.log(f"  {n_ref:,}-reference kNN matches the NumPy reference ({n_np} row) and a "
                f"float64 GPU brute force ({n_gpu} rows)")
        # The same search with the reference on the host: uploaded in chunks (both methods).
        R = D_d = I_d = None
        cp.get_default_memory_pool().free_all_blocks()
        n_host = min(256, n_q)
        Q_small = Q[:n_host]
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        Dh, Ih = K.knn(Q_small, R_h, k, -1)
        end.record()
        end.synchronize()
        rec.timing(case, "fastzsl_knn_host_reference_incl_upload",
                   [cp.cuda.get_elapsed_time(start, end) / 1e3], knn_info())
        case["host_reference_queries"] = n_host
        ctx.assert_knn_equal(Dh.get(), Ih.get(), D[:n_host], I[:n_host], **tol)
    case["correctness"] = {"rows_vs_numpy": n_np, "rows_vs_gpu_float64": n_gpu,
                           "host_reference_path_equal": True}
    rec.save()


CASE_FUNCTIONS = {"preflight": preflight_case, "methods": methods_case,
                  "gaussian": gaussian_case, "knn_loop": knn_loop_case,
                  "big_reference": big_reference_case}


# ------------------------------------------------------------------ report
def _t(case, name):
    return median(case.get("times_s", {}).get(name, []))


def summarize(cases):
    s = {}
    p = cases.get("preflight", {})
    if p.get("times_s"):
        s["preflight_twopass_s"] = _t(p, "fastzsl_knn_twopass")
        s["preflight_direct_s"] = _t(p, "fastzsl_knn_direct")
        s["preflight_direct_over_twopass"] = s["preflight_direct_s"] / s["preflight_twopass_s"]
        if "fastzsl_knn_twopass_3xtf32" in p["times_s"]:
            s["preflight_twopass_3xtf32_s"] = _t(p, "fastzsl_knn_twopass_3xtf32")
        info = p.get("knn", {}).get("fastzsl_knn_twopass", {})
        s["preflight_fallback_rows"] = info.get("overflow_rows")
        if p.get("n_q"):  # per 1M queries, scaled linearly from the slice (an extrapolation)
            s["preflight_twopass_s_per_1M_queries_extrapolated"] = (
                s["preflight_twopass_s"] * 1e6 / p["n_q"])
    m = cases.get("methods", {})
    if "fastzsl_knn_twopass" in m.get("times_s", {}):
        s["knn_direct_s"] = _t(m, "fastzsl_knn_direct")
        s["knn_twopass_s"] = _t(m, "fastzsl_knn_twopass")
        s["knn_direct_over_twopass"] = s["knn_direct_s"] / s["knn_twopass_s"]
        if "fastzsl_knn_twopass_3xtf32" in m["times_s"]:
            s["knn_twopass_3xtf32_s"] = _t(m, "fastzsl_knn_twopass_3xtf32")
            s["knn_direct_over_twopass_3xtf32"] = s["knn_direct_s"] / s["knn_twopass_3xtf32_s"]
    g = cases.get("gaussian", {})
    if "cupy_matmul_same_shape" in g.get("times_s", {}):
        red = _t(g, "fastzsl_gaussian_reductions")
        s["gaussian_reductions_s"] = red
        s["gaussian_reductions_over_sgemm_fp32"] = red / _t(g, "cublas_sgemm_fp32_same_shape")
        s["gaussian_reductions_over_cupy_matmul"] = red / _t(g, "cupy_matmul_same_shape")
        s["gaussian_pairs_per_s"] = g["n"] * g["C"] / red
    kl = cases.get("knn_loop", {})
    t = {name: median(v) for name, v in kl.get("times_s", {}).items()}
    for who in ("fastzsl", "torch"):
        parts = [f"{who}_knn_fit_graph", f"{who}_loop_fit", f"{who}_knn_queries", f"{who}_loop_score"]
        if all(part in t for part in parts):
            s[f"{who}_knn_loop_total_s"] = sum(t[part] for part in parts)
            pairs = kl["n_ref"] * kl["n_ref"] + kl["n_q"] * kl["n_ref"]
            s[f"{who}_distances_per_s"] = pairs / (t[f"{who}_knn_fit_graph"] + t[f"{who}_knn_queries"])
    if "torch_knn_loop_total_s" in s and "fastzsl_knn_loop_total_s" in s:
        s["torch_over_fastzsl_knn_loop"] = s["torch_knn_loop_total_s"] / s["fastzsl_knn_loop_total_s"]
        s["torch_over_fastzsl_knn_queries"] = t["torch_knn_queries"] / t["fastzsl_knn_queries"]
    b = cases.get("big_reference", {})
    if "fastzsl_knn_device_reference" in b.get("times_s", {}):
        tb = _t(b, "fastzsl_knn_device_reference")
        s["big_reference_knn_s"] = tb
        s["big_reference_distances_per_s"] = b["n_ref"] * b["n_q"] / tb
    return s


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def markdown(data):
    lines = [f"# fastzsl GPU benchmark: {data.get('device')}", "",
             f"{data.get('date')}; CUDA runtime {data.get('cuda_runtime')}, CuPy "
             f"{data.get('cupy')}, torch {data.get('torch')}, Python {data.get('python')}; "
             f"sizes: {data.get('sizes')}. Median of CUDA-event timings after a warm-up; "
             "every case checked first (NumPy reference, or the direct kernel).", ""]
    for name in CASES:
        case = data["cases"].get(name)
        if case is None:
            continue
        info = {k: v for k, v in case.items() if k not in ("times_s", "knn", "correctness")}
        lines += [f"## {name}", "", f"- {_fmt(info)}", "",
                  "| step | runs | median (s) | method | compute type | fell back | phases (s) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for label, times in case.get("times_s", {}).items():
            knn = case.get("knn", {}).get(label, {})
            fell = (f"{knn.get('overflow_rows')}/{knn.get('queries')}" if knn else "")
            lines.append(f"| {label} | {len(times)} | {median(times):.4f} | "
                         f"{knn.get('method', '')} | {knn.get('compute_type', '')} | {fell} | "
                         f"{_fmt(knn.get('phase_s') or '')} |")
        if "correctness" in case:
            lines.append(f"\n- correctness: {json.dumps(case['correctness'])}")
        lines.append("")
    if data.get("summary"):
        lines += ["## summary", ""] + [f"- {k}: {_fmt(v)}" for k, v in data["summary"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--budget", type=float, default=330.0,
                        help="seconds for this run; repetitions shrink, late cases are skipped")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated, run in this order (default: {','.join(CASES)})")
    parser.add_argument("--append", action="store_true",
                        help="add to OUT/gpu.json instead of starting it afresh")
    parser.add_argument("--knn-method", default="auto", choices=("auto", "direct", "twopass"),
                        help="kNN method of the knn_loop and big_reference cases")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}: expected some of {CASES}")

    import cupy as cp

    from fastzsl.backends import cupy as cupy_backend
    from fastzsl.backends import numpy_
    from fastzsl.testing import TOL, assert_knn_equal

    budget = Budget(args.budget)

    def log(msg):
        print(f"[{time.perf_counter() - budget.start:7.1f}s] {msg}", flush=True)

    ok, reason = cupy_backend.is_available()
    if not ok:
        raise SystemExit(f"bench_gpu: backend cupy unavailable: {reason}")
    try:
        import torch
        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    fake = getattr(cp, "IS_FAKE", False)
    size = "tiny-cpu" if args.tiny and fake else "tiny" if args.tiny else (
        "quick" if args.quick else "full")
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    header = {
        "device": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cupy": cp.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "python": platform.python_version(),
        "sizes": "tiny, CPU execution (tests/cuda_host): timings mean nothing" if fake and args.tiny
        else size,
    }
    rec = Results(args.out, header, args.append, log)
    log(f"device {name}; writing {args.out / 'gpu.json'} after every timing")
    ctx = SimpleNamespace(cp=cp, K=cupy_backend.KERNELS, numpy_=numpy_, torch=torch,
                          assert_knn_equal=assert_knn_equal, TOL=TOL, rec=rec, log=log,
                          budget=budget, knn_method=args.knn_method,
                          scale=1.0 if size == "full" else 0.0)
    failed = False
    for case in cases:
        need = NEEDS_S[case] * ctx.scale
        if budget.left() < need:
            rec.data["cases"][case] = {"skipped": f"{budget.left():.0f} s of budget left, "
                                                  f"the case needs about {need:.0f} s"}
            rec.save()
            log(f"{case}: skipped (budget)")
            continue
        log(f"{case}: {SIZES[size][case]}")
        try:
            CASE_FUNCTIONS[case](ctx, *SIZES[size][case])
        except Exception:
            failed = True
            error = traceback.format_exc()
            rec.data["cases"].setdefault(case, {})["error"] = error[-4000:]
            rec.save()
            log(f"{case}: FAILED\n{error}")
        cp.get_default_memory_pool().free_all_blocks()
    for key, value in rec.data["summary"].items():
        print(f"  {key}: {_fmt(value)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
