"""``fastzsl reproduce --all-pairs``: the whole default model for every pair of classes.

For each of the n(n-1)/2 pairs of a data set's classes, with one seed: the pair is held out
as unseen; the features (k-means dictionary, whitening, standardisation), the mapping, the
seen softmax and the novelty gate, with every choice it makes on pseudo-unseen rounds of
the eight seen classes, are fitted on the seen classes' training images alone (at most
``sweep_per_class`` each); then, on all test images, the measures of P(unseen | x) and of
the classifier. Nothing is reused across pairs: each pair's features are learnt without
its unseen classes.

Measures per pair (:func:`pair_measures`): ROC-AUC of P(unseen | x); at unseen shares
0.05, 0.2 and 0.5, with the model's prior set to the share, the ECE, Brier score and Brier
skill against the constant share (the test images reweighted to the share, so no image is
dropped); GZSL H and seen accuracy of ``predict``; and the gate's choices.
"""
from __future__ import annotations

import datetime
import itertools
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..._files import write_atomically
from .measures import SHARES, at_shares, roc_auc
from .settings import Settings


def pair_measures(model, X_te, y_te) -> dict:
    """The measures of one fitted model on labelled test images (see the module doc)."""
    is_unseen = np.isin(y_te, model.unseen_classes_)
    shares = at_shares(model, X_te, is_unseen)
    p = model.outlier_probability(X_te)
    report = model.evaluate(X_te, y_te, [0.5])
    routed = report[model.combine_]
    gate = model.gate_
    return {"auc": roc_auc(p, is_unseen), "shares": shares,
            "harmonic_mean": routed["harmonic_mean"], "seen_accuracy": routed["seen_accuracy"],
            "unseen_accuracy": routed["unseen_accuracy"],
            "soft_harmonic_mean": report["soft"]["harmonic_mean"],
            "hard_harmonic_mean": report["hard"]["harmonic_mean"],
            "zero_shot_accuracy": report["zero_shot_accuracy"],
            "choice": {"calibration": gate.calibration_, "routing": gate.routing_,
                       "threshold": float(model.threshold_),
                       "rounds": {k: v for k, v in gate.choice_.items()}}}


def run_all_pairs(dataset="fashion-mnist", *, data_dir=None, seed=0, st: Settings, out,
                  backend="auto", progress=False, pairs=None, kept=None, clean_rounds=False,
                  log=print) -> dict:
    """Fit and measure the default model for every pair (or ``pairs``); writes
    ``out/all_pairs.json``, ``out/all_pairs.md`` and ``out/auc_grid.png`` and returns the
    results. Each pair's row is kept in the folder ``kept`` (default ``out/pairs``).
    ``clean_rounds``: the gate's rounds learn the features again without their held-out
    classes (``round_features``; about a minute more a pair)."""
    from ..._platform import machine_description
    from ...embeddings import load_glove_50d
    from ...novelty_gate import CHOICE_RULE
    from ..datasets import load_dataset
    from ..experiment import fit_detectors
    from .experiments import prepare_seed

    start, load_before = time.perf_counter(), os.getloadavg()
    data = load_dataset(dataset, data_dir)
    names = list(data[4])
    kv = load_glove_50d(names)
    pairs = [tuple(p) for p in (pairs or itertools.combinations(names, 2))]
    sweep = replace(st, max_per_class=st.sweep_per_class)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Each pair's row is kept as it is measured, so a stopped run resumes where it was and
    # a subset run (the sweep's six) counts towards the whole grid.
    done = Path(kept) if kept is not None else out / "pairs"
    done.mkdir(parents=True, exist_ok=True)
    key = json.loads(json.dumps({"dataset": dataset, "seed": seed,  # as a kept file reads
                                 "settings": asdict(sweep), "choice_rule": CHOICE_RULE,
                                 "clean_rounds": clean_rounds}))
    rows = []
    for pair in pairs:
        kept = done / ("--".join(sorted(pair, key=names.index)) + ".json")  # either order
        if kept.exists() and json.loads(kept.read_text())["key"] == key:
            rows.append({**json.loads(kept.read_text())["row"], "pair": list(pair)})
            log(f"  {pair[0]} / {pair[1]}: kept from {kept}")
            continue
        t = time.perf_counter()
        run = prepare_seed(data, list(pair), seed, sweep, backend=backend, progress=progress)
        model = fit_detectors(run.X_tr, run.y_tr, kv, list(pair), variants=("default",),
                              backend=backend, n_neighbors=st.n_neighbors,
                              mapper_params=st.mapper_params, seed=seed, progress=progress,
                              round_features=run.relearn_features if clean_rounds else None
                              )["default"]
        rows.append({"pair": list(pair), **pair_measures(model, run.X_te, run.y_te),
                     "seconds": round(time.perf_counter() - t, 1),
                     "load_average": [round(x, 2) for x in os.getloadavg()]})
        text = json.dumps({"key": key, "row": rows[-1]}, indent=1)
        write_atomically(kept, lambda f: f.write(text.encode()))
        r = rows[-1]
        log(f"  {pair[0]} / {pair[1]}: ROC-AUC {r['auc']:.3f}, ECE@0.2 "
            f"{r['shares']['0.2']['ece']:.3f}, H {r['harmonic_mean']:.3f}, seen "
            f"{r['seen_accuracy']:.3f}; chose {r['choice']['calibration']}, "
            f"{r['choice']['routing']} ({r['seconds']} s)")
    results = {
        "dataset": dataset, "seed": seed, "settings": asdict(sweep), "backend": backend,
        "machine": machine_description(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - start, 1), "classes": names,
        "pairs": rows, "nearest_seen_words": nearest_seen_words(names, kv, pairs),
        "nearest_seen_images": nearest_seen_images(data, pairs),
    }
    (out / "all_pairs.json").write_text(json.dumps(results, indent=1))
    (out / "all_pairs.md").write_text(all_pairs_report(results))
    plot_auc_grid(results, out / "auc_grid.png")
    log(f"wrote {out}/all_pairs.md, all_pairs.json and auc_grid.png in "
        f"{results['wall_seconds']} s")
    return results


