"""The main job: the full zero-shot model on Fashion-MNIST, end to end and offline.

Coates & Ng k-means features of the images, GloVe 6B 50-d class vectors, the semantic
mapping, the seen softmax, and novelty detection three ways (the default calibrated LoOP,
and the paper's LoOP and Gaussian detector); evaluation on the 10,000 test
images (seen / unseen / overall accuracy, the zero-shot accuracy among the unseen classes,
GZSL H) and a PNG of the accuracy-versus-threshold curves. A run folder (model,
feature extractor, results) is evaluated again or used to classify new images with
:func:`evaluate_run` and :func:`predict_file`.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import time
from pathlib import Path

import numpy as np

from .._optional import import_pyplot
from .._progress import stage
from .._validation import check_class_names
from .datasets import DEFAULT_UNSEEN as UNSEEN_BY_DATASET
from .datasets import load_fashion_mnist

DEFAULT_UNSEEN = UNSEEN_BY_DATASET["fashion-mnist"]
CURVE_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 21), 3)
# The models every run compares (one mapping and softmax): fastzsl's default novelty
# detection and the paper's two detectors.
DETECTOR_LABELS = {"default": "novelty gate, calibrated (default)", "loop": "LoOP (paper)",
                   "gaussian": "Gaussian (paper rule)"}


def features_without(new_extractor, images, labels):
    """``round_features`` for the novelty gate (:meth:`ZeroShotClassifier.fit`): held-out
    class names -> the features of all ``images``, by an extractor ``new_extractor()``
    learnt on the images of the other classes only (``labels``: each image's class)."""
    labels = np.asarray(labels)

    def round_features(held_out):
        keep = ~np.isin(labels, held_out)
        return new_extractor().fit(images[keep]).transform(images)

    return round_features


def train_fashion_mnist(*, unseen=DEFAULT_UNSEEN, n_centroids=400, stride=1,
                        n_patches=200_000, data_dir=None, seed=0, backend="auto",
                        mapper_params=None, softmax_params=None, max_train=None, max_test=None,
                        n_neighbors=20, clean_rounds=False, out_dir=None, progress=True,
                        log=print):
    """Train and evaluate on Fashion-MNIST; returns (results dict, the default model,
    extractor). The run folder's ``model.fzsl`` is the default model.

    ``max_train`` / ``max_test`` keep a seeded random subset of the seen training images /
    of the test images (for quick runs and tests); default: all. ``clean_rounds``: the
    novelty gate's rounds learn the features again without their held-out classes
    (:func:`features_without`; a feature fit and encoding per round).
    """
    from ..embeddings import load_glove_50d
    from ..features import CoatesNgFeatures

    start = time.perf_counter()
    timings = {}

    def lap(name, t0):
        timings[name] = round(time.perf_counter() - t0, 1)

    X_train, y_train, X_test, y_test, names = load_fashion_mnist(data_dir)
    unseen = check_class_names(unseen, names, "Fashion-MNIST")
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

    def new_extractor():
        return CoatesNgFeatures(n_centroids=n_centroids, stride=stride, n_patches=n_patches,
                                random_state=seed, progress=progress)

    extractor = new_extractor()
    with stage("features", enabled=progress):
        F_train = extractor.fit_transform(X_train[seen_rows])
        F_test = extractor.transform(X_test)
    lap("features", t)
    log(f"features: {F_train.shape[1]} dims ({n_centroids} centroids) in {timings['features']} s")

    kv = load_glove_50d(names)
    y_seen = names_arr[y_train[seen_rows]]
    y_true = names_arr[y_test]

    models = fit_detectors(
        F_train, y_seen, kv, unseen, backend=backend, n_neighbors=n_neighbors,
        mapper_params=mapper_params, softmax_params=softmax_params, seed=seed,
        progress=progress, timings=timings,
        round_features=features_without(new_extractor, X_train[seen_rows], y_seen)
        if clean_rounds else None)

    t = time.perf_counter()
    with stage("evaluation", enabled=progress):
        reports = {name: model.evaluate(F_test, y_true, CURVE_THRESHOLDS)
                   for name, model in models.items()}
    lap("evaluate", t)
    results = {
        "dataset": "fashion-mnist", "unseen": unseen, "n_centroids": n_centroids,
        "stride": stride, "seed": seed, "clean_rounds": clean_rounds,
        "n_train": int(seen_rows.sum()),
        "n_test": int(len(X_test)), "reports": reports, "timings_s": timings,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        models["default"].save(out_dir / "model.fzsl")
        extractor.save(out_dir / "features.fzsl")
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
        if importlib.util.find_spec("matplotlib") is None:
            log("threshold_curves.png skipped: matplotlib is not installed "
                "(pip install 'fastzsl[plot]')")
        else:
            plot_threshold_curves(reports, out_dir / "threshold_curves.png",
                                  title=f"Fashion-MNIST, unseen: {', '.join(unseen)}")
    return results, models["default"], extractor


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
    gate = model.gate_
    name = "default" if gate.calibrator_ is not None else gate.channels_[0][0]
    return results_table({"reports": {name: report},
                          "unseen": model.unseen_classes_.tolist()})


def predict_file(folder, input_path, output_path) -> int:
    """Classify the images (n, H, W[, C]) or feature rows (n, n_features) of a .npy file
    with a trained run folder; writes a CSV (row, predicted_class, probability,
    p_unseen) and returns the number of rows. ``probability`` is the class's under
    ``predict_proba`` (the calibrated Eq. 2 mixture)."""
    model, extractor = load_run(folder)
    data = np.load(input_path, mmap_mode="r", allow_pickle=False)
    features = extractor.transform(data) if data.ndim >= 3 else data
    labels, proba, p_unseen = model.predict_with_proba(features)
    column = {c: j for j, c in enumerate(model.classes_.tolist())}
    probability = proba[np.arange(len(labels)), [column[c] for c in labels]]
    with open(output_path, "w") as f:
        f.write("row,predicted_class,probability,p_unseen\n")
        for i, (label, p, u) in enumerate(zip(labels, probability, p_unseen)):
            f.write(f"{i},{label},{p:.6f},{u:.6f}\n")
    return len(labels)


def fit_detectors(F_train, y_seen, class_vectors, unseen, *, variants=tuple(DETECTOR_LABELS),
                  backend="auto", n_neighbors=20, mapper_params=None, softmax_params=None,
                  seed=0, progress=False, timings=None, round_features=None) -> dict:
    """The zero-shot model with fastzsl's default novelty detection ("default") and copies
    with the paper's LoOP ("loop") and Gaussian detector ("gaussian"), as many of them as
    ``variants`` names.

    All share one trained mapping and softmax (``refit_novelty``), so their numbers differ
    only by the novelty detection. ``timings``, a dict, receives the seconds of each step;
    ``round_features`` goes to :meth:`ZeroShotClassifier.fit`.
    """
    from ..mapping import SemanticMapper
    from ..novelty_gate import NoveltyGate, paper_gate, shorthand_detector
    from ..softmax import SoftmaxClassifier
    from ..zeroshot import ZeroShotClassifier

    detector = dict(n_neighbors=n_neighbors, backend=backend, progress=progress)
    settings = {"default": {"novelty": NoveltyGate([shorthand_detector("loop", **detector),
                                                    shorthand_detector("gaussian", **detector)])},
                "loop": {"novelty": paper_gate("loop", **detector)},
                "gaussian": {"novelty": paper_gate("gaussian", **detector)}}
    unknown = sorted(set(variants) - set(settings))
    if unknown:
        raise ValueError(f"unknown detector variants {unknown}; choose from {sorted(settings)}")
    timings = {} if timings is None else timings
    t = time.perf_counter()
    first, *others = variants
    base = ZeroShotClassifier(
        class_vectors, unseen, backend=backend,
        mapper=SemanticMapper(random_state=seed, progress=progress, **(mapper_params or {})),
        seen_classifier=SoftmaxClassifier(random_state=seed, progress=progress,
                                          **(softmax_params or {})),
        random_state=seed, progress=progress, **settings[first])
    # one progress bar a stage: the mapping, softmax and calibration rounds of the first
    # model train together, then each further detector
    with stage(f"training (mapping, softmax, {first} detector)", enabled=progress):
        models = {first: base.fit(F_train, y_seen, round_features=round_features)}
    timings[f"train (mapping, softmax, {first} detector)"] = round(time.perf_counter() - t, 1)
    for name in others:
        t = time.perf_counter()
        with stage(f"{name} detector", enabled=progress):
            models[name] = copy.deepcopy(base).refit_novelty(
                F_train, y_seen, round_features=round_features, **settings[name])
        timings[f"{name} detector"] = round(time.perf_counter() - t, 1)
    return models


def results_table(results) -> str:
    """Markdown table of the main numbers of ``train_fashion_mnist``."""
    rows = ["| detector | combine | threshold | seen acc | unseen acc | overall acc | "
            "GZSL seen (tr) | GZSL unseen (ts) | H |", "|---|---|---|---|---|---|---|---|---|"]
    for detector, report in results["reports"].items():
        for combine in ("soft", "hard"):
            s = report[combine]
            rows.append(
                f"| {DETECTOR_LABELS.get(detector, detector)} | {combine} | "
                f"{format(report['threshold'], '.3g') if combine == 'hard' else '-'} | "
                f"{s['seen_accuracy']:.3f} | {s['unseen_accuracy']:.3f} | "
                f"{s['overall_accuracy']:.3f} | {s['seen_per_class_accuracy']:.3f} | "
                f"{s['unseen_per_class_accuracy']:.3f} | {s['harmonic_mean']:.3f} |")
    zsl = next(iter(results["reports"].values()))["zero_shot_accuracy"]
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
    plt = import_pyplot()
    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4.2), sharey=True)
    axes = np.atleast_1d(axes)
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
        ax.set_title(DETECTOR_LABELS.get(detector, detector))
        ax.set_xlabel("threshold on P(unseen | x)  (image called unseen above it)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (hard routing)")
    axes[0].set_ylim(-0.02, 1.02)
    axes[-1].legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
