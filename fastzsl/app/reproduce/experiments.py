"""The experiments of one seed, one function each, and the 2-way pair sweep.

:func:`main_setting` prepares a seed's split and features (:func:`prepare_seed`), fits the
main model with both detectors and runs, in this order: :func:`soft_hard_gzsl`,
:func:`distractor_accuracy`, :func:`linear_mapping`, :func:`novelty_space` and
:func:`exact_vs_ivf`; :func:`pair_sweep` runs one held-out pair. Each returns its
plain-number results.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from ..datasets import per_class_subset, zero_shot_split
from ..experiment import CURVE_THRESHOLDS, DETECTOR_LABELS, features_without, fit_detectors
from .measures import at_shares, nearest_word_accuracy, reliability, roc_auc
from .settings import Settings


@dataclass
class SeedData:
    """One seed's images in feature space, with labels (class names), for its experiments."""

    seed: int
    st: Settings
    unseen: list
    X_tr: np.ndarray
    y_tr: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_te: np.ndarray
    y_te: np.ndarray
    is_unseen: np.ndarray        # of the test images
    n_train: int
    n_val: int
    n_test: int
    backend: str = "auto"
    progress: bool = False
    # held-out class names -> X_tr with features learnt without those classes' images
    relearn_features: object = None


def _at_tuned_threshold(val_report, test_report):
    """Test numbers at the curve threshold with the best validation overall accuracy."""
    i = int(np.argmax(val_report["curve"]["overall_accuracy"]))
    curve = test_report["curve"]
    return {"threshold": curve["thresholds"][i],
            **{key: values[i] for key, values in curve.items() if key != "thresholds"}}


def _timer(times, name, t0):
    times[name] = round(time.perf_counter() - t0, 1)


def prepare_seed(data, unseen, seed, st: Settings, *, backend="auto", progress=False,
                 times=None) -> SeedData:
    """The paper's split of one seed and its Coates & Ng features (fitted on the training
    images of the seen classes only); ``times`` receives the seconds of the features."""
    from ...features import CoatesNgFeatures

    times = {} if times is None else times
    X_train, y_train, X_test, y_test, names = data
    names_arr = np.array(names)
    unseen_ids = [names.index(u) for u in unseen]
    train_idx, val_idx = zero_shot_split(y_train, unseen_ids, random_state=seed)
    train_idx = per_class_subset(train_idx, y_train, st.max_per_class, random_state=seed)
    test_idx = np.arange(len(y_test))
    if st.max_test is not None and st.max_test < len(y_test):
        test_idx = np.sort(np.random.default_rng(seed).choice(len(y_test), st.max_test,
                                                              replace=False))
    t = time.perf_counter()

    def new_extractor():
        return CoatesNgFeatures(n_centroids=st.centroids, stride=st.stride,
                                n_patches=st.n_patches, random_state=seed, progress=progress)

    extractor = new_extractor()
    X_tr = extractor.fit_transform(X_train[train_idx])
    X_val, X_te = extractor.transform(X_train[val_idx]), extractor.transform(X_test[test_idx])
    _timer(times, "features", t)
    y_te = names_arr[y_test[test_idx]]
    return SeedData(seed=seed, st=st, unseen=list(unseen), X_tr=X_tr,
                    y_tr=names_arr[y_train[train_idx]], X_val=X_val,
                    y_val=names_arr[y_train[val_idx]], X_te=X_te, y_te=y_te,
                    is_unseen=np.isin(y_te, unseen), n_train=len(train_idx),
                    n_val=len(val_idx), n_test=len(test_idx), backend=backend,
                    progress=progress, relearn_features=features_without(
                        new_extractor, X_train[train_idx], names_arr[y_train[train_idx]]))


def fit_models(run: SeedData, kv, *, hidden=None, times=None,
               variants=tuple(DETECTOR_LABELS)):
    """{variant: zero-shot model} sharing one mapping: the default novelty detection and
    the paper's LoOP and Gaussian detector (:func:`fastzsl.app.experiment.fit_detectors`);
    ``hidden=0``: a one-layer linear mapping instead of the settings' network."""
    mapper_params = run.st.mapper_params if hidden is None else \
        {**run.st.mapper_params, "hidden": hidden}
    return fit_detectors(run.X_tr, run.y_tr, kv, run.unseen, variants=variants,
                         backend=run.backend, n_neighbors=run.st.n_neighbors,
                         mapper_params=mapper_params, seed=run.seed, progress=run.progress,
                         timings=times)


