"""P(unseen | x) adapted to an unlabelled batch (``ZeroShotClassifier.adapt``): its
settings chosen on development pairs, then measured on the sweep's pairs.

Per pair, the default model is fitted without the pair, as in ``novelty_choices.py``
(features, mapping, softmax and the gate's rounds on the eight seen classes). The test
images are split in two halves, stratified by class, with a fixed seed. For each unseen
share (0.05, 0.2, 0.5): the batch is half A, cut to that share (all its seen images and
as many unseen ones as the share needs, or, at 0.5, as many seen ones); the model's prior
is set to the share and it adapts on the batch; then half B, reweighted to the share,
gives ROC-AUC, ECE and Brier skill. No measured image is in the batch, and none has a
label the adaptation sees. The routing (soft Eq. 2 against hard at P > 1/2) is measured
on half B as it is (2 unseen classes of 10: share 0.2) after adapting at 0.2. Each row
also carries the inductive model's numbers on the same images.

``--dev``: the 10 development pairs of ``novelty_rules.py`` (none is a sweep pair) with
the candidate neighbour counts; the choice (highest mean Brier skill over pairs and
shares, then the routing with the higher mean H) is written to
``novelty-adaptation-dev.{json,md}``. Without it: the sweep's six pairs with the chosen
setting (``fastzsl.adaptation.N_NEIGHBORS``), ``novelty-adaptation.{json,md}``; ``--all``:
all 45 pairs, ``novelty-adaptation-all.{json,md}``. About 80 s
a pair on 2 idle cores; rows are kept in ``--work`` so a stopped run resumes.
"""
import argparse
import datetime
import itertools
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from _harness import write_results
from novelty_rules import development_pairs

from fastzsl.app.reproduce.measures import SHARES, roc_auc, weighted_calibration
from fastzsl.app.reproduce.settings import PAIRS, settings_for

CANDIDATE_K = (30, 100, 300)
SPLIT_SEED = 0
# A batch whose unseen share is 0.2, stated as each of these: how a wrong share costs.
MISSTATED = (0.1, 0.15, 0.25, 0.3)


