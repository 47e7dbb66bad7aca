"""The products' routes against each other: BLAS (``FASTZSL_TILES=blas``) and ``auto`` (this
CPU's own FMA tiles, csrc/cpu/knn_f32_tiles.h), in interleaved rounds in one process.

- kNN (fastzsl.knn, cython, k = 20) on the kNN benchmark's data (seeded blobs; 100k x 10k
  at d = 50, 50k x 5k at d = 128 and 512), with a square NumPy sgemm (4096^3) as the
  machine's peak rate: each route's fraction of it. Both routes return the same arrays
  (checked).
- The Gaussian regime table's rows that take the GEMM route (bench_gaussian.py: C = 1000
  and 10000 at d = 16 / 50 / 512, C = 10 at d = 512; far and broad classes; float32 and
  float64), ``full=False``, against the same product in blocks of 8,192 rows (the table's
  baseline). The routes' argmax agree (checked); logsumexp within its certified accuracy.

Writes benchmarks/results/tiles-<auto's kind>-cpu-2core.{md,json}:

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/tile_routes.py
"""
import time
from pathlib import Path

import numpy as np

from _harness import interleaved, interleaved_ratios, machine, write_results
from bench_gaussian import REGIMES, _regime_problem
import fastzsl
from fastzsl._ext import knn_cpu
from fastzsl.testing import make_blobs

KNN = [(100_000, 10_000, 50), (50_000, 5_000, 128), (50_000, 5_000, 512)]
GAUSS = [row for row in REGIMES if row[1] >= 1000 or row[2] == 512]
SGEMM_N = 4096


def _on_route(mode, fn):
    def run():
        with knn_cpu.using_f32_tiles(mode):
            return fn()
    return run


def knn_rows(rounds):
    A = np.random.default_rng(0).standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32)
    rows = []
    for n_ref, n_q, d in KNN:
        X, _ = make_blobs(n_ref + n_q, d, seed=0)
        R, Q = np.ascontiguousarray(X[:n_ref]), np.ascontiguousarray(X[n_ref:])
        fns = {mode: _on_route(mode, lambda: fastzsl.knn(Q, R, 20, backend="cython"))
               for mode in ("blas", "auto")}
        a, b = fns["blas"](), fns["auto"]()
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        fns["sgemm"] = lambda: A @ A
        t = interleaved_ratios(interleaved(fns, rounds=rounds), "blas")
        peak = 2.0 * SGEMM_N ** 3 / t["sgemm"]["median"]
        flop = 2.0 * n_ref * n_q * d
        row = dict(n_ref=n_ref, n_q=n_q, d=d, sgemm_gflops=peak / 1e9, **{
            f"{m}_{key}": t[m][key] for m in ("blas", "auto")
            for key in ("median", "min", "ratio_of_medians", "ratio_of_minima")})
        row.update({f"{m}_of_sgemm": flop / t[m]["median"] / peak for m in ("blas", "auto")})
        print(row, flush=True)
        rows.append(row)
    return rows


def gauss_rows(rounds):
    rows = []
    for regime, C, d, dtype in GAUSS:
        F, means, variances, log_weights = _regime_problem(regime, C, d, dtype, False)
        block = min(8192, F.shape[0])
        out = np.empty((block, C), dtype=dtype)

        def blocks():
            for start in range(0, F.shape[0], block):
                stop = min(start + block, F.shape[0])
                np.dot(F[start:stop], means.T, out=out[:stop - start])

        def call():
            return fastzsl.gaussian_loglik(F, means, variances, log_weights=log_weights,
                                           full=False, backend="cython")

        fns = {"blocks": blocks, "blas": _on_route("blas", call),
               "auto": _on_route("auto", call)}
        assert np.array_equal(fns["blas"]().argmax, fns["auto"]().argmax)
        t = interleaved_ratios(interleaved(fns, rounds=rounds), "blocks")
        row = dict(regime=regime, C=C, d=d, dtype=dtype, n=F.shape[0],
                   blocks_median=t["blocks"]["median"],
                   **{f"{m}_{key}": t[m][key] for m in ("blas", "auto")
                      for key in ("median", "ratio_of_medians", "ratio_of_minima")})
        print(row, flush=True)
        rows.append(row)
    return rows


def report(results):
    m, kind = results["machine"], results["auto_kind"]
    lines = [f"# Products' routes: BLAS against auto ({kind} tiles)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; flags: {m['flags']}; "
             f"run {results['date']} UTC; {results['rounds']} interleaved rounds "
             "(1 warm-up), medians. Command: `PYTHONPATH=benchmarks .venv/bin/python "
             "benchmarks/tile_routes.py`.", "",
             "## kNN (fastzsl.knn, cython, k = 20, seeded blobs)", "",
             "| n_ref x n_q, d | BLAS s | auto s | auto speed-up (medians / minima) | "
             "BLAS of sgemm | auto of sgemm | sgemm GFLOP/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["knn"]:
        lines.append(f"| {r['n_ref']} x {r['n_q']}, {r['d']} | {r['blas_median']:.3f} | "
                     f"{r['auto_median']:.3f} | {r['auto_ratio_of_medians']:.2f}x / "
                     f"{r['auto_ratio_of_minima']:.2f}x | "
                     f"{r['blas_of_sgemm']:.0%} | {r['auto_of_sgemm']:.0%} | "
                     f"{r['sgemm_gflops']:.0f} |")
    lines += ["", "## Gaussian `full=False`, GEMM-route rows of the regime table", "",
              "Times as ratios to the same product in blocks of 8,192 rows (the regime "
              "table's baseline, same rounds; below 1 = faster).", "",
              "| regime | C | d | dtype | n | blocks ms | BLAS route | auto route | "
              "auto / BLAS |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in results["gaussian"]:
        lines.append(f"| {r['regime']} | {r['C']} | {r['d']} | {r['dtype']} | {r['n']} | "
                     f"{r['blocks_median'] * 1e3:.1f} | {1 / r['blas_ratio_of_medians']:.2f}x | "
                     f"{1 / r['auto_ratio_of_medians']:.2f}x | "
                     f"{r['auto_median'] / r['blas_median']:.2f} |")
    return "\n".join(lines) + "\n"


def main(rounds=5):
    kind = knn_cpu.set_f32_tiles("auto")
    results = dict(machine=machine(), auto_kind=kind, rounds=rounds,
                   date=time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
    results["knn"] = knn_rows(rounds)
    results["gaussian"] = gauss_rows(rounds)
    write_results(Path(__file__).parent / "results", f"tiles-{kind}-cpu-2core", results,
                  report)


if __name__ == "__main__":
    main()
