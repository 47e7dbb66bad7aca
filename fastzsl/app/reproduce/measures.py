"""Small measurements of the experiments: nearest-word labels, distractor words,
calibration, ROC-AUC, and the mean and spread over seeds."""
from __future__ import annotations

import numpy as np

from .settings import CALIBRATION_BINS, RANDOM_WORD_BAND


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


def weighted_calibration(p, is_unseen, share, n_bins=CALIBRATION_BINS) -> dict:
    """ECE, Brier score and Brier skill of P(unseen | x) ``p`` on test images reweighted so
    that the unseen ones weigh ``share`` in all (equal-width bins, 1.0 in the last)."""
    p = np.asarray(p, dtype=np.float64)
    is_unseen = np.asarray(is_unseen, dtype=bool)
    w = np.where(is_unseen, share / is_unseen.sum(), (1 - share) / (~is_unseen).sum())
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    gap = np.bincount(bins, weights=w * (is_unseen - p), minlength=n_bins)
    brier = float(np.sum(w * (p - is_unseen) ** 2))
    constant = share * (1 - share)  # the Brier score of P = share everywhere
    return {"ece": float(np.abs(gap).sum()), "brier": brier,
            "brier_skill": 1.0 - brier / constant}


SHARES = (0.05, 0.2, 0.5)  # unseen shares the calibration of P(unseen | x) is reported at


def at_shares(model, X, is_unseen) -> dict:
    """{share: weighted_calibration} of a zero-shot model's P(unseen | x) with its prior set
    to each of :data:`SHARES` in turn (then restored)."""
    prior, out = model.unseen_prior, {}
    try:
        for share in SHARES:
            p = model.set_params(unseen_prior=share).outlier_probability(X)
            out[str(share)] = weighted_calibration(p, is_unseen, share)
    finally:
        model.set_params(unseen_prior=prior)
    return out


def roc_auc(p, is_positive) -> float:
    """ROC-AUC of scores ``p`` for the event ``is_positive``."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_positive, p))


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


def pm(stat, digits=3):
    """'mean ± std' of an aggregated number (just the mean for one seed)."""
    if len(stat["values"]) == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
