"""The main job: the full zero-shot model on Fashion-MNIST, end to end and offline.

Coates & Ng k-means features of the images, GloVe 6B 50-d class vectors, the semantic
mapping, the seen softmax, LoOP and the Gaussian detector; evaluation on the 10,000 test
images (seen / unseen / overall accuracy, the zero-shot accuracy among the unseen classes,
GZSL H) and a PNG of the accuracy-versus-threshold curves. A run folder (model,
feature extractor, results) is evaluated again or used to classify new images with
:func:`evaluate_run` and :func:`predict_file`.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np

from .datasets import load_fashion_mnist

DEFAULT_UNSEEN = ("sandal", "pullover")
CURVE_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 21), 3)


def train_fashion_mnist(*, unseen=DEFAULT_UNSEEN, n_centroids=400, stride=1,
                        n_patches=200_000, data_dir=None, seed=0, backend="auto",
                        mapper_params=None, softmax_params=None, max_train=None, max_test=None,
                        n_neighbors=20, out_dir=None, progress=True, log=print):
    """Train and evaluate on Fashion-MNIST; returns (results dict, model, extractor).

    ``max_train`` / ``max_test`` keep a seeded random subset of the seen training images /
    of the test images (for quick runs and tests); default: all.
    """
    from ..embeddings import load_glove_50d
    from ..features import CoatesNgFeatures

    start = time.perf_counter()
    timings = {}

    def lap(name, t0):
        timings[name] = round(time.perf_counter() - t0, 1)

    X_train, y_train, X_test, y_test, names = load_fashion_mnist(data_dir)
    unseen = list(unseen)
    unknown = [u for u in unseen if u not in names]
    if unknown:
        raise ValueError(f"unknown class names {unknown}; Fashion-MNIST has {names}")
    names_arr = np.array(names)
    rng = np.random.default_rng(seed)
    seen_rows = ~np.isin(names_arr[y_train], unseen)
    if max_train is not None and max_train < seen_rows.sum():
        keep = rng.choice(np.flatnonzero(seen_rows), size=max_train, replace=False)
        seen_rows = np.zeros_like(seen_rows)
        seen_rows[keep] = True
    if max_test is not None and max_test < len(X_test):
        keep = np.sort(rng.choice(len(X_test), size=max_test, replace=False))
        X_test, y_test = X_test[keep], y_test[keep]
    log(f"Fashion-MNIST: {seen_rows.sum()} training images of {10 - len(unseen)} seen classes; "
        f"test: {len(X_test)} images; unseen: {', '.join(unseen)}")

    t = time.perf_counter()
    extractor = CoatesNgFeatures(n_centroids=n_centroids, stride=stride, n_patches=n_patches,
                                 random_state=seed, progress=progress)
    F_train = extractor.fit_transform(X_train[seen_rows])
    F_test = extractor.transform(X_test)
    lap("features", t)
    log(f"features: {F_train.shape[1]} dims ({n_centroids} centroids) in {timings['features']} s")

    kv = load_glove_50d(names)
    y_seen = names_arr[y_train[seen_rows]]
    y_true = names_arr[y_test]

    loop_model, gauss_model = fit_both_detectors(
        F_train, y_seen, kv, unseen, backend=backend, n_neighbors=n_neighbors,
        mapper_params=mapper_params, softmax_params=softmax_params, seed=seed,
        progress=progress, timings=timings)

    t = time.perf_counter()
    reports = {"loop": loop_model.evaluate(F_test, y_true, CURVE_THRESHOLDS),
               "gaussian": gauss_model.evaluate(F_test, y_true, CURVE_THRESHOLDS)}
    lap("evaluate", t)
    results = {
        "dataset": "fashion-mnist", "unseen": unseen, "n_centroids": n_centroids,
        "stride": stride, "seed": seed, "n_train": int(seen_rows.sum()),
        "n_test": int(len(X_test)), "reports": reports, "timings_s": timings,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        loop_model.save(out_dir / "model.fzsl")
        extractor.save(out_dir / "features.fzsl")
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
        plot_threshold_curves(reports, out_dir / "threshold_curves.png",
                              title=f"Fashion-MNIST, unseen: {', '.join(unseen)}")
    return results, loop_model, extractor


def load_run(folder):
    """The (model, feature extractor) of a run folder written by :func:`train_fashion_mnist`."""
    from ..persistence import load

    folder = Path(folder)
    return load(folder / "model.fzsl"), load(folder / "features.fzsl")


def evaluate_run(folder, data_dir=None) -> str:
    """A trained run folder's numbers on the Fashion-MNIST test images, as
    :func:`results_table` writes them."""
    model, extractor = load_run(folder)
    _, _, X_test, y_test, names = load_fashion_mnist(data_dir)
    F = extractor.transform(X_test)
    report = model.evaluate(F, np.array(names)[y_test], CURVE_THRESHOLDS)
    return results_table({"reports": {model.novelty: report},
                          "unseen": model.unseen_classes_.tolist()})


def predict_file(folder, input_path, output_path) -> int:
    """Classify the images (n, H, W[, C]) or feature rows (n, n_features) of a .npy file
    with a trained run folder; writes a CSV (row, predicted_class, probability,
    p_unseen) and returns the number of rows."""
    model, extractor = load_run(folder)
    data = np.load(input_path, mmap_mode="r", allow_pickle=False)
    features = extractor.transform(data) if data.ndim >= 3 else data
    proba = model.predict_proba(features)
    p_unseen = model.outlier_probability(features)
    labels = model.classes_[proba.argmax(axis=1)]
    with open(output_path, "w") as f:
        f.write("row,predicted_class,probability,p_unseen\n")
        for i, (label, p, u) in enumerate(zip(labels, proba.max(axis=1), p_unseen)):
            f.write(f"{i},{label},{p:.6f},{u:.6f}\n")
    return len(labels)


def fit_both_detectors(F_train, y_seen, class_vectors, unseen, *, backend="auto",
                       n_neighbors=20, mapper_params=None, softmax_params=None, seed=0,
                       progress=False, timings=None):
    """The zero-shot model with LoOP, and a copy with the Gaussian detector.

    Both share one trained mapping and softmax (``refit_novelty``), so their numbers differ
    only by the detector. ``timings``, a dict, receives the seconds of each step.

    Returns
    -------
    (ZeroShotClassifier, ZeroShotClassifier)
        The LoOP model and the Gaussian model.
    """
    from ..zeroshot import ZeroShotClassifier

    timings = {} if timings is None else timings
    t = time.perf_counter()
    loop_model = ZeroShotClassifier(class_vectors, unseen, novelty="loop", backend=backend,
                                    n_neighbors=n_neighbors,
                                    mapper_params=mapper_params, softmax_params=softmax_params,
                                    random_state=seed, progress=progress).fit(F_train, y_seen)
    timings["train (mapping, softmax, LoOP)"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    gauss_model = copy.deepcopy(loop_model).refit_novelty(F_train, y_seen, novelty="gaussian")
    timings["Gaussian detector"] = round(time.perf_counter() - t, 1)
    return loop_model, gauss_model


def results_table(results) -> str:
    """Markdown table of the main numbers of ``train_fashion_mnist``."""
    rows = ["| detector | combine | threshold | seen acc | unseen acc | overall acc | "
            "GZSL seen (tr) | GZSL unseen (ts) | H |", "|---|---|---|---|---|---|---|---|---|"]
    for detector, report in results["reports"].items():
        for combine in ("soft", "hard"):
            s = report[combine]
            rows.append(
                f"| {detector} | {combine} | {report['threshold'] if combine == 'hard' else '-'} | "
                f"{s['seen_accuracy']:.3f} | {s['unseen_accuracy']:.3f} | "
                f"{s['overall_accuracy']:.3f} | {s['seen_per_class_accuracy']:.3f} | "
                f"{s['unseen_per_class_accuracy']:.3f} | {s['harmonic_mean']:.3f} |")
    zsl = results["reports"]["loop"]["zero_shot_accuracy"]
    rows.append("")
    rows.append(f"zero-shot accuracy among the unseen classes "
                f"({', '.join(results['unseen'])}; unseen images, unseen classifier only): "
                f"{zsl:.3f}")
    return "\n".join(rows)


def plot_threshold_curves(reports, path, title="", spread=None):
    """Seen / unseen / overall accuracy against the novelty threshold, one panel a detector.

    ``spread`` ({detector: {metric: list}}, optional) draws a band of +- that around each
    curve (e.g. the standard deviation over seeds when ``reports`` holds means).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4.2), sharey=True)
    axes = np.atleast_1d(axes)
    labels = {"loop": "LoOP", "gaussian": "Gaussian (paper rule)"}
    for ax, (detector, report) in zip(axes, reports.items()):
        curve = report["curve"]
        for key, style in (("seen_accuracy", "-o"), ("unseen_accuracy", "-s"),
                           ("overall_accuracy", "-^")):
            line, = ax.plot(curve["thresholds"], curve[key], style, markersize=3,
                            label=key.replace("_", " "))
            if spread is not None:
                mean, sd = np.asarray(curve[key]), np.asarray(spread[detector][key])
                ax.fill_between(curve["thresholds"], mean - sd, mean + sd,
                                color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axvline(report["threshold"], color="grey", linestyle=":", label="default threshold")
        ax.set_title(labels.get(detector, detector))
        ax.set_xlabel("threshold on P(unseen | x)  (image called unseen above it)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (hard routing)")
    axes[0].set_ylim(-0.02, 1.02)
    axes[-1].legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
