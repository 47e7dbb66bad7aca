"""Markdown report of a fastzsl pytest-benchmark JSON file.

    .venv/bin/python benchmarks/report.py benchmarks/results/cpu-2core.json \
        --out benchmarks/results/cpu-2core.md

One table per benchmark group: name, median seconds, rounds, and the ratio
median / baseline median, where the baseline is the row marked ``baseline`` in
extra_info (faiss IndexFlatL2 for knn, faiss + NumPy LoOP for loop fit/score, PyNomaly
for the in-sample LoOP fit, the bare GEMM for gaussian), measured in the same process.
Rows recorded by conftest's ``bench`` (``interleaved`` in extra_info) come from rounds
interleaved with the rest of their group, so both ratios are of the same rounds.
A row whose extra_info has ``time_scale`` (a peer timed on a subset) is shown with its
times multiplied by it; its label says so.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from datetime import datetime

# Fallback when a file has no extra_info["baseline"] (substring of the test name).
BASELINE_BY_GROUP = {
    "knn": "faiss-IndexFlatL2",
    "loop fit N_ref": "faiss+numpy",
    "loop score": "faiss+numpy",
    "loop fit N=": "PyNomaly-numba",
    "gaussian": "test_gemm_baseline",
}


def _is_baseline(bench, group):
    info = bench.get("extra_info", {})
    if "baseline" in info:
        return bool(info["baseline"])
    for prefix, needle in BASELINE_BY_GROUP.items():
        if group.startswith(prefix):
            return needle in bench["name"]
    return False


def _fmt_seconds(s):
    if s >= 100:
        return f"{s:.0f}"
    if s >= 1:
        return f"{s:.2f}"
    if s >= 1e-3:
        return f"{s:.4f}"
    return f"{s:.2e}"


def _verdict(ratio):
    if ratio is None:
        return ""
    if abs(ratio - 1) < 0.005:
        return "baseline" if ratio == 1 else "same as baseline"
    if ratio > 1:
        return f"{ratio:.2f}x slower"
    return f"{1 / ratio:.2f}x faster"


# extra_info keys shown as extra columns when a group's rows have them. "flop" (the
# distance GEMM's floating-point operations) gives GFLOP/s from the median time and, when
# the group has a row marked peak_reference (a square sgemm), the fraction of that rate.
EXTRA_COLUMNS = (("rows", "rows/s"), ("flop", "GFLOP/s"), ("flop", "of square sgemm"),
                 ("peak_rss_mb", "peak RSS [MB]"),
                 ("recall", "recall@k"), ("loop_mean_err", "LoOP mean abs err"),
                 ("loop_max_err", "LoOP max abs err"))
_EXTRA_FORMAT = {"peak_rss_mb": "{:,.0f}", "recall": "{:.4f}", "loop_mean_err": "{:.2e}",
                 "loop_max_err": "{:.2e}"}


def _gflops(bench):
    return bench["extra_info"]["flop"] / bench["stats"]["median"] / 1e9


def _extra(bench, key, title, rows):
    info = bench.get("extra_info", {})
    if key not in info:
        return ""
    if key == "rows":  # throughput from the median time
        return f"{info['rows'] / bench['stats']['median']:,.0f}"
    if title == "GFLOP/s":
        return f"{_gflops(bench):.0f}"
    if title == "of square sgemm":
        peak = [b for b in rows if b.get("extra_info", {}).get("peak_reference")]
        return f"{_gflops(bench) / _gflops(peak[0]):.0%}" if peak else ""
    return _EXTRA_FORMAT[key].format(info[key])


def _growth_exponents(rows):
    """Least-squares exponent a of time ~ size^a, per series, for rows with growth_size."""
    import math

    series = OrderedDict()
    for b in rows:
        info = b.get("extra_info", {})
        if "growth_size" in info:
            series.setdefault(info.get("series", ""), []).append(
                (math.log(info["growth_size"]), math.log(b["stats"]["median"])))
    lines = []
    for name, points in series.items():
        if len(points) < 2:
            continue
        mx = sum(x for x, _ in points) / len(points)
        my = sum(y for _, y in points) / len(points)
        slope = (sum((x - mx) * (y - my) for x, y in points)
                 / sum((x - mx) ** 2 for x, _ in points))
        lines.append(f"fitted growth: time ~ size^{slope:.2f} ({name}, {len(points)} sizes)")
    return [""] + lines if lines else []


def _scaled_stats(bench):
    """The row's stats, multiplied by extra_info["time_scale"] where present."""
    scale = bench.get("extra_info", {}).get("time_scale", 1.0)
    return {key: (value * scale if key in ("min", "max", "median", "mean") else value)
            for key, value in bench["stats"].items()}


