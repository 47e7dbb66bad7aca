"""Where the cython Gaussian kernel's direct route stops paying (gaussian_cpu's
_direct_route_max_d_f / _d): classes that fit one FZ_PAD (at most 16) take every value by
direct differences in double, a row per vector lane, instead of the GEMM form.

``gaussian_loglik(full=False)`` by each route (set_direct_route_max_d(256) against 0), in
interleaved rounds, on the choice shapes: C = 6, 13, 16 and d = 24-256, broad and far
classes (as the regime table's regimes, but not its shapes: the table reports against
the choice), float32 and float64. Both routes' outputs are checked against each other
(argmax, all_below identical; max and logsumexp within the certified accuracy). Writes
benchmarks/results/direct-route-crossover-cpu-2core-<flags>.{md,json}.

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/direct_route_crossover.py
"""
import time
from pathlib import Path

import numpy as np

from _harness import interleaved, interleaved_ratios, machine, write_results
from fastzsl._ext import gaussian_cpu

CLASSES = (6, 13, 16)
DIMS = (24, 32, 40, 48, 64, 96, 128, 192, 256)
DTYPES = ("float32", "float64")
REGIMES = ("broad", "far")
ROUNDS = 9


def problem(regime, C, d, dtype):
    """(F, means, variances, log_weights, thresholds) of one shape, seeded; about 2e8 / C
    multiply-adds (20-60 ms a call)."""
    rng = np.random.default_rng(1000 * C + d)
    n = int(min(200_000, max(20_000, 2e8 // (C * d))))
    spread = 1.0 if regime == "broad" else 4.0
    means = spread * rng.standard_normal((C, d))
    F = rng.standard_normal((n, d)) if regime == "broad" else \
        means[rng.integers(0, C, n)] + rng.standard_normal((n, d))
    return (F.astype(dtype), means.astype(dtype), rng.uniform(0.5, 2.0, C),
            np.log(rng.dirichlet(np.ones(C))), np.full(C, np.inf))


def on_route(max_d, args):
    def run():
        before = gaussian_cpu.set_direct_route_max_d(max_d)
        try:
            return gaussian_cpu.gaussian_loglik(*args, False)
        finally:
            gaussian_cpu.set_direct_route_max_d(before)
    return run


def measure(regime, C, d, dtype, rounds):
    args = problem(regime, C, d, dtype)
    fns = {"gemm": on_route(0, args), "direct": on_route(gaussian_cpu.DIRECT_ROUTE_MAX_D, args)}
    gemm, direct = fns["gemm"](), fns["direct"]()
    # (L, max, argmax, logsumexp, all_below): the decisions agree, the values within the
    # float32 / float64 accuracy targets (both certified against the same definition)
    assert np.array_equal(gemm[2], direct[2]) and np.array_equal(gemm[4], direct[4])
    rtol = 2.0 ** -14 if dtype == "float32" else 2.0 ** -38
    np.testing.assert_allclose(direct[3], gemm[3], rtol=rtol)
    ratios = interleaved_ratios(interleaved(fns, rounds=rounds), "gemm")
    return dict(regime=regime, C=C, d=d, dtype=dtype, n=args[0].shape[0],
                gemm_ms=ratios["gemm"]["median"] * 1e3,
                direct_ms=ratios["direct"]["median"] * 1e3,
                direct_over_gemm_median=1 / ratios["direct"]["ratio_of_medians"],
                direct_over_gemm_min=1 / ratios["direct"]["ratio_of_minima"])


def largest_paying_d(rows, dtype):
    """The largest d up to which the direct route pays: at that d and every smaller one,
    the geometric mean over the shapes (C, regime) of its time over the GEMM form's
    (medians) is at most 1. (A mean, not the worst shape: calls of 10-40 ms swing 10-20%
    between rounds here.)"""
    best = 0
    for d in DIMS:
        ratios = [r["direct_over_gemm_median"] for r in rows
                  if r["dtype"] == dtype and r["d"] == d]
        if not ratios or float(np.exp(np.mean(np.log(ratios)))) > 1.0:
            break
        best = d
    return best


def report(results) -> str:
    m = results["machine"]
    lines = [f"# Gaussian direct route against the GEMM form (full=False)", "",
             f"Machine: {m['cpu']} (flags: {m['flags']}), {m['cores']} cores; run "
             f"{results['date']} UTC; {results['rounds']} interleaved rounds (1 warm-up), "
             "medians. Command: `PYTHONPATH=benchmarks .venv/bin/python "
             "benchmarks/direct_route_crossover.py`.", "",
             "Direct / GEMM below 1: the direct route is faster. The largest d up to which "
             "the geometric mean over the shapes of direct / GEMM (medians) stays at most "
             "1: float32 "
             f"{results['largest_paying_d']['float32']}, float64 "
             f"{results['largest_paying_d']['float64']} (gaussian_cpu's "
             f"_direct_route_max_d_f / _d when this ran: {results['current_max_d']}; "
             "DIRECT_ROUTE_DEFAULTS holds what was chosen from it).", "",
             "| regime | C | d | dtype | n | GEMM ms | direct ms | direct / GEMM (medians / "
             "minima) |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| {r['regime']} | {r['C']} | {r['d']} | {r['dtype']} | {r['n']} | "
                     f"{r['gemm_ms']:.1f} | {r['direct_ms']:.1f} | "
                     f"{r['direct_over_gemm_median']:.2f} / {r['direct_over_gemm_min']:.2f} |")
    return "\n".join(lines) + "\n"


def main(rounds=ROUNDS):
    before = gaussian_cpu.direct_route_max_d()
    results = dict(machine=machine(), rounds=rounds, current_max_d=list(before),
                   date=time.strftime("%Y-%m-%d %H:%M", time.gmtime()), rows=[])
    for dtype in DTYPES:
        for d in DIMS:
            if dtype == "float64" and d > 128:
                continue  # the float64 direct route already loses by d = 64 on AVX-512
            for regime in REGIMES:
                for C in CLASSES:
                    row = measure(regime, C, d, dtype, rounds)
                    print(row, flush=True)
                    results["rows"].append(row)
    results["largest_paying_d"] = {t: largest_paying_d(results["rows"], t) for t in DTYPES}
    flags = "avx512" if "avx512f" in results["machine"]["flags"] else "avx2"
    write_results(Path(__file__).parent / "results",
                  f"direct-route-crossover-cpu-2core-{flags}", results, report)


if __name__ == "__main__":
    main()