def halves(y, seed=SPLIT_SEED):
    """A boolean mask of half of each class's rows (the batch's half), seeded."""
    rng = np.random.default_rng(seed)
    in_a = np.zeros(len(y), bool)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        in_a[rows[: len(rows) // 2]] = True
    return in_a


def batch_rows(is_unseen, rows, share, seed=SPLIT_SEED):
    """Rows of ``rows`` making a batch whose unseen share is ``share``."""
    rng = np.random.default_rng(seed)
    unseen, seen = rows[is_unseen[rows]], rows[~is_unseen[rows]]
    n_unseen = int(round(share / (1 - share) * len(seen)))
    if n_unseen <= len(unseen):
        return np.sort(np.r_[seen, rng.choice(unseen, n_unseen, replace=False)])
    n_seen = int(round(len(unseen) * (1 - share) / share))
    return np.sort(np.r_[rng.choice(seen, n_seen, replace=False), unseen])


def calibration_row(p, is_unseen, share):
    m = weighted_calibration(p, is_unseen, share)
    return {"auc": roc_auc(p, is_unseen), "ece": m["ece"], "brier_skill": m["brier_skill"]}


def _misstated(model, X, is_unseen, share):
    """{stated share: ECE at the true ``share``} of the model's P(unseen | x)."""
    out = {}
    for stated in MISSTATED:
        p = model.set_params(unseen_prior=stated).outlier_probability(X)
        out[str(stated)] = weighted_calibration(p, is_unseen, share)["ece"]
    model.set_params(unseen_prior=share)
    return out


def measure_pair(model, X_te, y_te, ks, misstated=True):
    is_unseen = np.isin(y_te, model.unseen_classes_)
    in_a = halves(y_te)
    rows_a, rows_b = np.flatnonzero(in_a), np.flatnonzero(~in_a)
    X_b, y_b, u_b = X_te[rows_b], y_te[rows_b], is_unseen[rows_b]
    out = {"inductive": {}, "adapted": {str(k): {} for k in ks}, "n_test_b": len(rows_b)}
    for share in SHARES:
        model.set_params(unseen_prior=share).adapt(None)
        out["inductive"][str(share)] = calibration_row(model.outlier_probability(X_b), u_b,
                                                       share)
        batch = X_te[batch_rows(is_unseen, rows_a, share)]
        for k in ks:
            model.adapt(batch, n_neighbors=k)
            out["adapted"][str(k)][str(share)] = {
                **calibration_row(model.outlier_probability(X_b), u_b, share),
                "batch_size": len(batch)}
            if share == 0.2:
                report = model.evaluate(X_b, y_b, [0.5])
                out["adapted"][str(k)]["routing"] = {
                    "soft": _gzsl(report["soft"]),
                    "hard": _gzsl({key: values[0] for key, values in report["curve"].items()})}
                if misstated:
                    out["adapted"][str(k)]["misstated"] = _misstated(model, X_b, u_b, share)
        if share == 0.2 and misstated:
            out["inductive"]["misstated"] = _misstated(model.adapt(None), X_b, u_b, share)
    model.set_params(unseen_prior=0.2).adapt(None)
    report = model.evaluate(X_b, y_b, [0.5])
    out["inductive"]["routing"] = {model.combine_: _gzsl(report[model.combine_])}
    return out


def _gzsl(r):
    return {key: r[key] for key in ("harmonic_mean", "seen_accuracy", "unseen_accuracy")}


def choose(rows):
    """(k, routing) from development rows: the highest mean Brier skill over pairs and
    shares, then the routing with the higher mean H at that k."""
    ks = list(rows[0]["adapted"])
    skill = {k: float(np.mean([r["adapted"][k][str(s)]["brier_skill"]
                               for r in rows for s in SHARES])) for k in ks}
    k = max(ks, key=skill.get)
    h = {how: float(np.mean([r["adapted"][k]["routing"][how]["harmonic_mean"] for r in rows]))
         for how in ("soft", "hard")}
    return {"n_neighbors": int(k), "routing": max(h, key=h.get), "mean_brier_skill": skill,
            "mean_h": h}


def main(argv=None):
    from fastzsl._platform import machine_description
    from fastzsl.adaptation import N_NEIGHBORS
    from fastzsl.app.datasets import load_dataset
    from fastzsl.app.experiment import fit_detectors
    from fastzsl.app.reproduce.experiments import prepare_seed
    from fastzsl.embeddings import load_glove_50d

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--dev", action="store_true",
                       help="the development pairs and the candidate settings")
    which.add_argument("--all", action="store_true", help="all 45 pairs")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--work", default="results-adaptation")
    args = parser.parse_args(argv)
    start, load_before = time.perf_counter(), os.getloadavg()
    data = load_dataset("fashion-mnist", None)
    names = list(data[4])
    kv, st = load_glove_50d(names), settings_for("fashion-mnist")
    pairs = development_pairs(names) if args.dev else \
        list(itertools.combinations(names, 2)) if args.all else list(PAIRS["fashion-mnist"])
    ks = CANDIDATE_K if args.dev else (N_NEIGHBORS,)
    name = "novelty-adaptation" + ("-dev" if args.dev else "-all" if args.all else "")
    misstated = not (args.dev or args.all)  # the sweep's rows say what a wrong share costs
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for pair in pairs:
        kept = work / ("--".join(sorted(pair, key=names.index)) + ".json")  # either order
        key = {"ks": list(ks), "split_seed": SPLIT_SEED,
               "misstated": list(MISSTATED) if misstated else None}
        if kept.exists():  # a row measured with these settings among others will do
            old = json.loads(kept.read_text())
            if old["key"]["split_seed"] == SPLIT_SEED and set(ks) <= set(old["key"]["ks"]) \
                    and (not misstated or old["key"].get("misstated") == list(MISSTATED)):
                row = old["row"]
                rows.append({**row, "adapted": {str(k): row["adapted"][str(k)] for k in ks}})
                continue
        t = time.perf_counter()
        run = prepare_seed(data, list(pair), 0, replace(st, max_per_class=st.sweep_per_class))
        model = fit_detectors(run.X_tr, run.y_tr, kv, list(pair), variants=("default",),
                              n_neighbors=st.n_neighbors, mapper_params=st.mapper_params,
                              seed=0)["default"]
        row = {"pair": list(pair), **measure_pair(model, run.X_te, run.y_te, ks, misstated),
               "seconds": round(time.perf_counter() - t, 1),
               "load_average": [round(x, 2) for x in os.getloadavg()]}
        kept.write_text(json.dumps({"key": key, "row": row}))
        rows.append(row)
        a = row["adapted"][str(ks[-1] if args.dev else ks[0])]
        print(f"  {pair[0]} / {pair[1]}: ECE " + " / ".join(
            f"{a[str(s)]['ece']:.3f}" for s in SHARES) + f" ({row['seconds']} s)", flush=True)
    results = {"machine": machine_description(), "date": datetime.datetime.now().isoformat(
        timespec="seconds"), "load_average_before": [round(x, 2) for x in load_before],
        "wall_seconds": round(time.perf_counter() - start, 1), "shares": list(SHARES),
        "settings": {"sweep_per_class": st.sweep_per_class, "seed": 0,
                     "split_seed": SPLIT_SEED},
        "development": args.dev, "option": "--dev" if args.dev else "--all" if args.all else "",
        "pairs": rows}
    if args.dev:
        results["choice"] = choose(rows)
    write_results(args.out, name, results, report)


def report(results) -> str:
    rows, dev = results["pairs"], results["development"]
    option = results.get("option", "--dev" if dev else "")  # not kept by the first runs
    ks = list(rows[0]["adapted"])
    lines = [
        "# P(unseen | x) adapted to an unlabelled batch: fashion-mnist, seed 0", "",
        f"- Machine: {results['machine']}; load average before "
        f"{results['load_average_before']}; {results['date']}; "
        f"{results['wall_seconds']} s.",
        "- " + {"--dev": "Development pairs (novelty_rules.py; none is a sweep pair)",
                "--all": "Every pair", "": "The sweep pairs"}[option] +
        ": the default model fitted without the pair; the test images split by class in "
        "halves A and B. At each share the model adapts on half A cut to that share and is "
        "measured on half B weighted to it: no measured image is in the batch.",
        f"- Produced by `python benchmarks/novelty_adaptation.py{' ' * bool(option)}{option}`.", ""]
    if dev:
        c = results["choice"]
        lines += [f"**Choice:** n_neighbors = {c['n_neighbors']} (mean Brier skill over "
                  "pairs and shares: " + ", ".join(f"k = {k}: {v:.3f}" for k, v in
                                                   c["mean_brier_skill"].items()) +
                  f"); routing {c['routing']} (mean H: " + ", ".join(
                      f"{how} {v:.3f}" for how, v in c["mean_h"].items()) + ").", ""]
    else:
        lines += _summary(rows, ks[0])
    head = "| unseen pair | k | ROC-AUC 0.05 / 0.2 / 0.5 | ECE 0.05 / 0.2 / 0.5 | " \
        "Brier skill 0.05 / 0.2 / 0.5 | H soft / hard | seen acc soft |"
    lines += [head, "|---|---|---|---|---|---|---|"]

    def cells(m):
        return [" / ".join(f"{m[str(s)][key]:{fmt}}" for s in SHARES)
                for key, fmt in (("auc", ".3f"), ("ece", ".3f"), ("brier_skill", ".2f"))]

    for r in rows:
        for k in ks:
            a = r["adapted"][k]
            rt = a["routing"]
            lines.append(f"| {r['pair'][0]} / {r['pair'][1]} | {k} | " + " | ".join(cells(a))
                         + f" | {rt['soft']['harmonic_mean']:.3f} / "
                         f"{rt['hard']['harmonic_mean']:.3f} | "
                         f"{rt['soft']['seen_accuracy']:.3f} |")
        i = r["inductive"]
        (how, rt), = i["routing"].items()
        lines.append(f"| {r['pair'][0]} / {r['pair'][1]} | inductive | " +
                     " | ".join(cells(i)) + f" | {how}: {rt['harmonic_mean']:.3f} | "
                     f"{rt['seen_accuracy']:.3f} |")
    if "misstated" in rows[0]["inductive"]:
        lines += _misstated_table(rows, ks[0])
    return "\n".join(lines) + "\n"


def _misstated_table(rows, k):
    stated = list(rows[0]["inductive"]["misstated"])
    return ["", "## A wrong share", "",
            "A batch whose unseen share is 0.2, stated as another share: ECE at the true "
            "share, adapted / inductive (the inductive gate moves its prior by Bayes' rule).",
            "", "| unseen pair | " + " | ".join(f"stated {s}" for s in stated) + " |",
            "|---|" + "---|" * len(stated)] + [
        f"| {r['pair'][0]} / {r['pair'][1]} | " + " | ".join(
            f"{r['adapted'][k]['misstated'][s]:.3f} / {r['inductive']['misstated'][s]:.3f}"
            for s in stated) + " |" for r in rows]


def _summary(rows, k):
    def ece_ok(m):
        return all(m[str(s)]["ece"] <= 0.05 for s in SHARES)

    adapted = [r["adapted"][k] for r in rows]
    inductive = [r["inductive"] for r in rows]

    def aucs(ms):
        return " / ".join(f"{np.mean([m[str(s)]['auc'] for m in ms]):.3f}" for s in SHARES)

    worst = sorted(rows, key=lambda r: r["adapted"][k]["0.2"]["auc"])[:3]
    return [f"**Adapted (k = {k}), {len(rows)} pairs:** ECE <= 0.05 at all three shares on "
            f"{sum(map(ece_ok, adapted))} (inductive: {sum(map(ece_ok, inductive))}); mean "
            f"ROC-AUC at shares 0.05 / 0.2 / 0.5: {aucs(adapted)} (inductive: "
            f"{aucs(inductive)}); lowest at 0.2: " + ", ".join(
                f"{r['pair'][0]} / {r['pair'][1]} {r['adapted'][k]['0.2']['auc']:.3f}"
                for r in worst) + f" (inductive lowest "
            f"{min(m['0.2']['auc'] for m in inductive):.3f}); mean H (soft, share 0.2) "
            f"{np.mean([m['routing']['soft']['harmonic_mean'] for m in adapted]):.3f} "
            "(inductive, routed as the rounds chose: "
            f"{np.mean([_routed_h(m) for m in inductive]):.3f}).",
            ""]


def _routed_h(inductive):
    (routed,) = inductive["routing"].values()
    return routed["harmonic_mean"]


if __name__ == "__main__":
    sys.exit(main())
