"""GPU benchmark of fastzsl's cupy backend (a script, not a pytest module: no test here).

Run on a CUDA machine from the repository root (``benchmarks/gpu_check.sh`` does):

    PYTHONPATH=. python3 benchmarks/bench_gpu.py [--quick] [--budget SECONDS]

Every timed case is first checked against fastzsl's NumPy reference on a subset, then timed
with CUDA events (median of several runs after one warm-up; fewer runs when the time
budget runs short). Cases, float32, synthetic Gaussian blobs generated on the GPU:

* exact kNN + LoOP: N_ref = N_q = 1M, d = 64, k = 20 -- the reference's own kNN graph
  (self excluded) and LoOP fit, then the queries' kNN and LoOP scores. Baseline: torch on
  the same GPU, blocked ``torch.mm`` distances (||q||^2 - 2 q.r + ||r||^2, float32, TF32
  off) + ``torch.topk``, and the same LoOP arithmetic in torch.
* Gaussian log-likelihood reductions, n = 4M, C = 1000, d = 64, vs ``cupy.matmul`` of the
  same shape (the (n, d) x (d, C) product alone, which writes the (n, C) matrix).
* 10M references, 2000 queries, k = 20: correctness of the split + merge and host-chunk
  paths at that size (NumPy reference on 2 queries, float64 brute force on the GPU on 16).

Writes ``benchmarks/results/gpu.json`` and ``benchmarks/results/gpu.md``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
EXTENT = 3.0


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
def knn_loop_case(cp, torch, K, numpy_, assert_knn_equal, TOL, n_ref, n_q, d, k, budget, log):
    out = {"n_ref": n_ref, "n_q": n_q, "d": d, "k": k, "dtype": "float32", "extent": EXTENT}
    centers = cp.random.RandomState(0).standard_normal((10, d), dtype=cp.float32) * 10
    R = blobs(cp, n_ref, d, centers, 1)
    Q = blobs(cp, n_q, d, centers, 2)
    tol = TOL[np.dtype(np.float32)]

    def fastzsl_pipeline():
        Df, If = K.knn(R, R, k, 0)
        pdist, plof, nplof, prob_fit = K.loop_fit(Df, If, EXTENT)
        Dq, Iq = K.knn(Q, R, k, -1)
        prob = K.loop_score(Dq, Iq, pdist, nplof, EXTENT, math.nan)
        return Df, If, pdist, plof, nplof, prob_fit, Dq, Iq, prob

    # Correctness first, on the full-size outputs.
    t0 = time.perf_counter()
    Df, If, pdist, plof, nplof, prob_fit, Dq, Iq, prob = fastzsl_pipeline()
    cp.cuda.Device().synchronize()
    log(f"  first fastzsl pipeline (with compile): {time.perf_counter() - t0:.1f} s")
    # kNN rows: the NumPy reference on a few (slow on the CPU at this size), an exact
    # float64 brute force on the GPU on more.
    R_h, Q_h = R.get(), Q.get()
    n_np = 8 if n_ref >= 500_000 else 32
    ref_q = numpy_.knn(Q_h[:n_np], R_h, k, -1)
    assert_knn_equal(Dq[:n_np].get(), Iq[:n_np].get(), *ref_q, **tol)
    assert_knn_equal(Df[:n_np // 2].get(), If[:n_np // 2].get(),
                     *numpy_.knn(R_h[:n_np // 2], R_h, k, 0), **tol)
    n_gpu = 64
    gpu_exact_check(cp, assert_knn_equal, tol, Q, R, Dq, Iq, range(0, n_q, n_q // n_gpu), k)
    gpu_exact_check(cp, assert_knn_equal, tol, R, R, Df, If, range(0, n_ref, n_ref // n_gpu), k,
                    exclude_self=True)
    Df_h, If_h = Df.get(), If.get()
    ref_fit = numpy_.loop_fit(Df_h, If_h, EXTENT)
    for got, want in zip((pdist.get(), plof.get(), nplof, prob_fit.get()), ref_fit):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    ref_prob = numpy_.loop_score(Dq.get(), Iq.get(), ref_fit[0], ref_fit[2], EXTENT, math.nan)
    np.testing.assert_allclose(prob.get(), ref_prob, rtol=1e-10, atol=1e-12)
    out["correctness"] = {
        "knn_rows_checked_vs_numpy": n_np + n_np // 2,
        "knn_rows_checked_vs_gpu_float64": 2 * n_gpu,
        "loop_checked_vs_numpy": "all rows (fit and score, from the GPU graph), rtol 1e-10",
        "fraction_outliers_prob_gt_0.5": float((prob > 0.5).mean()),
    }
    log("  fastzsl kNN + LoOP match the NumPy reference")
    Df = If = pdist = plof = prob_fit = Dq = Iq = prob = None  # free the GPU memory
    cp.get_default_memory_pool().free_all_blocks()

    # Timings of the parts (the correctness pass compiled and warmed everything up). Leave
    # about 150 s for torch, the Gaussian and the 10M case.
    times = {}

    def share(fraction):
        return max(0.0, (budget.left() - 150.0) * fraction)

    times["fastzsl_knn_fit_graph"], (Df, If) = timed_adaptive(
        lambda: K.knn(R, R, k, 0), cp, share(0.25))
    times["fastzsl_loop_fit"], fit = timed(lambda: K.loop_fit(Df, If, EXTENT), 5, cp)
    pdist, nplof = fit[0], fit[2]
    times["fastzsl_knn_queries"], (Dq, Iq) = timed_adaptive(
        lambda: K.knn(Q, R, k, -1), cp, share(0.3))
    times["fastzsl_loop_score"], _ = timed(
        lambda: K.loop_score(Dq, Iq, pdist, nplof, EXTENT, math.nan), 5, cp)
    Df = If = Dq = Iq = fit = pdist = None
    cp.get_default_memory_pool().free_all_blocks()
    log("  fastzsl timed")

    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
        Rt, Qt = torch.from_dlpack(R), torch.from_dlpack(Q)
        Dt, It = torch_knn(torch, Qt[:n_np], Rt, k, False)  # also warms cuBLAS up
        Dr, Ir = ref_q
        same = np.mean([len(set(a) & set(b)) / k for a, b in zip(It.cpu().numpy(), Ir)])
        out["correctness"]["torch_recall_vs_numpy"] = float(same)
        out["correctness"]["torch_max_abs_distance_error"] = float(
            np.abs(Dt.cpu().numpy() - Dr).max())
        if same < 0.95:
            raise AssertionError(f"torch baseline recall {same} < 0.95: baseline broken")
        times["torch_knn_fit_graph"], (Dt, It) = timed_adaptive(
            lambda: torch_knn(torch, Rt, Rt, k, True), cp, share(0.4))
        times["torch_loop_fit"], tfit = timed(lambda: torch_loop(torch, Dt, It, EXTENT), 5, cp)
        tpdist, tnplof = tfit[0], tfit[1]
        times["torch_knn_queries"], (Dtq, Itq) = timed_adaptive(
            lambda: torch_knn(torch, Qt, Rt, k, False), cp, share(0.6))
        times["torch_loop_score"], _ = timed(
            lambda: torch_loop(torch, Dtq, Itq, EXTENT, tpdist, tnplof), 5, cp)
        Dt = It = Dtq = Itq = Rt = Qt = tfit = tpdist = None
        torch.cuda.empty_cache()
        log("  torch timed")
    out["times_s"] = times
    return out


def gaussian_case(cp, K, numpy_, TOL, n, C, d, budget, log):
    out = {"n": n, "C": C, "d": d, "dtype": "float32"}
    centers = cp.random.RandomState(3).standard_normal((C, d), dtype=cp.float32) * 3
    F = blobs(cp, n, d, centers, 4)
    means = centers.astype(cp.float32)
    rs = np.random.default_rng(5)
    variances = cp.asarray(rs.uniform(0.8, 1.2, size=C))
    log_weights = cp.asarray(np.log(rs.dirichlet(np.ones(C))))
    n_check = 2000
    ref = numpy_.gaussian_loglik(F[:n_check].get(), means.get(), variances.get(),
                                 log_weights.get(), np.full(C, np.inf), True)
    thresholds = cp.asarray(np.median(ref[0], axis=0) + 1e-3)
    ref = numpy_.gaussian_loglik(F[:n_check].get(), means.get(), variances.get(),
                                 log_weights.get(), thresholds.get(), True)
    got = K.gaussian_loglik(F[:n_check], means, variances, log_weights, thresholds, True)
    tol = TOL[np.dtype(np.float32)]
    np.testing.assert_allclose(got[0].get(), ref[0], **tol)
    np.testing.assert_allclose(got[1].get(), ref[1], **tol)
    np.testing.assert_array_equal(got[2].get(), ref[2])
    np.testing.assert_allclose(got[3].get(), ref[3], **tol)
    np.testing.assert_array_equal(got[4].get(), ref[4])
    out["correctness"] = {"rows_checked_vs_numpy": n_check}
    log("  Gaussian matches the NumPy reference")
    times = {}
    times["fastzsl_gaussian_reductions"], _ = timed(
        lambda: K.gaussian_loglik(F, means, variances, log_weights, thresholds, False), 5, cp)
    MT = cp.ascontiguousarray(means.T)
    times["cupy_matmul_same_shape"], _ = timed(lambda: cp.matmul(F, MT), 5, cp)
    _ = None
    cp.get_default_memory_pool().free_all_blocks()
    if budget.left() > 60:
        times["fastzsl_gaussian_full_matrix"], _ = timed(
            lambda: K.gaussian_loglik(F, means, variances, log_weights, thresholds, True), 3, cp)
        _ = None
    cp.get_default_memory_pool().free_all_blocks()
    out["times_s"] = times
    return out


def big_reference_case(cp, K, numpy_, assert_knn_equal, TOL, n_ref, n_q, d, k, log):
    out = {"n_ref": n_ref, "n_q": n_q, "d": d, "k": k, "dtype": "float32"}
    centers = cp.random.RandomState(6).standard_normal((10, d), dtype=cp.float32) * 10
    R = blobs(cp, n_ref, d, centers, 7)
    Q = blobs(cp, n_q, d, centers, 8)
    t, (D_d, I_d) = timed(lambda: K.knn(Q, R, k, -1), 3, cp)
    times = {"fastzsl_knn_device_reference": t}
    D, I = D_d.get(), I_d.get()
    tol = TOL[np.dtype(np.float32)]
    # Exact float64 brute force on the GPU for 16 queries, the NumPy reference for one.
    n_gpu = 16
    gpu_exact_check(cp, assert_knn_equal, tol, Q, R, D_d, I_d, range(n_gpu), k)
    R_h = R.get()
    n_np = 1
    assert_knn_equal(D[:n_np], I[:n_np], *numpy_.knn(Q[:n_np].get(), R_h, k, -1), **tol)
    log(f"  {n_ref:,}-reference kNN matches the NumPy reference ({n_np} rows) and a float64 GPU brute force "
        f"({n_gpu} rows)")
    # The same search with the reference on the host: uploaded in chunks.
    R = None
    cp.get_default_memory_pool().free_all_blocks()
    Q_small = Q[:256]
    t0 = time.perf_counter()
    Dh, Ih = K.knn(Q_small, R_h, k, -1)
    cp.cuda.Device().synchronize()
    times["fastzsl_knn_host_reference_incl_upload"] = [time.perf_counter() - t0]
    out["host_reference_queries"] = int(Q_small.shape[0])
    assert_knn_equal(Dh.get(), Ih.get(), D[:256], I[:256], **tol)
    out["correctness"] = {"rows_vs_numpy": n_np, "rows_vs_gpu_float64": n_gpu,
                          "host_reference_path_equal": True}
    out["times_s"] = times
    return out


def knn_methods_case(cp, K, numpy_, assert_knn_equal, TOL, n_ref, n_q, d, k, log):
    """The direct kernel against the two-pass GEMM scheme (knn_twopass.py) on one problem:
    equal answers (bit for bit), then the time of each and how many queries overflowed."""
    from fastzsl.backends.cupy import knn_twopass

    out = {"n_ref": n_ref, "n_q": n_q, "d": d, "k": k, "dtype": "float32"}
    centers = cp.random.RandomState(9).standard_normal((10, d), dtype=cp.float32) * 10
    R = blobs(cp, n_ref, d, centers, 10)
    Q = blobs(cp, n_q, d, centers, 11)
    times, answers = {}, {}
    saved = knn_twopass.KNN_METHOD
    try:
        for method in ("direct", "twopass"):
            knn_twopass.KNN_METHOD = method
            times[f"fastzsl_knn_{method}"], answers[method] = timed(
                lambda: K.knn(Q, R, k, -1), 2, cp)
    finally:
        knn_twopass.KNN_METHOD = saved
    (D1, I1), (D2, I2) = answers["direct"], answers["twopass"]
    same = bool((I1 == I2).all()) and bool((D1 == D2).all())
    assert same, "two-pass kNN differs from the direct kernel"
    n_np = 2
    assert_knn_equal(D2[:n_np].get(), I2[:n_np].get(), *numpy_.knn(Q[:n_np].get(), R.get(), k, -1),
                     **TOL[np.dtype(np.float32)])
    out["overflow_rows"] = int(knn_twopass.LAST_OVERFLOW_ROWS)
    out["correctness"] = {"twopass_equals_direct": same, "rows_vs_numpy": n_np}
    log(f"  two-pass == direct on {n_q:,} x {n_ref:,}; {out['overflow_rows']} queries fell back")
    out["times_s"] = times
    R = Q = None
    cp.get_default_memory_pool().free_all_blocks()
    return out


# ------------------------------------------------------------------ report
def median(xs):
    return float(np.median(xs)) if xs else float("nan")


def summarize(result):
    kl = result["knn_loop"]
    t = {name: median(v) for name, v in kl["times_s"].items()}
    pairs = kl["n_ref"] * kl["n_ref"] + kl["n_q"] * kl["n_ref"]
    s = {}
    for who in ("fastzsl", "torch"):
        parts = [f"{who}_knn_fit_graph", f"{who}_loop_fit", f"{who}_knn_queries", f"{who}_loop_score"]
        if all(p in t for p in parts):
            total = sum(t[p] for p in parts)
            s[f"{who}_knn_loop_total_s"] = total
            s[f"{who}_distances_per_s"] = pairs / (t[f"{who}_knn_fit_graph"] + t[f"{who}_knn_queries"])
    if "torch_knn_loop_total_s" in s:
        s["torch_over_fastzsl_knn_loop"] = s["torch_knn_loop_total_s"] / s["fastzsl_knn_loop_total_s"]
        s["torch_over_fastzsl_knn_queries"] = t["torch_knn_queries"] / t["fastzsl_knn_queries"]
    g = result.get("gaussian")
    if g:
        tg = {name: median(v) for name, v in g["times_s"].items()}
        s["gaussian_reductions_s"] = tg["fastzsl_gaussian_reductions"]
        s["cupy_matmul_s"] = tg["cupy_matmul_same_shape"]
        s["gaussian_reductions_over_matmul"] = tg["fastzsl_gaussian_reductions"] / tg["cupy_matmul_same_shape"]
        s["gaussian_pairs_per_s"] = g["n"] * g["C"] / tg["fastzsl_gaussian_reductions"]
    b = result.get("big_reference")
    if b:
        tb = median(b["times_s"]["fastzsl_knn_device_reference"])
        s["big_reference_knn_s"] = tb
        s["big_reference_distances_per_s"] = b["n_ref"] * b["n_q"] / tb
    m = result.get("knn_methods")
    if m:
        tm = {name: median(v) for name, v in m["times_s"].items()}
        s["knn_direct_s"] = tm["fastzsl_knn_direct"]
        s["knn_twopass_s"] = tm["fastzsl_knn_twopass"]
        s["knn_direct_over_twopass"] = tm["fastzsl_knn_direct"] / tm["fastzsl_knn_twopass"]
    return s


def write_markdown(result, path):
    s = result["summary"]
    lines = [f"# fastzsl GPU benchmark: {result['device']}", "",
             f"{result['date']}; CUDA runtime {result['cuda_runtime']}, CuPy {result['cupy']}, "
             f"torch {result.get('torch')}, Python {result['python']}. Median of CUDA-event "
             "timings after a warm-up; every case checked against the NumPy reference first.", ""]
    kl = result["knn_loop"]
    lines += [f"## Exact kNN + LoOP: N_ref={kl['n_ref']:,}, N_q={kl['n_q']:,}, d={kl['d']}, "
              f"k={kl['k']}, float32", "", "| step | runs | median (s) |", "| --- | --- | --- |"]
    for name, v in kl["times_s"].items():
        lines.append(f"| {name} | {len(v)} | {median(v):.4f} |")
    lines.append("")
    for key in ("fastzsl_knn_loop_total_s", "torch_knn_loop_total_s", "torch_over_fastzsl_knn_loop",
                "torch_over_fastzsl_knn_queries", "fastzsl_distances_per_s", "torch_distances_per_s"):
        if key in s:
            lines.append(f"- {key}: {s[key]:.4g}")
    lines.append(f"- correctness: {json.dumps(kl['correctness'])}")
    if "gaussian" in result:
        g = result["gaussian"]
        lines += ["", f"## Gaussian log-likelihood: n={g['n']:,}, C={g['C']}, d={g['d']}, float32",
                  "", "| step | runs | median (s) |", "| --- | --- | --- |"]
        for name, v in g["times_s"].items():
            lines.append(f"| {name} | {len(v)} | {median(v):.4f} |")
        lines += ["", f"- reductions / cupy.matmul: {s['gaussian_reductions_over_matmul']:.3g}",
                  f"- (row, class) pairs per second: {s['gaussian_pairs_per_s']:.4g}"]
    if "big_reference" in result:
        b = result["big_reference"]
        lines += ["", f"## Large reference: N_ref={b['n_ref']:,}, N_q={b['n_q']:,}, d={b['d']}, "
                  f"k={b['k']}", ""]
        for name, v in b["times_s"].items():
            lines.append(f"- {name}: median {median(v):.4f} s over {len(v)} run(s)")
        lines.append(f"- distances per second: {s['big_reference_distances_per_s']:.4g}")
        lines.append(f"- correctness: {json.dumps(b['correctness'])}")
    if "knn_methods" in result:
        m = result["knn_methods"]
        lines += ["", f"## kNN, direct kernel vs two-pass GEMM screen: N_ref={m['n_ref']:,}, "
                  f"N_q={m['n_q']:,}, d={m['d']}, k={m['k']}, float32", ""]
        for name, v in m["times_s"].items():
            lines.append(f"- {name}: median {median(v):.4f} s over {len(v)} run(s)")
        lines.append(f"- direct / two-pass: {s['knn_direct_over_twopass']:.3g}; queries that "
                     f"fell back to the direct kernel: {m['overflow_rows']:,}")
        lines.append(f"- correctness: {json.dumps(m['correctness'])}")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--budget", type=float, default=330.0,
                        help="seconds for the whole benchmark; repetitions shrink to fit")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import cupy as cp

    from fastzsl.backends import cupy as cupy_backend
    from fastzsl.backends import numpy_
    from fastzsl.testing import TOL, assert_knn_equal

    ok, reason = cupy_backend.is_available()
    if not ok:
        raise SystemExit(f"bench_gpu: backend cupy unavailable: {reason}")
    try:
        import torch
        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    K = cupy_backend.KERNELS
    budget = Budget(args.budget)

    def log(msg):
        print(f"[{time.perf_counter() - budget.start:7.1f}s] {msg}", flush=True)

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    result = {
        "device": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cupy": cp.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "python": platform.python_version(),
        "sizes": "tiny" if args.tiny else "quick" if args.quick else "full",
    }
    log(f"device {name}")
    if args.tiny and getattr(cp, "IS_FAKE", False):  # the CPU test harness: script check
        sizes = dict(knn=(600, 300, 8, 5), gauss=(400, 12, 8), big=(3000, 40, 8, 5),
                     methods=(500, 100, 8, 5))
        result["sizes"] = "tiny, CPU execution (tests/cuda_host): timings mean nothing"
    elif args.tiny:
        sizes = dict(knn=(3000, 2000, 20, 7), gauss=(3000, 40, 20), big=(20_000, 40, 20, 7),
                     methods=(20_000, 2000, 20, 7))
    elif args.quick:
        sizes = dict(knn=(100_000, 100_000, 64, 20), gauss=(400_000, 1000, 64),
                     big=(1_000_000, 500, 64, 20), methods=(200_000, 20_000, 64, 20))
    else:
        sizes = dict(knn=(1_000_000, 1_000_000, 64, 20), gauss=(4_000_000, 1000, 64),
                     big=(10_000_000, 2000, 64, 20), methods=(1_000_000, 100_000, 64, 20))

    log("exact kNN + LoOP")
    result["knn_loop"] = knn_loop_case(cp, torch, K, numpy_, assert_knn_equal, TOL,
                                       *sizes["knn"], budget, log)
    log("Gaussian")
    result["gaussian"] = gaussian_case(cp, K, numpy_, TOL, *sizes["gauss"], budget, log)
    log("large reference")
    result["big_reference"] = big_reference_case(cp, K, numpy_, assert_knn_equal, TOL,
                                                 *sizes["big"], log)
    log("kNN: direct kernel vs two-pass")
    result["knn_methods"] = knn_methods_case(cp, K, numpy_, assert_knn_equal, TOL,
                                             *sizes["methods"], log)
    result["summary"] = summarize(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "gpu.md")
    log(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'}")
    for key, value in result["summary"].items():
        print(f"  {key}: {value:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
