"""The figures of a reproduce run (the threshold curves are
:func:`fastzsl.app.experiment.plot_threshold_curves`)."""
from __future__ import annotations

import numpy as np

from ..._optional import import_pyplot
from ..experiment import DETECTOR_LABELS
from .measures import pm
from .settings import CALIBRATION_BINS


def plot_pairs(pairs, path, title):
    """Bar chart of the 2-way zero-shot accuracy per pair, mean ± std over seeds."""
    plt = import_pyplot()
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
    plt = import_pyplot()
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
    plt = import_pyplot()
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
                label=f"{DETECTOR_LABELS[detector]} (ECE {pm(stat['ece'])})")
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


def plot_pair_novelty(pairs, path, title):
    """Per held-out pair: ROC-AUC of P(unseen | x) and GZSL H of each detector variant
    (grouped bars, mean ± std over seeds)."""
    plt = import_pyplot()
    variants = list(pairs[0]["detectors"])
    fig, axes = plt.subplots(1, 2, figsize=(2.2 * len(pairs) + 3.0, 4.4), sharex=True)
    x = np.arange(len(pairs))
    width = 0.8 / len(variants)
    for ax, metric, label in ((axes[0], "auc", "ROC-AUC of P(unseen | x)"),
                              (axes[1], "harmonic_mean", "GZSL H (default combination)")):
        for i, name in enumerate(variants):
            stats = [p["detectors"][name][metric] for p in pairs]
            ax.bar(x + (i - (len(variants) - 1) / 2) * width, [s["mean"] for s in stats],
                   width, yerr=[s["std"] for s in stats], capsize=2,
                   label=DETECTOR_LABELS.get(name, name))
        if metric == "auc":
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8, label="chance")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3, axis="y")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{a} /\n{b}" for p in pairs for a, b in [p["pair"]]], fontsize=8)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
