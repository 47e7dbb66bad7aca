"""The paper's experiments (SPEC section 6), offline, as a results folder: ``fastzsl reproduce``.

On Fashion-MNIST (or CIFAR-10 from a user's ``cifar-10-batches-py`` folder) with GloVe 6B
50-d class vectors and Coates & Ng k-means features, for each seed:

- **main setting** (one unseen pair, the paper's split: 95% of each seen class's training
  images train, 5% of every class validate): seen / unseen / overall accuracy against the
  threshold for LoOP and the Gaussian detector, the soft (Eq. 2) and hard pipelines, GZSL
  numbers, and a threshold tuned on the validation set;
- **distractor words**: the unseen images classified among the unseen class words plus
  0 to 40 extra candidates (GloVe's nearest neighbours of each unseen word, or random words);
- **mapping**: the two-layer tanh network against a one-layer linear map;
- **novelty space**: LoOP and the Gaussian model in the semantic space against the raw
  feature space (and its 50-d PCA);
- beyond the paper: **calibration** of P(unseen | x) (reliability diagram, ECE) and LoOP
  with **exact against approximate (faiss IVF) kNN**;
- **pair sweep**: 2-way zero-shot accuracy between the two unseen classes for several pairs
  (a smaller training subset; the paper's bar chart).

Nothing unsupervised sees an unseen class: the k-means dictionary, whitening and feature
standardisation are fitted on the seen classes' training images of each run (each pair of
the sweep fits its own).
"""
from __future__ import annotations

import datetime
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .datasets import DATASETS, load_dataset, per_class_subset, zero_shot_split
from .experiment import CURVE_THRESHOLDS, fit_both_detectors, plot_threshold_curves

DEFAULT_UNSEEN = {"fashion-mnist": ("sandal", "pullover"), "cifar10": ("cat", "truck")}
# The pair sweep: distant and close pairs. CIFAR-10: the pairs the paper reports.
PAIRS = {
    "fashion-mnist": (("sandal", "pullover"), ("trouser", "bag"), ("dress", "sneaker"),
                      ("t-shirt", "shirt"), ("pullover", "coat"), ("sneaker", "ankle boot")),
    "cifar10": (("cat", "truck"), ("cat", "dog"), ("airplane", "automobile"),
                ("automobile", "deer"), ("deer", "ship")),
}
DETECTOR_LABELS = {"loop": "LoOP", "gaussian": "Gaussian (paper rule)"}
# Random distractors come from this band of GloVe's frequency-ordered vocabulary: common
# enough to be real words, past the function words at the top.
RANDOM_WORD_BAND = (1000, 50_000)
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Settings:
    """Sizes of one ``reproduce`` run (all recorded in its results)."""

    centroids: int = 400
    stride: int = 1
    n_patches: int = 200_000
    max_per_class: int | None = None     # main setting: training images per seen class
    sweep_per_class: int = 2000          # pair sweep: training images per seen class
    max_test: int | None = None          # main setting: random test subset
    n_pairs: int | None = None           # first n pairs of PAIRS (None: all)
    distractor_counts: tuple = (0, 1, 2, 3, 5, 10, 20, 30, 40)
    raw_reference: int = 10_000          # reference points of the novelty-space comparison
    n_neighbors: int = 20
    # Adam everywhere, so the mapping is trained the same way at every data size.
    mapper_params: dict = field(default_factory=lambda: {"optimizer": "adam"})


QUICK = dict(centroids=64, stride=2, n_patches=50_000, max_per_class=300, sweep_per_class=200,
             max_test=2000, n_pairs=3, distractor_counts=(0, 1, 5, 10, 20, 40),
             raw_reference=1000, n_neighbors=10)


def settings_for(dataset, quick=False, **overrides) -> Settings:
    """The default sizes of a data set (``quick``: a smoke run of a minute or two);
    ``overrides`` that are None are ignored."""
    base = Settings(stride=2, sweep_per_class=1000) if dataset == "cifar10" else Settings()
    if quick:
        base = replace(base, **QUICK)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


# --------------------------------------------------------------------------- small pieces
def nearest_word_accuracy(F, y, candidate_vectors, candidate_names):
    """Accuracy of labelling each row of F with its nearest candidate word vector.

    This is the unseen classifier's decision (isotropic Gaussians with a shared variance
    around the word vectors), over any candidate set.
    """
    W = np.asarray(candidate_vectors, dtype=np.float64)
    F = np.asarray(F, dtype=np.float64)
    sq = (F ** 2).sum(1)[:, None] - 2 * F @ W.T + (W ** 2).sum(1)[None, :]
    return float(np.mean(np.asarray(candidate_names)[np.argmin(sq, axis=1)] == y))


