"""The results folder of a reproduce run: ``README.md`` (one function per section),
``results.json`` and the figures."""
from __future__ import annotations

import json
from pathlib import Path

from ..experiment import DETECTOR_LABELS, plot_threshold_curves
from .measures import pm
from .plots import plot_calibration, plot_distractors, plot_pair_novelty, plot_pairs
from .settings import RANDOM_WORD_BAND

_ROW_METRICS = ("seen_accuracy", "unseen_accuracy", "overall_accuracy",
                "seen_per_class_accuracy", "unseen_per_class_accuracy", "harmonic_mean")
_ROW_HEADER = ("| seen acc | unseen acc | overall acc | GZSL seen (tr) | GZSL unseen (ts) | H |",
               "|---|---|---|---|---|---|")
_THREE = ("seen_accuracy", "unseen_accuracy", "harmonic_mean")
_FOUR = ("seen_accuracy", "unseen_accuracy", "overall_accuracy", "harmonic_mean")


def _cells(stats, keys=_ROW_METRICS):
    return " | ".join(pm(stats[k]) for k in keys)


def _table(header, rows):
    head = "| " + " | ".join(header) + " |"
    return "\n".join([head, "|" + "---|" * len(header), *rows])


# LoOP soft and Gaussian hard numbers (threshold 0.95) of a mapping or a novelty space
_DETECTOR_COLUMNS = ("LoOP soft: seen", "unseen", "H", "Gaussian hard: seen", "unseen", "H")


def _detector_cells(stats):
    return f"{_cells(stats['loop_soft'], _THREE)} | {_cells(stats['gaussian_hard'], _THREE)}"


def _seeds_note(results):
    n_seeds = len(results["seeds"])
    return f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed"


def write_figures(results, out):
    """The four PNGs of the report: threshold curves, pairs, distractors, calibration."""
    out = Path(out)
    agg, st, dataset = results["aggregate"], results["settings"], results["dataset"]
    unseen, n_seeds, seeds_note = results["unseen"], len(results["seeds"]), _seeds_note(results)
    curves = results["curves"]
    plot_threshold_curves(
        {d: {"curve": {"thresholds": c["thresholds"]["mean"],
                       **{k: v["mean"] for k, v in c.items() if k != "thresholds"}},
             "threshold": agg["reports"][d]["threshold"]["mean"]} for d, c in curves.items()},
        out / "threshold_curves.png",
        title=f"{dataset}, unseen: {', '.join(unseen)} ({seeds_note})",
        spread={d: {k: v["std"] for k, v in c.items()} for d, c in curves.items()})
    plot_pairs(results["pairs"], out / "zsl_pairs.png",
               f"{dataset}: 2-way zero-shot accuracy between\ntwo unseen classes ({seeds_note})")
    plot_pair_novelty(results["pairs"], out / "pair_novelty.png",
                      f"{dataset}: novelty detection with each pair held out ({seeds_note})")
    plot_distractors(list(st["distractor_counts"]), agg["distractors"], out / "distractors.png",
                     f"{dataset}: unseen images ({', '.join(unseen)}) among their class words\n"
                     f"plus distractor words ({seeds_note})")
    plot_calibration(agg["calibration"], out / "calibration.png",
                     f"{dataset}: calibration of P(unseen | x) on the test images "
                     f"(bins pooled over {n_seeds} seed{'s' * (n_seeds > 1)})")


def header_section(results) -> list:
    """Title, command, machine, split, sizes and the meaning of the columns."""
    st, unseen, first = results["settings"], results["unseen"], results["per_seed"][0]
    test_note = ("the whole test set" if st["max_test"] is None
                 else f"a random {st['max_test']} of the test images")
    cap_note = "" if st["max_per_class"] is None else f", at most {st['max_per_class']} per class"
    return [
        f"# Reproducing Socher et al. (2013) on {results['dataset']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"- Machine: {results['machine']}; load average (1, 5, 15 min) "
        f"{results['load_average_before']} before, {results['load_average_after']} after.",
        f"- Date {results['date']}; wall time **{results['wall_seconds']} s**; seeds "
        f"{results['seeds']} ({_seeds_note(results)} below); backend `{results['backend']}`"
        f"{'; **quick mode** (small sizes, a smoke run)' if results['quick'] else ''}.",
        f"- Unseen classes of the main setting: **{', '.join(unseen)}**. The paper's split: "
        f"95% of each seen class's training images train, 5% of every class "
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
        f"unless stated); LoOP k = {st['n_neighbors']}, lambda = 3. Novelty detection three "
        "ways on one mapping and softmax: the **default** novelty gate (LoOP in a 50-d PCA of "
        "the features and the Gaussian detector in the semantic space; calibration, single "
        "detector or combination, threshold and routing all chosen on seen classes held out in "
        "turn as pseudo-unseen; prior n_unseen / n_classes; no unseen image used), and the "
        "paper's LoOP "
        "and Gaussian detector (paper rule: unseen iff every class's log-likelihood is "
        "below its threshold) on the mapped training points.",
        "",
        "Seen / unseen accuracy count an image routed to the wrong branch as an error; "
        "GZSL columns are per-class mean accuracies over all classes and their harmonic mean "
        "H (Xian et al. 2018).",
        "",
    ]