def soft_hard_gzsl(run: SeedData, models) -> dict:
    """Curves, soft against hard routing and GZSL numbers of each detector on the test
    images, the test numbers at the threshold tuned on validation, calibration and ROC-AUC.

    ``models``: {variant: model} (:func:`fit_models`).
    """
    reports, tuned, calibration, auc = {}, {}, {}, {}
    for name, model in models.items():
        reports[name] = model.evaluate(run.X_te, run.y_te, CURVE_THRESHOLDS)
        tuned[name] = _at_tuned_threshold(model.evaluate(run.X_val, run.y_val, CURVE_THRESHOLDS),
                                          reports[name])
        p = model.outlier_probability(run.X_te)
        calibration[name] = reliability(p, run.is_unseen)
        auc[name] = roc_auc(p, run.is_unseen)
    return {"reports": reports, "tuned": tuned, "calibration": calibration, "auc": auc}


def distractor_accuracy(run: SeedData, F_te, W_unseen, distractors) -> dict:
    """Accuracy of the unseen test images (mapped: ``F_te``) labelled with the nearest of the
    unseen class words (vectors ``W_unseen``) plus n extra candidates, for each n of the
    settings' ``distractor_counts``.

    ``distractors``: {condition: (words, their vectors)}; returns {condition: accuracies}.
    """
    F, y = F_te[run.is_unseen], run.y_te[run.is_unseen]
    return {condition: [nearest_word_accuracy(F, y, np.vstack([W_unseen, vectors[:n]]),
                                              list(run.unseen) + words[:n])
                        for n in run.st.distractor_counts]
            for condition, (words, vectors) in distractors.items()}


def linear_mapping(run: SeedData, kv, models, reports) -> dict:
    """The two-layer tanh mapping (``models``, with their test ``reports``) against a
    one-layer linear map trained here: zero-shot accuracy, LoOP soft and Gaussian hard
    numbers, ROC-AUCs and the training MSE of each."""
    linear = fit_models(run, kv, hidden=0, variants=("loop", "gaussian"))
    lin_loop, lin_gauss = linear["loop"], linear["gaussian"]
    loop_model = models["loop"]
    mapping = {}
    for label, (ml, mg) in {"2-layer tanh (h=200)": (loop_model, models["gaussian"]),
                            "1-layer linear": (lin_loop, lin_gauss)}.items():
        rl, rg = (reports["loop"], reports["gaussian"]) if ml is loop_model else \
            (ml.evaluate(run.X_te, run.y_te, CURVE_THRESHOLDS),
             mg.evaluate(run.X_te, run.y_te, CURVE_THRESHOLDS))
        F_map = ml.transform(run.X_tr)
        mapping[label] = {
            "zero_shot_accuracy": rl["zero_shot_accuracy"], "loop_soft": rl["soft"],
            "gaussian_hard": rg["hard"],
            "loop_auc": roc_auc(ml.outlier_probability(run.X_te), run.is_unseen),
            "gaussian_auc": roc_auc(mg.outlier_probability(run.X_te), run.is_unseen),
            "train_mse": float(np.mean(((F_map - ml.class_vectors_[
                np.searchsorted(ml.seen_classes_, run.y_tr)]) ** 2).sum(1)))}
    return mapping


def _detector_numbers(run: SeedData, models, p_loop, p_gauss) -> dict:
    """ROC-AUCs of the two detectors' P(unseen | x) on the test images, and the main
    classifiers' LoOP soft / Gaussian hard numbers with them (hard at the paper Gaussian
    model's own threshold, 0.95)."""
    return {"loop_auc": roc_auc(p_loop, run.is_unseen),
            "gaussian_auc": roc_auc(p_gauss, run.is_unseen),
            "loop_soft": models["loop"].evaluate(run.X_te, run.y_te, [0.5],
                                                 unseen_probability=p_loop)["soft"],
            "gaussian_hard": models["gaussian"].evaluate(run.X_te, run.y_te, [0.5],
                                                         unseen_probability=p_gauss)["hard"]}