def nearest_seen_words(names, kv, pairs) -> dict:
    """{"a / b": [[unseen, nearest seen class, cosine of their class vectors], ...]}: how
    close in the word space each held-out class is to a class the model saw (a post-hoc
    reading of hard pairs, not a choice)."""
    from ...embeddings import class_vectors

    W = class_vectors(names, kv).astype(np.float64)
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    out = {}
    for pair in pairs:
        seen = [i for i, name in enumerate(names) if name not in pair]
        near = []
        for name in pair:
            cos = W[seen] @ W[names.index(name)]
            near.append([name, names[seen[int(np.argmax(cos))]], round(float(cos.max()), 3)])
        out[" / ".join(pair)] = near
    return out


def nearest_seen_images(data, pairs, per_class=1000, seed=0) -> dict:
    """{"a / b": [[unseen, seen class, share], ...]}: of each held-out class's test images,
    the share whose nearest training image (in pixels, among ``per_class`` seeded images of
    each seen class) belongs to the one seen class most of them fall to. A model-free
    reading of how alike the classes look (post hoc, not a choice)."""
    X_tr, y_tr, X_te, y_te, names = data
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y_tr == c))[:per_class]
                           for c in range(len(names))])
    R = X_tr[keep].reshape(len(keep), -1).astype(np.float32)
    labels = y_tr[keep]
    Q = X_te.reshape(len(X_te), -1).astype(np.float32)
    # each test image's distance to its nearest training image of every class
    nearest = np.empty((len(Q), len(names)))
    rn = (R ** 2).sum(1)
    for start in range(0, len(Q), 2000):
        q = Q[start:start + 2000]
        d2 = (q ** 2).sum(1)[:, None] - 2 * q @ R.T + rn[None, :]
        for c in range(len(names)):
            nearest[start:start + len(q), c] = d2[:, labels == c].min(1)
    out = {}
    for pair in pairs:
        ids = [names.index(name) for name in pair]
        seen = np.array([c for c in range(len(names)) if c not in ids])
        near = []
        for name, c in zip(pair, ids):
            fell = seen[np.argmin(nearest[y_te == c][:, seen], axis=1)]
            mode = np.bincount(fell, minlength=len(names)).argmax()
            near.append([name, names[mode], round(float(np.mean(fell == mode)), 3)])
        out[" / ".join(pair)] = near
    return out


def summary(rows) -> dict:
    """Mean and worst ROC-AUC, and how many pairs meet each calibration target."""
    auc = np.array([r["auc"] for r in rows])
    worst = sorted(rows, key=lambda r: r["auc"])[:5]
    return {"mean_auc": float(auc.mean()), "min_auc": float(auc.min()),
            "worst": [(r["pair"], r["auc"]) for r in worst],
            "ece_ok": sum(all(s["ece"] <= 0.05 for s in r["shares"].values()) for r in rows),
            "mean_h": float(np.mean([r["harmonic_mean"] for r in rows])),
            "mean_seen": float(np.mean([r["seen_accuracy"] for r in rows])),
            "choices": {c: sum(r["choice"]["calibration"] == c for r in rows)
                        for c in sorted({r["choice"]["calibration"] for r in rows})},
            "routings": {c: sum(r["choice"]["routing"] == c for r in rows)
                         for c in ("soft", "hard")}}