def soft_hard_section(results) -> list:
    """Soft (Eq. 2) against hard routing, GZSL numbers and the tuned threshold."""
    agg = results["aggregate"]
    rows = []
    for d, label in DETECTOR_LABELS.items():
        rep, tuned = agg["reports"][d], agg["tuned"][d]
        soft_note = " (score used as a probability)" if d == "gaussian" else ""
        rows.append(f"| {label} | soft (Eq. 2){soft_note} | - | {_cells(rep['soft'])} |")
        rows.append(f"| {label} | hard | {pm(rep['threshold'], 2)} | {_cells(rep['hard'])} |")
        rows.append(f"| {label} | hard, threshold tuned on validation | "
                    f"{pm(tuned['threshold'], 2)} | {_cells(tuned)} |")
    return [
        "## Soft (Eq. 2) against hard routing, and generalized zero-shot numbers",
        "",
        "| detector | combine | threshold | " + _ROW_HEADER[0][2:],
        "|---|---|---|" + _ROW_HEADER[1][1:], *rows, "",
        f"Zero-shot accuracy between the unseen classes (their test images, unseen classifier "
        f"only): **{pm(agg['reports']['loop']['zero_shot_accuracy'])}**. ROC-AUC of "
        f"P(unseen | x) for unseen against seen test images: " + ", ".join(
            f"{DETECTOR_LABELS[d]} {pm(agg['auc'][d])}" for d in DETECTOR_LABELS) + ". "
        "The default model's threshold is chosen without unseen images (pseudo-unseen seen "
        "classes); the tuned threshold instead maximises overall accuracy on the validation "
        "set, which holds 5% of the unseen classes' training images (as in the paper's "
        "split).",
        "",
        "![accuracy against threshold](threshold_curves.png)",
        "",
        "The paper Gaussian detector's score is the fraction of training points more typical "
        "than the image (a threshold t calls about 1 - t of the training points unseen); the "
        "paper LoOP's is its outlier probability; the default model's is calibrated.",
        "",
    ]


def pairs_section(results) -> list:
    """Each held-out pair of the sweep: 2-way zero-shot accuracy, and each detector's
    novelty numbers."""
    pairs = results["pairs"]
    variants = list(pairs[0]["detectors"])
    novelty_rows = [
        f"| {a} / {b} | {DETECTOR_LABELS.get(d, d)} | {pm(s['auc'])} | {pm(s['ece'])} | "
        f"{pm(s['threshold'], 2)} | "
        + " / ".join(pm(v["ece"]) for v in s["shares"].values()) + " | "
        + " / ".join(pm(v["brier_skill"], 2) for v in s["shares"].values())
        + f" | {_cells(s, _THREE)} |"
        for p in pairs for a, b in [p["pair"]] for d in variants
        for s in [p["detectors"][d]]]
    worst = {d: min(p["detectors"][d]["auc"]["mean"] for p in pairs) for d in variants}
    return [
        "## Held-out pairs: 2-way zero-shot accuracy and novelty detection",
        "",
        f"Each pair is held out in turn; features, mapping, softmax and detectors are "
        f"trained on at most {results['settings']['sweep_per_class']} training images per "
        "seen class and nothing of the pair; every test image is scored. The 2-way accuracy "
        "labels the pair's test images with the nearer of the two class word vectors.",
        "",
        _table(["unseen pair", "GloVe cosine", "2-way accuracy", "per seed", "seconds"],
               [f"| {a} / {b} | {p['cosine']:.2f} | {pm(p['accuracy'])} | "
                f"{', '.join(f'{v:.3f}' for v in p['accuracy']['values'])} | {p['seconds']} |"
                for p in pairs for a, b in [p["pair"]]]),
        "",
        "![2-way zero-shot accuracy per pair](zsl_pairs.png)",
        "",
        "Novelty detection of the same runs: ROC-AUC of P(unseen | x) on the whole test set; "
        "ECE and Brier skill (against the constant share) with the test images reweighted "
        "to unseen shares 0.05 / 0.2 / 0.5 and the model's prior set to the share (the "
        "paper's uncalibrated scores do not move with the prior); and seen / unseen "
        "accuracy and GZSL H as `predict` routes (default: as the gate's rounds chose; "
        "paper LoOP: soft Eq. 2; paper Gaussian: hard at 0.95).",
        "",
        _table(["unseen pair", "detector", "ROC-AUC", "ECE 0.05 / 0.2 / 0.5",
                "Brier skill 0.05 / 0.2 / 0.5", "threshold", "seen acc",
                "unseen acc", "H"], novelty_rows),
        "",
        "Lowest ROC-AUC over the pairs: " + ", ".join(
            f"{DETECTOR_LABELS.get(d, d)} {v:.3f}" for d, v in worst.items()) + ".",
        "",
        "![novelty detection per pair](pair_novelty.png)",
        "",
    ]