def novelty_space(run: SeedData, F_tr, F_te, models) -> dict:
    """LoOP and the Gaussian model in the semantic space (``F_tr``, ``F_te``: the mapped
    images) against the raw feature space and its PCA, on the same random training images
    as reference; the classifiers are the main ``models``."""
    from sklearn.decomposition import PCA

    from ...gaussian import GaussianNovelty
    from ...loop import LoOP

    X_tr, st = run.X_tr, run.st
    rng = np.random.default_rng(run.seed)
    ref = np.sort(rng.choice(len(X_tr), size=min(st.raw_reference, len(X_tr)), replace=False))
    pca = PCA(n_components=min(F_tr.shape[1], len(ref), X_tr.shape[1]),
              random_state=run.seed).fit(X_tr[ref])
    loop_model = models["loop"]
    word_means = dict(zip(loop_model.seen_classes_.tolist(),
                          loop_model.class_vectors_[:len(loop_model.seen_classes_)]))
    spaces = {
        f"semantic ({F_tr.shape[1]}-d mapped)": (F_tr[ref], F_te, word_means),
        f"raw features ({X_tr.shape[1]}-d)": (X_tr[ref], run.X_te, None),
        f"raw features, PCA to {pca.n_components_}-d": (pca.transform(X_tr[ref]),
                                                         pca.transform(run.X_te), None),
    }
    results = {}
    for label, (R, Q, means) in spaces.items():
        t_space = time.perf_counter()
        p_loop = LoOP(n_neighbors=st.n_neighbors, backend=run.backend).fit(R) \
            .outlier_probability(Q)
        p_gauss = GaussianNovelty(backend=run.backend).fit(R, run.y_tr[ref], means=means) \
            .outlier_probability(Q)
        results[label] = {**_detector_numbers(run, models, p_loop, p_gauss),
                          "seconds": round(time.perf_counter() - t_space, 1)}
    return results


def ivf_lists(n_reference, n_neighbors):
    """(nlist, nprobe) of the exact-against-IVF comparison.

    sqrt(n) lists (faiss's rule of thumb), 1/8 of them visited, and enough lists visited
    to hold 4 (k + 1) points on average, so that small references still find k neighbours.
    These are not ``FaissIndex.default_nlist`` / ``default_nprobe`` (about 4 sqrt(n) lists,
    1/16 visited, tuned for speed in benchmarks/bench_ivf.py): the comparison measures
    LoOP under faiss's textbook IVF setting, and keeping it keeps the numbers of the
    published runs (benchmarks/results/reproduce) reproducible; the report names nlist
    and nprobe.
    """
    nlist = max(1, round(np.sqrt(n_reference)))
    nprobe = min(nlist, max(-(-nlist // 8), int(np.ceil(4 * (n_neighbors + 1) * nlist
                                                         / n_reference))))
    return nlist, nprobe


def exact_vs_ivf(run: SeedData, F_tr, F_te, models) -> dict:
    """LoOP with exact against approximate (faiss IVF) kNN in the semantic space (all
    mapped training images as reference): recall@k of the IVF neighbours, the difference
    of the probabilities, and each method's seconds, ROC-AUC and soft numbers."""
    from ...loop import LoOP

    k = run.st.n_neighbors
    nlist, nprobe = ivf_lists(len(F_tr), k)
    knn, detectors = {}, {}
    for method, params in (("exact", None), ("ivf", {"nlist": nlist, "nprobe": nprobe})):
        t_fit = time.perf_counter()
        detectors[method] = LoOP(n_neighbors=k, backend=run.backend, knn=method,
                                 knn_params=params).fit(F_tr)
        fit_s = time.perf_counter() - t_fit
        t_score = time.perf_counter()
        p = detectors[method].outlier_probability(F_te)
        knn[method] = {"p": p, "fit_seconds": round(fit_s, 2),
                       "score_seconds": round(time.perf_counter() - t_score, 2)}
    _, I_exact = detectors["exact"].index_.search(F_te, k)
    _, I_ivf = detectors["ivf"].index_.search(F_te, k)
    recall = np.mean([len(set(a) & set(b)) for a, b in zip(I_exact.tolist(), I_ivf.tolist())])
    diff = np.abs(knn["ivf"]["p"] - knn["exact"]["p"])
    results = {"recall_at_k": float(recall / k), "max_abs_diff": float(diff.max()),
               "mean_abs_diff": float(diff.mean()), "nlist": nlist, "nprobe": nprobe}
    for method, r in knn.items():
        results[method] = {
            "fit_seconds": r["fit_seconds"], "score_seconds": r["score_seconds"],
            "auc": roc_auc(r["p"], run.is_unseen),
            "soft": models["loop"].evaluate(run.X_te, run.y_te, [0.5],
                                            unseen_probability=r["p"])["soft"]}
    return results