def nearest_words(vocab, matrix, vector, n, exclude):
    """The ``n`` alphabetic words of ``vocab`` with the highest cosine similarity to
    ``vector``, skipping ``exclude`` (lower-case words)."""
    v = np.asarray(vector, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1)
    sims = (matrix @ v) / (np.maximum(norms, 1e-12) * np.linalg.norm(v))
    words = []
    for i in np.argsort(-sims):
        w = vocab[i]
        if w.isalpha() and w not in exclude:
            words.append(w)
            if len(words) == n:
                break
    return words


def random_words(vocab, n, exclude, seed):
    """``n`` distinct random alphabetic words from ``RANDOM_WORD_BAND`` of the vocabulary."""
    lo, hi = RANDOM_WORD_BAND
    pool = [w for w in vocab[lo:hi] if w.isalpha() and w not in exclude]
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]


def reliability(p, is_positive, n_bins=CALIBRATION_BINS) -> dict:
    """Reliability-diagram bins and expected calibration error of probabilities ``p`` of
    the event ``is_positive`` (equal-width bins on [0, 1], 1.0 in the last bin)."""
    p = np.asarray(p, dtype=np.float64)
    is_positive = np.asarray(is_positive, dtype=bool)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(float)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    positives = np.bincount(bins, weights=is_positive.astype(float), minlength=n_bins)
    ece = float(np.sum(np.abs(positives - sum_p)) / p.size)  # sum_b n_b/N |acc_b - conf_b|
    return {"count": count.tolist(), "sum_p": sum_p.tolist(), "positives": positives.tolist(),
            "ece": ece, "brier": float(np.mean((p - is_positive) ** 2)),
            "base_rate": float(is_positive.mean())}


def _roc_auc(p, is_positive):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_positive, p))


def _summary(report):
    """The headline numbers of an ``evaluate`` report (no curve)."""
    return {"soft": report["soft"], "hard": report["hard"], "threshold": report["threshold"],
            "zero_shot_accuracy": report["zero_shot_accuracy"]}


def _at_tuned_threshold(val_report, test_report):
    """Test numbers at the curve threshold with the best validation overall accuracy."""
    i = int(np.argmax(val_report["curve"]["overall_accuracy"]))
    curve = test_report["curve"]
    return {"threshold": curve["thresholds"][i],
            **{key: values[i] for key, values in curve.items() if key != "thresholds"}}


def _timer(times, name, t0):
    times[name] = round(time.perf_counter() - t0, 1)