def distractors_section(results) -> list:
    """Accuracy of the unseen images against the number of distractor words."""
    agg, n_seeds = results["aggregate"], len(results["seeds"])
    return [
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
                for i, n in enumerate(results["settings"]["distractor_counts"])]),
        "",
        *[f"- {c}: {', '.join(words[:12])}, ..." for c, words in
          results["distractor_words"].items()],
        "",
        "![distractor words](distractors.png)",
        "",
    ]


def mapping_section(results) -> list:
    """The two-layer tanh mapping against a one-layer linear mapping."""
    return [
        "## Two-layer tanh mapping against a one-layer linear mapping",
        "",
        _table(["mapping", "train MSE", "zero-shot acc", *_DETECTOR_COLUMNS, "ROC-AUC LoOP",
                "ROC-AUC Gaussian"],
               [f"| {m} | {pm(s['train_mse'])} | {pm(s['zero_shot_accuracy'])} | "
                f"{_detector_cells(s)} | {pm(s['loop_auc'])} | {pm(s['gaussian_auc'])} |"
                for m, s in results["aggregate"]["mapping"].items()]),
        "",
    ]


def novelty_space_section(results) -> list:
    """Novelty detection in the semantic space against the raw feature space."""
    st, first = results["settings"], results["per_seed"][0]
    return [
        "## Novelty detection in the semantic space against the raw feature space",
        "",
        f"Both detectors fitted on the same {min(st['raw_reference'], first['n_train'])} "
        "random training images in each space (Gaussian means: the class word vectors in the "
        "semantic space, the class means elsewhere); the classifiers are the main model's.",
        "",
        _table(["space", "ROC-AUC LoOP", "ROC-AUC Gaussian", *_DETECTOR_COLUMNS, "seconds"],
               [f"| {sp} | {pm(s['loop_auc'])} | {pm(s['gaussian_auc'])} | "
                f"{_detector_cells(s)} | {pm(s['seconds'], 1)} |"
                for sp, s in results["aggregate"]["novelty_space"].items()]),
        "",
    ]


def calibration_section(results) -> list:
    """Calibration of P(unseen | x): ECE, Brier score and the reliability diagrams."""
    agg = results["aggregate"]
    return [
        "## Beyond the paper: is P(unseen | x) calibrated?",
        "",
        _table(["detector", "ECE (10 bins)", "Brier score", "share of unseen test images",
                "ROC-AUC"],
               [f"| {DETECTOR_LABELS[d]} | {pm(c['ece'])} | {pm(c['brier'])} | "
                f"{c['base_rate']['mean']:.3f} | {pm(agg['auc'][d])} |"
                for d, c in agg["calibration"].items()]),
        "",
        "A constant prediction equal to the share of unseen images would have ECE 0 and "
        "Brier score share x (1 - share).",
        "",
        "![reliability diagrams](calibration.png)",
        "",
    ]


def knn_section(results) -> list:
    """LoOP with exact against approximate (IVF) kNN."""
    knn, first = results["aggregate"]["knn"], results["per_seed"][0]
    return [
        "## Beyond the paper: LoOP with exact against approximate (IVF) kNN",
        "",
        f"Semantic space, all training images as reference; faiss `IndexIVFFlat` with nlist "
        f"{first['knn']['nlist']} (about sqrt(n)), nprobe {first['knn']['nprobe']}. Recall@k of "
        f"the IVF neighbours: {pm(knn['recall_at_k'])}; |LoOP(IVF) - LoOP(exact)| "
        f"max {pm(knn['max_abs_diff'])}, mean {pm(knn['mean_abs_diff'])}.",
        "",
        _table(["kNN", "fit s", "score s", "ROC-AUC", "soft: seen", "unseen", "overall", "H"],
               [f"| {m} | {pm(knn[m]['fit_seconds'], 2)} | "
                f"{pm(knn[m]['score_seconds'], 2)} | {pm(knn[m]['auc'])} | "
                f"{_cells(knn[m]['soft'], _FOUR)} |"
                for m in ("exact", "ivf")]),
        "",
    ]


def timings_section(results) -> list:
    """Seconds per step of a seed."""
    return [
        "## Time per seed (s)",
        "",
        _table(["step", "seconds"], [f"| {k} | {pm(v, 1)} |"
                                     for k, v in results["aggregate"]["timings_s"].items()]),
        "",
        "All numbers: `results.json` (per seed and aggregated).",
        "",
    ]


SECTIONS = (header_section, soft_hard_section, pairs_section, distractors_section,
            mapping_section, novelty_space_section, calibration_section, knn_section,
            timings_section)


def write_report(results, out):
    """Write ``out/README.md``, ``out/results.json`` and the figures of a reproduce run."""
    out = Path(out)
    write_figures(results, out)
    lines = [line for section in SECTIONS for line in section(results)]
    (out / "README.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=1))