def all_pairs_report(results) -> str:
    rows, s = results["pairs"], summary(results["pairs"])
    lines = [
        f"# Every pair held out: {results['dataset']}, seed {results['seed']}",
        "",
        f"- Machine: {results['machine']}; load average before {results['load_average_before']},"
        f" after {results['load_average_after']}.",
        f"- Date {results['date']}; {sum(r['seconds'] for r in rows):.0f} s of fitting and "
        f"measuring over the pairs (each pair's seconds below; rows kept from earlier runs "
        f"keep theirs); {results['settings']['sweep_per_class']} training images per seen "
        f"class, {results['settings']['centroids']} centroids, stride "
        f"{results['settings']['stride']}.",
        f"- This call: {results['wall_seconds']} s; "
        "the load average of each pair's end is in the JSON.",
        "- Per pair, everything (features, mapping, softmax, and every choice of the novelty "
        "gate, on pseudo-unseen rounds of the seen classes) is fitted without the pair; the "
        "numbers are then measured once on all test images. No number below took part in "
        "any choice.",
        "",
        f"Mean ROC-AUC of P(unseen | x) over {len(rows)} pairs: **{s['mean_auc']:.3f}** "
        f"(lowest {s['min_auc']:.3f}); ECE <= 0.05 at all three shares on {s['ece_ok']} of "
        f"{len(rows)} pairs; mean H {s['mean_h']:.3f}, mean seen accuracy {s['mean_seen']:.3f}.",
        f"Choices made on the rounds: calibration {s['choices']}; routing {s['routings']}.",
        "",
        "Worst pairs (ROC-AUC): " + ", ".join(f"{a} / {b} {v:.3f}" for (a, b), v in s["worst"])
        + ".",
        *_nearness_lines(results, s),
        "",
        "![ROC-AUC per pair](auc_grid.png)",
        "",
        "| unseen pair | ROC-AUC | ECE 0.05 / 0.2 / 0.5 | Brier skill 0.05 / 0.2 / 0.5 | "
        "H | seen acc | unseen acc | calibration | routing | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sh = r["shares"]
        lines.append(
            f"| {r['pair'][0]} / {r['pair'][1]} | {r['auc']:.3f} | "
            + " / ".join(f"{sh[k]['ece']:.3f}" for k in sh) + " | "
            + " / ".join(f"{sh[k]['brier_skill']:.2f}" for k in sh)
            + f" | {r['harmonic_mean']:.3f} | {r['seen_accuracy']:.3f} | "
            f"{r['unseen_accuracy']:.3f} | {r['choice']['calibration']} | "
            f"{r['choice']['routing']} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


_NEARNESS = {
    "nearest_seen_images": "the seen class most of its test images' nearest training image "
                           "(pixels) belongs to, and that share",
    "nearest_seen_words": "the seen class nearest in the word space, and the cosine of the "
                          "class vectors",
}


def _nearness_lines(results, s) -> list:
    """For the worst pairs, each held-out class's nearest seen class in pixels and in the
    word space; over all pairs, how the ROC-AUC goes with each nearness (Spearman)."""
    lines, rows = [], results["pairs"]
    for key, what in _NEARNESS.items():
        near = results.get(key)
        if not near:
            continue
        lines += ["", f"Worst pairs, per held-out class, {what}: "
                  + "; ".join(", ".join(f"{u} -> {v} ({c:.2f})"
                                        for u, v, c in near[f"{a} / {b}"])
                              for (a, b), _ in s["worst"]) + "."]
        if len(rows) >= 3:
            from scipy.stats import spearmanr

            closest = [max(c for _, _, c in near[" / ".join(r["pair"])]) for r in rows]
            rho = spearmanr(closest, [r["auc"] for r in rows]).statistic
            lines.append(f"Spearman correlation over the {len(rows)} pairs between ROC-AUC "
                         f"and the larger of the pair's two values: {rho:.2f}.")
    return lines


def plot_auc_grid(results, path):
    """A classes x classes grid of the ROC-AUC with each pair held out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = results["classes"]
    grid = np.full((len(names), len(names)), np.nan)
    for r in results["pairs"]:
        i, j = names.index(r["pair"][0]), names.index(r["pair"][1])
        grid[i, j] = grid[j, i] = r["auc"]
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(grid, vmin=0.5, vmax=1.0, cmap="viridis")
    for i, j in zip(*np.where(~np.isnan(grid))):
        ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if grid[i, j] < 0.75 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    fig.colorbar(image, ax=ax, label="ROC-AUC of P(unseen | x)")
    ax.set_title(f"{results['dataset']}: each pair held out as unseen (seed {results['seed']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