# --------------------------------------------------------------------------- one seed
def main_setting(data, unseen, seed, st: Settings, kv, distractors, *, backend="auto",
                 progress=False, log=print) -> dict:
    """Every experiment except the pair sweep, for one seed. Returns plain numbers."""
    from sklearn.decomposition import PCA

    from .features import CoatesNgFeatures
    from .gaussian import GaussianNovelty
    from .loop import LoOP

    X_train, y_train, X_test, y_test, names = data
    names_arr = np.array(names)
    unseen_ids = [names.index(u) for u in unseen]
    train_idx, val_idx = zero_shot_split(y_train, unseen_ids, random_state=seed)
    train_idx = per_class_subset(train_idx, y_train, st.max_per_class, random_state=seed)
    test_idx = np.arange(len(y_test))
    if st.max_test is not None and st.max_test < len(y_test):
        test_idx = np.sort(np.random.default_rng(seed).choice(len(y_test), st.max_test,
                                                              replace=False))
    times = {}
    t = time.perf_counter()
    extractor = CoatesNgFeatures(n_centroids=st.centroids, stride=st.stride,
                                 n_patches=st.n_patches, random_state=seed, progress=progress)
    X_tr = extractor.fit_transform(X_train[train_idx])
    X_val, X_te = extractor.transform(X_train[val_idx]), extractor.transform(X_test[test_idx])
    _timer(times, "features", t)
    y_tr, y_val = names_arr[y_train[train_idx]], names_arr[y_train[val_idx]]
    y_te = names_arr[y_test[test_idx]]
    is_unseen = np.isin(y_te, unseen)
    log(f"  seed {seed}: {len(train_idx)} training, {len(val_idx)} validation, {len(test_idx)} "
        f"test images; {X_tr.shape[1]}-d features in {times['features']} s")

    # -- the model with both detectors: curves, soft vs hard, GZSL, tuned threshold
    loop_model, gauss_model = fit_both_detectors(
        X_tr, y_tr, kv, unseen, backend=backend, n_neighbors=st.n_neighbors,
        mapper_params=st.mapper_params, seed=seed, progress=progress, timings=times)
    models = {"loop": loop_model, "gaussian": gauss_model}
    t = time.perf_counter()
    reports, tuned, calibration, auc = {}, {}, {}, {}
    for name, model in models.items():
        reports[name] = model.evaluate(X_te, y_te, CURVE_THRESHOLDS)
        tuned[name] = _at_tuned_threshold(model.evaluate(X_val, y_val, CURVE_THRESHOLDS),
                                          reports[name])
        p = model.outlier_probability(X_te)
        calibration[name] = reliability(p, is_unseen)
        auc[name] = _roc_auc(p, is_unseen)
    _timer(times, "evaluate", t)

    # -- distractor words: unseen test images among the unseen words + n extra candidates
    F_tr, F_te = loop_model.transform(X_tr), loop_model.transform(X_te)
    W_unseen = loop_model.class_vectors_[-len(unseen):]
    distractor_acc = {}
    for condition, (words, vectors) in distractors.items():
        distractor_acc[condition] = [
            nearest_word_accuracy(F_te[is_unseen], y_te[is_unseen],
                                  np.vstack([W_unseen, vectors[:n]]), list(unseen) + words[:n])
            for n in st.distractor_counts]

    # -- 2-layer tanh against a 1-layer linear mapping
    t = time.perf_counter()
    lin_loop, lin_gauss = fit_both_detectors(
        X_tr, y_tr, kv, unseen, backend=backend, n_neighbors=st.n_neighbors,
        mapper_params={**st.mapper_params, "hidden": 0}, seed=seed, progress=progress)
    mapping = {}
    for label, (ml, mg) in {"2-layer tanh (h=200)": (loop_model, gauss_model),
                            "1-layer linear": (lin_loop, lin_gauss)}.items():
        rl, rg = (reports["loop"], reports["gaussian"]) if ml is loop_model else \
            (ml.evaluate(X_te, y_te, CURVE_THRESHOLDS), mg.evaluate(X_te, y_te, CURVE_THRESHOLDS))
        F_map = ml.transform(X_tr)
        mapping[label] = {
            "zero_shot_accuracy": rl["zero_shot_accuracy"], "loop_soft": rl["soft"],
            "gaussian_hard": rg["hard"],
            "loop_auc": _roc_auc(ml.outlier_probability(X_te), is_unseen),
            "gaussian_auc": _roc_auc(mg.outlier_probability(X_te), is_unseen),
            "train_mse": float(np.mean(((F_map - ml.class_vectors_[
                np.searchsorted(ml.seen_classes_, y_tr)]) ** 2).sum(1)))}
    _timer(times, "linear mapping", t)

    # -- novelty detection in the semantic space against the raw feature space
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    ref = np.sort(rng.choice(len(X_tr), size=min(st.raw_reference, len(X_tr)), replace=False))
    pca = PCA(n_components=min(F_tr.shape[1], len(ref), X_tr.shape[1]),
              random_state=seed).fit(X_tr[ref])
    word_means = dict(zip(loop_model.seen_classes_.tolist(),
                          loop_model.class_vectors_[:len(loop_model.seen_classes_)]))
    spaces = {
        f"semantic ({F_tr.shape[1]}-d mapped)": (F_tr[ref], F_te, word_means),
        f"raw features ({X_tr.shape[1]}-d)": (X_tr[ref], X_te, None),
        f"raw features, PCA to {pca.n_components_}-d": (pca.transform(X_tr[ref]),
                                                         pca.transform(X_te), None),
    }
    novelty_space = {}
    for label, (R, Q, means) in spaces.items():
        t_space = time.perf_counter()
        p_loop = LoOP(n_neighbors=st.n_neighbors, backend=backend).fit(R).outlier_probability(Q)
        p_gauss = GaussianNovelty(backend=backend).fit(R, y_tr[ref], means=means) \
            .outlier_probability(Q)
        novelty_space[label] = {
            "loop_auc": _roc_auc(p_loop, is_unseen),
            "gaussian_auc": _roc_auc(p_gauss, is_unseen),
            "loop_soft": loop_model.evaluate(X_te, y_te, [0.5],
                                             unseen_probability=p_loop)["soft"],
            "gaussian_hard": gauss_model.evaluate(X_te, y_te, [0.5],
                                                  unseen_probability=p_gauss)["hard"],
            "seconds": round(time.perf_counter() - t_space, 1)}
    _timer(times, "novelty space", t)

    # -- LoOP with exact against approximate (faiss IVF) kNN, in the semantic space
    t = time.perf_counter()
    knn = {}
    detectors = {}
    # IVF: sqrt(n) lists (faiss's rule of thumb); visit 1/8 of them, and enough lists to
    # hold 4 (k + 1) points on average, so that small references still find k neighbours.
    nlist = max(1, round(np.sqrt(len(F_tr))))
    nprobe = min(nlist, max(-(-nlist // 8), int(np.ceil(4 * (st.n_neighbors + 1) * nlist
                                                         / len(F_tr)))))
    for method, params in (("exact", None), ("ivf", {"nlist": nlist, "nprobe": nprobe})):
        t_fit = time.perf_counter()
        detectors[method] = LoOP(n_neighbors=st.n_neighbors, backend=backend, knn=method,
                                 knn_params=params).fit(F_tr)
        fit_s = time.perf_counter() - t_fit
        t_score = time.perf_counter()
        p = detectors[method].outlier_probability(F_te)
        knn[method] = {"p": p, "fit_seconds": round(fit_s, 2),
                       "score_seconds": round(time.perf_counter() - t_score, 2)}
    _, I_exact = detectors["exact"].index_.search(F_te, st.n_neighbors)
    _, I_ivf = detectors["ivf"].index_.search(F_te, st.n_neighbors)
    recall = np.mean([len(set(a) & set(b)) for a, b in zip(I_exact.tolist(), I_ivf.tolist())])
    diff = np.abs(knn["ivf"]["p"] - knn["exact"]["p"])
    knn_results = {"recall_at_k": float(recall / st.n_neighbors),
                   "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                   "nlist": nlist, "nprobe": nprobe}
    for method, r in knn.items():
        knn_results[method] = {
            "fit_seconds": r["fit_seconds"], "score_seconds": r["score_seconds"],
            "auc": _roc_auc(r["p"], is_unseen),
            "soft": loop_model.evaluate(X_te, y_te, [0.5], unseen_probability=r["p"])["soft"]}
    _timer(times, "exact vs IVF kNN", t)

    return {
        "seed": seed, "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
        "n_test": int(len(test_idx)), "n_test_unseen": int(is_unseen.sum()),
        "n_features": int(X_tr.shape[1]), "reports": reports, "tuned": tuned,
        "calibration": calibration, "auc": auc, "distractors": distractor_acc,
        "mapping": mapping, "novelty_space": novelty_space, "knn": knn_results,
        "timings_s": times,
    }


def pair_zero_shot(data, pair, seed, st: Settings, kv, *, progress=False) -> float:
    """2-way zero-shot accuracy between the two classes of ``pair`` for one seed.

    Features and mapping are trained on (a subset of) the other classes' training images
    only; the pair's test images are labelled with the nearer of the two word vectors.
    """
    from .embeddings import class_vectors
    from .features import CoatesNgFeatures
    from .mapping import SemanticMapper

    X_train, y_train, X_test, y_test, names = data
    names_arr = np.array(names)
    pair_ids = [names.index(c) for c in pair]
    train_idx, _ = zero_shot_split(y_train, pair_ids, random_state=seed)
    train_idx = per_class_subset(train_idx, y_train, st.sweep_per_class, random_state=seed)
    extractor = CoatesNgFeatures(n_centroids=st.centroids, stride=st.stride,
                                 n_patches=st.n_patches, random_state=seed, progress=progress)
    X_tr = extractor.fit_transform(X_train[train_idx])
    test_rows = np.flatnonzero(np.isin(y_test, pair_ids))
    X_te = extractor.transform(X_test[test_rows])
    seen = sorted(set(names_arr[y_train[train_idx]].tolist()))
    codes = np.searchsorted(seen, names_arr[y_train[train_idx]])
    mapper = SemanticMapper(random_state=seed, progress=progress, **st.mapper_params)
    mapper.fit(X_tr, codes, class_vectors(seen, kv))
    return nearest_word_accuracy(mapper.transform(X_te), names_arr[y_test[test_rows]],
                                 class_vectors(pair, kv), list(pair))


# --------------------------------------------------------------------------- aggregation
def aggregate(items):
    """Mean and standard deviation over seeds of nested results of the same shape.

    Numbers become ``{"mean", "std", "values"}`` (std with ddof=1; 0 for one seed); lists
    of numbers are averaged element-wise (``{"mean": [...], "std": [...]}``); anything
    else (words, labels) is taken from the first item.
    """
    first = items[0]
    if isinstance(first, dict):
        return {key: aggregate([item[key] for item in items]) for key in first}
    if isinstance(first, (int, float, np.floating, np.integer)) and not isinstance(first, bool):
        a = np.asarray(items, dtype=np.float64)
        return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
                "values": a.tolist()}
    if isinstance(first, list) and first and all(isinstance(v, (int, float)) for v in first):
        a = np.asarray(items, dtype=np.float64)
        return {"mean": a.mean(0).tolist(),
                "std": (a.std(0, ddof=1) if len(items) > 1 else np.zeros(a.shape[1])).tolist()}
    return first


