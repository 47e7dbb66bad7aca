"""Where method="auto" switches from the brute-force kernel to the k-d tree.

In-sample kNN (``ExactIndex(X, method=m).search(X, k, exclude_self=True)``, index build
included, k = 10) on seeded Gaussian blobs (fastzsl.testing.make_blobs, float32), for the
two exact methods in interleaved rounds (brute, tree, brute, tree, ...). Both return the
same arrays (checked). Writes benchmarks/results/kdtree-crossover-cpu-2core.{md,json}.

    PYTHONPATH=. python benchmarks/kdtree_crossover.py
"""
import json
import time
from pathlib import Path

import numpy as np

from _harness import interleaved, interleaved_ratios, load_1m
from fastzsl._platform import cpu_count, cpu_name
from fastzsl.neighbors import ExactIndex
from fastzsl.testing import make_blobs

K = 10
# The tree's cost grows steeply with d (at N=100k, d=8 it is already slower than brute
# force), so the larger N stop at d=8.
GRID = [(20_000, d) for d in (2, 4, 5, 6, 8, 12, 16)]
GRID += [(n, d) for n in (50_000, 100_000) for d in (2, 4, 5, 6, 8)]
GRID += [(n, 4) for n in (500, 1000, 2000, 5000)]


def measure(n, d, rounds):
    X, _ = make_blobs(n, d, seed=0, dtype=np.float32)
    fns = {m: (lambda m=m: ExactIndex(X, method=m).search(X, K, exclude_self=True))
           for m in ("exact", "kdtree")}
    a, b = fns["exact"](), fns["kdtree"]()
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    load = load_1m()
    ratios = interleaved_ratios(interleaved(fns, rounds=rounds), "exact")
    return dict(n=n, d=d, k=K, loadavg_1m=round(load, 2),
                brute_s=ratios["exact"]["median"], tree_s=ratios["kdtree"]["median"],
                tree_speedup_median=ratios["kdtree"]["ratio_of_medians"],
                tree_speedup_min=ratios["kdtree"]["ratio_of_minima"])


def main():
    rows = []
    for n, d in GRID:
        row = measure(n, d, rounds=3 if n * n * d < 2e10 else 1)
        print(row, flush=True)
        rows.append(row)
    out = Path(__file__).parent / "results" / "kdtree-crossover-cpu-2core"
    meta = dict(cpu=cpu_name(), cores=cpu_count(), k=K, date=time.strftime("%Y-%m-%d %H:%M"),
                note="other engineers' jobs shared these 2 cores (see loadavg_1m)")
    out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    lines = [f"# k-d tree vs brute force, in-sample kNN k={K} ({meta['cpu']}, "
             f"{meta['cores']} cores, {meta['date']})", "",
             "Other engineers' jobs shared the machine: the 1-minute load average is given "
             "per row. Speed-up = brute median / tree median (ratio of minima in brackets).",
             "", "| N | d | load 1m | brute s | tree s | tree speed-up |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['d']} | {r['loadavg_1m']} | {r['brute_s']:.3f} | "
                     f"{r['tree_s']:.3f} | {r['tree_speedup_median']:.2f} "
                     f"({r['tree_speedup_min']:.2f}) |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
