"""Figure of the IVF study: LoOP error and recall@k against speed over exact kNN.

    .venv/bin/python benchmarks/plot_ivf.py RESULTS.json [MORE.json ...] --out FIGURE.png

Reads pytest-benchmark JSON written by ``benchmarks/bench_ivf.py`` (rows of one data set
share a group; speeds are against the exact row of the same file).
"""
import argparse
import json
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    groups = defaultdict(dict)  # group -> {nprobe: (speed over exact in the same run, info)}
    for path in args.json:
        benches = json.load(open(path))["benchmarks"]
        exact = {b["group"]: b["stats"]["median"] for b in benches if b["extra_info"]["baseline"]}
        for b in benches:
            info = b["extra_info"]
            if not info["baseline"]:
                groups[b["group"]][info["nprobe"]] = (exact[b["group"]] / b["stats"]["median"],
                                                      info)
    fig, (ax_err, ax_recall) = plt.subplots(1, 2, figsize=(11, 4.2))
    for group, rows in groups.items():
        points = sorted((speed, info["loop_mean_err"], info["recall"], nprobe, info["nlist"])
                        for nprobe, (speed, info) in rows.items())
        label = group.replace("ivf ", "").replace(" N_ref", ", N_ref")
        speed = [p[0] for p in points]
        err = [max(p[1], 1e-9) for p in points]
        line, = ax_err.plot(speed, err, "-o", markersize=4, label=label)
        ax_recall.plot(speed, [p[2] for p in points], "-o", markersize=4, color=line.get_color(),
                       label=label)
        defaults = [p for p in points if p[3] == max(1, p[4] // 16)]  # FaissIndex's default
        ax_err.plot([p[0] for p in defaults], [max(p[1], 1e-9) for p in defaults], "*",
                    markersize=14, color=line.get_color(), label=f"default nprobe ({label})")
        for s, e, _, nprobe, nlist in points:
            ax_err.annotate(f"{nprobe}/{nlist}", (s, max(e, 1e-9)), fontsize=7,
                            textcoords="offset points", xytext=(4, 3))
    ax_err.axhline(0.01, color="grey", linestyle=":", label="target: mean error 0.01")
    ax_err.set_yscale("log")
    ax_err.set_ylabel("mean |LoOP(IVF) - LoOP(exact)| on new points")
    ax_recall.set_ylabel("recall@20 of the new points' neighbours")
    for ax in (ax_err, ax_recall):
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("speed of LoOP scoring, x exact fastzsl kNN (right = faster)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    ax_err.set_title("LoOP error (labels: nprobe / nlist)")
    ax_recall.set_title("neighbour recall")
    fig.suptitle("faiss IndexIVFFlat for LoOP on 2 CPU cores")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