def main_setting(data, unseen, seed, st: Settings, kv, distractors, *, backend="auto",
                 progress=False, log=print) -> dict:
    """Every experiment except the pair sweep, for one seed. Returns plain numbers."""
    times = {}
    run = prepare_seed(data, unseen, seed, st, backend=backend, progress=progress,
                       times=times)
    log(f"  seed {seed}: {run.n_train} training, {run.n_val} validation, {run.n_test} "
        f"test images; {run.X_tr.shape[1]}-d features in {times['features']} s")

    models = fit_models(run, kv, times=times)
    loop_model = models["loop"]
    t = time.perf_counter()
    main = soft_hard_gzsl(run, models)
    _timer(times, "evaluate", t)

    F_tr, F_te = loop_model.transform(run.X_tr), loop_model.transform(run.X_te)
    distractor_acc = distractor_accuracy(run, F_te, loop_model.class_vectors_[-len(unseen):],
                                         distractors)
    t = time.perf_counter()
    mapping = linear_mapping(run, kv, models, main["reports"])
    _timer(times, "linear mapping", t)
    t = time.perf_counter()
    spaces = novelty_space(run, F_tr, F_te, models)
    _timer(times, "novelty space", t)
    t = time.perf_counter()
    knn = exact_vs_ivf(run, F_tr, F_te, models)
    _timer(times, "exact vs IVF kNN", t)

    return {
        "seed": seed, "n_train": int(run.n_train), "n_val": int(run.n_val),
        "n_test": int(run.n_test), "n_test_unseen": int(run.is_unseen.sum()),
        "n_features": int(run.X_tr.shape[1]), **main, "distractors": distractor_acc,
        "mapping": mapping, "novelty_space": spaces, "knn": knn, "timings_s": times,
    }


def pair_sweep(data, pair, seed, st: Settings, kv, *, backend="auto", progress=False) -> dict:
    """One seed of one held-out pair: the 2-way zero-shot accuracy between the two classes,
    and each model variant's novelty detection on the whole test set (ROC-AUC and ECE of
    P(unseen | x); ECE, Brier score and Brier skill at the unseen shares of
    :data:`~.measures.SHARES` with the prior set to each; and seen / unseen accuracy and
    GZSL H as ``predict`` routes).

    Features, mapping, softmax and detectors see at most ``st.sweep_per_class`` training
    images of each other class and nothing of the pair.
    """
    run = prepare_seed(data, list(pair), seed, replace(st, max_per_class=st.sweep_per_class),
                       backend=backend, progress=progress)
    models = fit_models(run, kv)
    detectors, reports = {}, {}
    for name, model in models.items():
        p = model.outlier_probability(run.X_te)
        reports[name] = report = model.evaluate(run.X_te, run.y_te, [0.5])
        chosen = report[model.combine_]
        detectors[name] = {"auc": roc_auc(p, run.is_unseen),
                           "ece": reliability(p, run.is_unseen)["ece"],
                           "threshold": float(model.threshold_),
                           "shares": at_shares(model, run.X_te, run.is_unseen),
                           **{k: chosen[k] for k in ("seen_accuracy", "unseen_accuracy",
                                                     "harmonic_mean")}}
    # One mapping for all variants: the unseen classifier, so this number, is shared.
    return {"zero_shot_accuracy": reports["loop"]["zero_shot_accuracy"],
            "detectors": detectors}