def render(data, note=None) -> str:
    benches = [dict(b, stats=_scaled_stats(b)) for b in data["benchmarks"]]
    groups: "OrderedDict[str, list]" = OrderedDict()
    for b in benches:
        groups.setdefault(b.get("group") or "(no group)", []).append(b)

    info0 = benches[0].get("extra_info", {}) if benches else {}
    mi = data.get("machine_info", {})
    cpu = info0.get("cpu") or mi.get("cpu", {}).get("brand_raw") or mi.get("processor", "?")
    cores = info0.get("cores") or mi.get("cpu", {}).get("count", "?")
    when = data.get("datetime", "")
    try:
        when = datetime.fromisoformat(when).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        pass
    threads = ", ".join(f"{k}={info0[k]}" for k in ("faiss_threads", "numba_threads")
                        if k in info0)
    lines = [
        f"Machine: {cpu}"
        + (f" (flags: {info0['flags']})" if "flags" in info0 else "")
        + f", {cores} cores ({threads}); Python "
        f"{mi.get('python_version', '?')}; run {when}"
        + ("; QUICK sizes" if info0.get("quick") else ""),
        "",
        f"Data: {info0.get('data', 'synthetic Gaussian blobs, seeded')}. "
        + ("Rounds interleaved within each group (A B C, A B C, ...: benchmarks/conftest.py), "
           "so a fast or slow phase of the machine falls on every row alike. "
           if any(b.get("extra_info", {}).get("interleaved") for b in benches) else "")
        + "Times are medians of the timed rounds (1 warm-up round first, except "
        "single-round rows); ratio = median / the group's baseline median, same process "
        "(ratio of medians); max/min = spread between rounds; ratio of mins = min / baseline "
        "min (more robust when other work shares the machine).",
        "",
    ]
    loads = [b["extra_info"]["loadavg_1m_before"] for b in benches
             if "loadavg_1m_before" in b.get("extra_info", {})]
    if loads:
        lines += [f"1-min load average before each row: {min(loads):.2f} to {max(loads):.2f} "
                  f"(the benchmarks themselves use {cores} threads).", ""]
    if note:
        lines += [f"Note: {note}", ""]
    for group, rows in groups.items():
        base = [b for b in rows if _is_baseline(b, group)]
        base_median = base[0]["stats"]["median"] if base else None
        base_min = base[0]["stats"]["min"] if base else None
        rows = sorted(rows, key=lambda b: b["stats"]["median"])
        loads = [b["extra_info"]["loadavg_1m_before"] for b in rows
                 if "loadavg_1m_before" in b.get("extra_info", {})]
        extras = [(key, title) for key, title in EXTRA_COLUMNS
                  if any(key in b.get("extra_info", {}) for b in rows)
                  and (title != "of square sgemm"
                       or any(b.get("extra_info", {}).get("peak_reference") for b in rows))]
        data_lines = sorted({b["extra_info"]["data"] for b in rows
                             if b.get("extra_info", {}).get("data", info0.get("data"))
                             != info0.get("data")})
        lines += [f"### {group}", "",
                  *[f"Data: {d}." for d in data_lines], *([""] if data_lines else []),
                  *([f"1-min load average before its rows: {min(loads):.1f} to "
                     f"{max(loads):.1f}", ""] if loads else []),
                  "| name | median [s] | min [s] | max/min | rounds | ratio to baseline | verdict |"
                  " ratio of mins |" + "".join(f" {title} |" for _, title in extras),
                  "|---|---:|---:|---:|---:|---:|---|---:|" + "---:|" * len(extras)]
        for b in rows:
            label = b.get("extra_info", {}).get("label", b["name"])
            is_base = bool(base) and b is base[0]
            if is_base:
                label = f"**{label}**"
            median = b["stats"]["median"]
            ratio = median / base_median if base_median else None
            st = b["stats"]
            min_ratio = f"{st['min'] / base_min:.2f}" if base_min else ""
            lines.append(
                f"| {label} | {_fmt_seconds(median)} | {_fmt_seconds(st['min'])} | "
                f"{st['max'] / st['min']:.2f} | {st['rounds']} | "
                f"{'' if ratio is None else f'{ratio:.2f}'} | "
                f"{'baseline' if is_base else _verdict(ratio)} | "
                f"{min_ratio} |" + "".join(f" {_extra(b, key, title, rows)} |"
                                           for key, title in extras))
        if not base:
            lines.append("")
            lines.append("(no baseline row in this group)")
        lines += _growth_exponents(rows)
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark JSON (--benchmark-json output)")
    parser.add_argument("--out", help="also write the markdown here")
    parser.add_argument("--note", help="a line to add under the header (e.g. machine load)")
    args = parser.parse_args(argv)
    with open(args.json) as fh:
        text = render(json.load(fh), note=args.note)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