def _pm(stat, digits=3):
    """'mean ± std' of an aggregated number (just the mean for one seed)."""
    if len(stat["values"]) == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


# --------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pairs(pairs, path, title):
    """Bar chart of the 2-way zero-shot accuracy per pair, mean ± std over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.45 * len(pairs) + 2.0, 4.2))
    x = np.arange(len(pairs))
    means = [p["accuracy"]["mean"] for p in pairs]
    stds = [p["accuracy"]["std"] for p in pairs]
    ax.bar(x, means, yerr=stds, capsize=4, color="#4C72B0", label="mean ± std over seeds")
    ax.axhline(0.5, color="grey", linestyle="--", label="chance (0.5)")
    for xi, m, sd in zip(x, means, stds):
        ax.text(xi + 0.08, m + sd + 0.015, f"{m:.2f}", ha="left", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{a} /\n{b}\n(cos {p['cosine']:.2f})"
                        for p in pairs for a, b in [p["pair"]]], fontsize=8)
    ax.set_ylabel("2-way zero-shot accuracy")
    ax.set_xlabel("unseen pair (GloVe cosine similarity of the two class words)")
    ax.set_ylim(0, 1.25)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_distractors(counts, agg, path, title):
    """Accuracy of the unseen images against the number of distractor words."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    for (condition, stat), marker in zip(agg.items(), "osd^v"):
        ax.errorbar(counts, stat["mean"], yerr=stat["std"], marker=marker, markersize=4,
                    capsize=3, label=condition)
    ax.set_xlabel("number of extra candidate words")
    ax.set_ylabel("accuracy on the unseen test images")
    ax.set_ylim(-0.02, 1.08)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="distractors", title_fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_calibration(agg, path, title):
    """Reliability diagrams of P(unseen | x), pooled over seeds, with the bin counts."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(agg), figsize=(5.2 * len(agg), 5.6), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1]}, squeeze=False)
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    for col, (detector, stat) in enumerate(agg.items()):
        count = np.asarray(stat["count"]["mean"])
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = np.asarray(stat["sum_p"]["mean"]) / count
            frac = np.asarray(stat["positives"]["mean"]) / count
        ok = count > 0
        ax = axes[0, col]
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
        ax.axhline(stat["base_rate"]["mean"], color="grey", linestyle=":",
                   label=f"share of unseen images ({stat['base_rate']['mean']:.2f})")
        ax.plot(conf[ok], frac[ok], "-o", markersize=4, color="#C44E52",
                label=f"{DETECTOR_LABELS[detector]} (ECE {_pm(stat['ece'])})")
        ax.set_ylabel("fraction of images that are unseen")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title(DETECTOR_LABELS[detector], fontsize=10)
        low = axes[1, col]
        low.bar(centers, count, width=0.9 / CALIBRATION_BINS, color="#8C8C8C")
        low.set_ylabel("test images\n(mean per seed)", fontsize=8)
        low.set_xlabel("predicted P(unseen | x), 10 equal-width bins")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- the run
def _check_seeds(seeds):
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise ValueError(f"seeds must be an int >= 1 (the run uses seeds 0..seeds-1), "
                         f"got {seeds!r}")
    return int(seeds)


def _check_unseen(unseen, names, dataset):
    unseen = [str(u) for u in unseen]
    unknown = [u for u in unseen if u not in names]
    if unknown:
        raise ValueError(f"unknown class names {unknown}; {dataset} has {names}")
    if len(set(unseen)) != len(unseen):
        raise ValueError(f"unseen classes repeat a name: {unseen}")
    if not 1 <= len(unseen) < len(names):
        raise ValueError(f"name between 1 and {len(names) - 1} unseen classes, got {unseen}")
    return unseen


def reproduce(dataset="fashion-mnist", *, data_dir=None, seeds=3, out="results", quick=False,
              unseen=None, settings=None, backend="auto", progress=False, log=print) -> dict:
    """Run the paper's experiments and write ``out/`` (README.md, results.json, PNGs).

    Parameters
    ----------
    dataset : {"fashion-mnist", "cifar10"}, default="fashion-mnist"
    data_dir : path, optional
        Fashion-MNIST IDX folder (default: the Debian package's) or the
        ``cifar-10-batches-py`` folder (required for CIFAR-10).
    seeds : int, default=3
        Seeds 0..seeds-1; each seeds the split, the features, the mapping and the softmax,
        the IVF index and the random distractor words.
    out : path, default="results"
    quick : bool, default=False
        Small sizes (:data:`QUICK`): a smoke run.
    unseen : list of str, optional
        The main setting's unseen classes; default cat/truck (CIFAR-10), sandal/pullover
        (Fashion-MNIST).
    settings : Settings, optional
        Sizes; default :func:`settings_for` (dataset, quick).
    backend : str, default="auto"
    progress : bool, default=False
        Progress bars of the feature extraction and training.
    log : callable, default=print

    Returns
    -------
    dict
        Everything written to ``results.json``.
    """
    from .embeddings import class_vectors, glove_50d_arrays, load_glove_50d

    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {DATASETS}")
    n_seeds = _check_seeds(seeds)
    st = settings if settings is not None else settings_for(dataset, quick)
    start, load_before = time.perf_counter(), os.getloadavg()
    data = load_dataset(dataset, data_dir)
    names = data[4]
    unseen = _check_unseen(unseen if unseen is not None else DEFAULT_UNSEEN[dataset], names,
                           dataset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    kv = load_glove_50d(names)
    vocab, matrix = glove_50d_arrays()
    matrix = np.asarray(matrix)
    row_of = {w: i for i, w in enumerate(vocab)}
    exclude = {part for name in names for part in [name.lower(), *name.lower().replace("-", " ")
                                                   .split()]}
    n_max = max(st.distractor_counts)
    near = {f"near '{u}'": nearest_words(vocab, matrix, v, n_max, exclude)
            for u, v in zip(unseen, class_vectors(unseen, kv))}
    pairs = PAIRS[dataset][:st.n_pairs]
    log(f"fastzsl reproduce: {dataset}, unseen {', '.join(unseen)}, seeds 0..{n_seeds - 1}, "
        f"{len(pairs)} pairs; settings {asdict(st)}")

    per_seed, random_lists = [], []
    for seed in range(n_seeds):
        t = time.perf_counter()
        lists = {**near, "random": random_words(vocab, n_max, exclude, seed)}
        random_lists.append(lists["random"])
        distractors = {c: (words, matrix[[row_of[w] for w in words]])
                       for c, words in lists.items()}
        per_seed.append(main_setting(data, unseen, seed, st, kv, distractors, backend=backend,
                                     progress=progress, log=log))
        log(f"  seed {seed}: main setting done in {time.perf_counter() - t:.1f} s "
            f"({per_seed[-1]['timings_s']})")

    sweep = []
    for pair in pairs:
        t = time.perf_counter()
        accuracies = [pair_zero_shot(data, pair, seed, st, kv, progress=progress)
                      for seed in range(n_seeds)]
        a, b = class_vectors(pair, kv).astype(np.float64)
        sweep.append({"pair": list(pair), "accuracy": aggregate(accuracies),
                      "cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
                      "seconds": round(time.perf_counter() - t, 1)})
        log(f"  pair {pair[0]} / {pair[1]}: 2-way zero-shot accuracy "
            f"{_pm(sweep[-1]['accuracy'])} ({sweep[-1]['seconds']} s)")

    from ._platform import machine_description

    results = {
        "command": _command_line(dataset, data_dir, n_seeds, out, quick, unseen, st),
        "dataset": dataset, "unseen": unseen, "seeds": list(range(n_seeds)),
        "quick": quick, "settings": asdict(st), "backend": backend,
        "machine": machine_description(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "distractor_words": {**near, "random (seed 0)": random_lists[0]},
        "pairs": sweep, "per_seed": per_seed,
        "aggregate": aggregate([_without_curves(r) for r in per_seed]),
        "curves": {d: aggregate([r["reports"][d]["curve"] for r in per_seed])
                   for d in per_seed[0]["reports"]},
    }
    write_report(results, out)
    log(f"wrote {out}/README.md, results.json and figures in {results['wall_seconds']} s")
    return results


def _without_curves(seed_result):
    """A seed's results without the threshold curves (aggregated separately)."""
    reports = {d: _summary(r) for d, r in seed_result["reports"].items()}
    return {**seed_result, "reports": reports}


def _command_line(dataset, data_dir, seeds, out, quick, unseen, st):
    parts = ["fastzsl reproduce", f"--dataset {dataset}"]
    if data_dir is not None:
        parts.append(f"--data-dir {data_dir}")
    parts += [f"--seeds {seeds}", f"--out {out}", f"--unseen {','.join(unseen)}"]
    if quick:
        parts.append("--quick")
    default = settings_for(dataset, quick)
    parts += [f"--{name} {getattr(st, name)}" for name in ("centroids", "stride")
              if getattr(st, name) != getattr(default, name)]
    return " ".join(parts)


# --------------------------------------------------------------------------- the report
_ROW_METRICS = ("seen_accuracy", "unseen_accuracy", "overall_accuracy",
                "seen_per_class_accuracy", "unseen_per_class_accuracy", "harmonic_mean")
_ROW_HEADER = ("| seen acc | unseen acc | overall acc | GZSL seen (tr) | GZSL unseen (ts) | H |",
               "|---|---|---|---|---|---|")


def _cells(stats, keys=_ROW_METRICS):
    return " | ".join(_pm(stats[k]) for k in keys)


def _table(header, rows):
    head = "| " + " | ".join(header) + " |"
    return "\n".join([head, "|" + "---|" * len(header), *rows])


def write_report(results, out):
    """Write ``out/README.md``, ``out/results.json`` and the figures of a reproduce run."""
    out = Path(out)
    agg = results["aggregate"]
    st = results["settings"]
    dataset = results["dataset"]
    unseen = results["unseen"]
    n_seeds = len(results["seeds"])
    seeds_note = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    title = f"{dataset}, unseen: {', '.join(unseen)} ({seeds_note})"

    # -- figures
    curves = results["curves"]
    plot_threshold_curves(
        {d: {"curve": {"thresholds": c["thresholds"]["mean"],
                       **{k: v["mean"] for k, v in c.items() if k != "thresholds"}},
             "threshold": agg["reports"][d]["threshold"]["mean"]} for d, c in curves.items()},
        out / "threshold_curves.png", title=title,
        spread={d: {k: v["std"] for k, v in c.items()} for d, c in curves.items()})
    plot_pairs(results["pairs"], out / "zsl_pairs.png",
               f"{dataset}: 2-way zero-shot accuracy between\ntwo unseen classes ({seeds_note})")
    plot_distractors(list(st["distractor_counts"]), agg["distractors"], out / "distractors.png",
                     f"{dataset}: unseen images ({', '.join(unseen)}) among their class words\n"
                     f"plus distractor words ({seeds_note})")
    plot_calibration(agg["calibration"], out / "calibration.png",
                     f"{dataset}: calibration of P(unseen | x) on the test images "
                     f"(bins pooled over {n_seeds} seed{'s' * (n_seeds > 1)})")

    # -- tables
    first = results["per_seed"][0]
    test_note = ("the whole test set" if st["max_test"] is None
                 else f"a random {st['max_test']} of the test images")
    cap_note = "" if st["max_per_class"] is None else f", at most {st['max_per_class']} per class"
    three = ("seen_accuracy", "unseen_accuracy", "harmonic_mean")
    four = ("seen_accuracy", "unseen_accuracy", "overall_accuracy", "harmonic_mean")
    lines = [
        f"# Reproducing Socher et al. (2013) on {dataset}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"- Machine: {results['machine']}; load average (1, 5, 15 min) "
        f"{results['load_average_before']} before, {results['load_average_after']} after.",
        f"- Date {results['date']}; wall time **{results['wall_seconds']} s**; seeds "
        f"{results['seeds']} ({seeds_note} below); backend `{results['backend']}`"
        f"{'; **quick mode** (small sizes, a smoke run)' if results['quick'] else ''}.",
        f"- Unseen classes of the main setting: **{', '.join(unseen)}**. Split (paper, SPEC "
        f"section 6): 95% of each seen class's training images train, 5% of every class "
        f"(unseen ones included) validate; the test set is "
        f"{test_note} ({first['n_test']} images, {first['n_test_unseen']} of them unseen).",
        f"- Training images per seed: {first['n_train']} (main setting{cap_note}); "
        f"{first['n_val']} validation images.",
        f"- Features: Coates & Ng k-means, {st['centroids']} centroids, 6x6 patches, stride "
        f"{st['stride']}, {st['n_patches']} patches for whitening and k-means -> "
        f"{first['n_features']} dims. **No unseen-class image is in the unsupervised data**: "
        "dictionary, whitening and standardisation are fitted on the seen classes' training "
        "images of each run (each pair of the sweep fits its own).",
        f"- Class vectors: GloVe 6B 50-d. Mapping: {st['mapper_params']} (2-layer tanh, h=200, "
        f"unless stated); LoOP k = {st['n_neighbors']}, lambda = 3; Gaussian detector: "
        "the paper's rule (unseen iff every class's log-likelihood is below its threshold).",
        "",
        "Seen / unseen accuracy count an image routed to the wrong branch as an error; "
        "GZSL columns are per-class mean accuracies over all classes and their harmonic mean "
        "H (Xian et al. 2018).",
        "",
        "## Soft (Eq. 2) against hard routing, and generalized zero-shot numbers",
        "",
    ]
    rows = []
    for d, label in DETECTOR_LABELS.items():
        rep, tuned = agg["reports"][d], agg["tuned"][d]
        soft_note = "" if d == "loop" else " (score used as a probability)"
        rows.append(f"| {label} | soft (Eq. 2){soft_note} | - | {_cells(rep['soft'])} |")
        rows.append(f"| {label} | hard | {rep['threshold']['mean']:g} | {_cells(rep['hard'])} |")
        rows.append(f"| {label} | hard, threshold tuned on validation | "
                    f"{_pm(tuned['threshold'], 2)} | {_cells(tuned)} |")
    lines += ["| detector | combine | threshold | " + _ROW_HEADER[0][2:],
              "|---|---|---|" + _ROW_HEADER[1][1:], *rows, ""]
    lines += [
        f"Zero-shot accuracy between the unseen classes (their test images, unseen classifier "
        f"only): **{_pm(agg['reports']['loop']['zero_shot_accuracy'])}**. ROC-AUC of "
        f"P(unseen | x) for unseen against seen test images: LoOP "
        f"{_pm(agg['auc']['loop'])}, Gaussian {_pm(agg['auc']['gaussian'])}. The tuned "
        "threshold maximises overall accuracy on the validation set, which holds 5% of the "
        "unseen classes' training images (as in the paper's split).",
        "",
        "![accuracy against threshold](threshold_curves.png)",
        "",
        "The Gaussian detector's score is the fraction of training points more typical than "
        "the image (a threshold t calls about 1 - t of the training points unseen); LoOP's "
        "is its outlier probability.",
        "",
        "## 2-way zero-shot accuracy for several unseen pairs",
        "",
        f"Each pair is held out in turn; features and mapping are trained on at most "
        f"{st['sweep_per_class']} training images per seen class; the pair's test images are "
        "labelled with the nearer of the two class word vectors.",
        "",
        _table(["unseen pair", "GloVe cosine", "2-way accuracy", "per seed", "seconds"],
               [f"| {a} / {b} | {p['cosine']:.2f} | {_pm(p['accuracy'])} | "
                f"{', '.join(f'{v:.3f}' for v in p['accuracy']['values'])} | {p['seconds']} |"
                for p in results["pairs"] for a, b in [p["pair"]]]),
        "",
        "![2-way zero-shot accuracy per pair](zsl_pairs.png)",
        "",
        "## Distractor words",
        "",
        "The unseen test images are labelled with the nearest of the unseen class words plus "
        "n extra candidate words: GloVe's nearest neighbours (cosine) of one unseen word, or "
        f"random words (alphabetic, GloVe frequency ranks {RANDOM_WORD_BAND[0]}-"
        f"{RANDOM_WORD_BAND[1]}, new ones each seed). Class names are never distractors.",
        "",
        _table(["extra words", *agg["distractors"]],
               [f"| {n} | " + " | ".join(
                   f"{s['mean'][i]:.3f}" + (f" ± {s['std'][i]:.3f}" if n_seeds > 1 else "")
                   for s in agg["distractors"].values()) + " |"
                for i, n in enumerate(st["distractor_counts"])]),
        "",
        *[f"- {c}: {', '.join(words[:12])}, ..." for c, words in
          results["distractor_words"].items()],
        "",
        "![distractor words](distractors.png)",
        "",
        "## Two-layer tanh mapping against a one-layer linear mapping",
        "",
        _table(["mapping", "train MSE", "zero-shot acc", "LoOP soft: seen", "unseen", "H",
                "Gaussian hard: seen", "unseen", "H", "ROC-AUC LoOP", "ROC-AUC Gaussian"],
               [f"| {m} | {_pm(s['train_mse'])} | {_pm(s['zero_shot_accuracy'])} | "
                f"{_cells(s['loop_soft'], three)}"
                f" | {_cells(s['gaussian_hard'], three)}"
                f" | {_pm(s['loop_auc'])} | {_pm(s['gaussian_auc'])} |"
                for m, s in agg["mapping"].items()]),
        "",
        "## Novelty detection in the semantic space against the raw feature space",
        "",
        f"Both detectors fitted on the same {min(st['raw_reference'], first['n_train'])} "
        "random training images in each space (Gaussian means: the class word vectors in the "
        "semantic space, the class means elsewhere); the classifiers are the main model's.",
        "",
        _table(["space", "ROC-AUC LoOP", "ROC-AUC Gaussian", "LoOP soft: seen", "unseen", "H",
                "Gaussian hard: seen", "unseen", "H", "seconds"],
               [f"| {sp} | {_pm(s['loop_auc'])} | {_pm(s['gaussian_auc'])} | "
                f"{_cells(s['loop_soft'], three)}"
                f" | {_cells(s['gaussian_hard'], three)}"
                f" | {_pm(s['seconds'], 1)} |" for sp, s in agg["novelty_space"].items()]),
        "",
        "## Beyond the paper: is P(unseen | x) calibrated?",
        "",
        _table(["detector", "ECE (10 bins)", "Brier score", "share of unseen test images",
                "ROC-AUC"],
               [f"| {DETECTOR_LABELS[d]} | {_pm(c['ece'])} | {_pm(c['brier'])} | "
                f"{c['base_rate']['mean']:.3f} | {_pm(agg['auc'][d])} |"
                for d, c in agg["calibration"].items()]),
        "",
        "A constant prediction equal to the share of unseen images would have ECE 0 and "
        "Brier score share x (1 - share).",
        "",
        "![reliability diagrams](calibration.png)",
        "",
        "## Beyond the paper: LoOP with exact against approximate (IVF) kNN",
        "",
        f"Semantic space, all training images as reference; faiss `IndexIVFFlat` with nlist "
        f"{first['knn']['nlist']} (about sqrt(n)), nprobe {first['knn']['nprobe']}. Recall@k of "
        f"the IVF neighbours: {_pm(agg['knn']['recall_at_k'])}; |LoOP(IVF) - LoOP(exact)| "
        f"max {_pm(agg['knn']['max_abs_diff'])}, mean {_pm(agg['knn']['mean_abs_diff'])}.",
        "",
        _table(["kNN", "fit s", "score s", "ROC-AUC", "soft: seen", "unseen", "overall", "H"],
               [f"| {m} | {_pm(agg['knn'][m]['fit_seconds'], 2)} | "
                f"{_pm(agg['knn'][m]['score_seconds'], 2)} | {_pm(agg['knn'][m]['auc'])} | "
                f"{_cells(agg['knn'][m]['soft'], four)} |"
                for m in ("exact", "ivf")]),
        "",
        "## Time per seed (s)",
        "",
        _table(["step", "seconds"], [f"| {k} | {_pm(v, 1)} |"
                                     for k, v in agg["timings_s"].items()]),
        "",
        "All numbers: `results.json` (per seed and aggregated).",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=1))
