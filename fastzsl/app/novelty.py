"""Novelty detection on Fashion-MNIST pixels: held-out classes against the rest
(``fastzsl novelty``).

Reference set: the training images of the seen classes (optionally a random subset);
queries: the 10,000 test images; both as pixels projected on the top principal components
of the reference. LoOP and the Gaussian detector (paper and mixture rules) score every
query; ROC-AUC tells how well P(unseen) separates the held-out classes' images.
"""
from __future__ import annotations

import json
import time

import numpy as np

from .._platform import machine_description
from .._validation import check_class_names
from ..novelty_gate import PCAProjection
from .datasets import load_fashion_mnist
from .experiment import DEFAULT_UNSEEN


def novelty_experiment(*, unseen=DEFAULT_UNSEEN, dims=50, k=20, extent=3.0, n_reference=0,
                       backend="auto", data_dir=None, seed=0, out=None, log=print) -> dict:
    """LoOP and Gaussian novelty scores of held-out Fashion-MNIST classes (ROC-AUC).

    Logs a Markdown table (detector, ROC-AUC, share of unseen / seen images flagged at
    0.5, seconds) and returns, and with ``out`` writes as JSON, the numbers.
    ``n_reference``: subsample the reference set to this many images (0: all).
    """
    from sklearn.metrics import roc_auc_score

    from ..gaussian import GaussianNovelty
    from ..loop import LoOP

    start = time.perf_counter()
    X_train, y_train, X_test, y_test, names = load_fashion_mnist(data_dir)
    unseen = check_class_names(unseen, names, "Fashion-MNIST")
    unseen_ids = [names.index(u) for u in unseen]
    seen_rows = ~np.isin(y_train, unseen_ids)
    if n_reference:
        keep = np.flatnonzero(seen_rows)
        keep = np.random.default_rng(seed).choice(keep, size=min(n_reference, keep.size),
                                                  replace=False)
        seen_rows = np.zeros_like(seen_rows)
        seen_rows[keep] = True
    flat = lambda imgs: imgs.reshape(len(imgs), -1).astype(np.float32) / 255.0  # noqa: E731
    reference_pixels = flat(X_train[seen_rows])
    project = PCAProjection(dims, random_state=seed).fit(reference_pixels).transform
    reference, queries = project(reference_pixels), project(flat(X_test))
    is_unseen = np.isin(y_test, unseen_ids)
    log(f"reference: {len(reference)} training images of {10 - len(unseen)} seen classes; "
        f"queries: {len(queries)} test images ({is_unseen.sum()} of unseen classes "
        f"{', '.join(unseen)}); pixels -> PCA {dims} dims")

    rows = []
    t = time.perf_counter()
    loop = LoOP(n_neighbors=k, extent=extent, backend=backend, progress=True)
    loop.fit(reference)
    rows.append(("LoOP", loop.outlier_probability(queries), time.perf_counter() - t))
    for rule in ("paper", "mixture"):
        t = time.perf_counter()
        gauss = GaussianNovelty(rule=rule, backend=backend)
        gauss.fit(reference, y_train[seen_rows])
        rows.append((f"Gaussian ({rule} rule)", gauss.outlier_probability(queries),
                     time.perf_counter() - t))

    results = []
    log("\n| detector | ROC-AUC (unseen vs seen) | flagged unseen at 0.5 | "
        "flagged seen at 0.5 | seconds |\n|---|---|---|---|---|")
    for name, p, seconds in rows:
        auc = roc_auc_score(is_unseen, p)
        flag_u, flag_s = (p[is_unseen] > 0.5).mean(), (p[~is_unseen] > 0.5).mean()
        log(f"| {name} | {auc:.4f} | {flag_u:.3f} | {flag_s:.3f} | {seconds:.1f} |")
        results.append(dict(detector=name, roc_auc=auc, flagged_unseen=flag_u,
                            flagged_seen=flag_s, seconds=seconds))
    wall = time.perf_counter() - start
    log(f"\nwall time {wall:.1f} s on {machine_description()}; backend {loop.backend_}")
    summary = dict(unseen=unseen, dims=dims, k=k, extent=extent,
                   n_reference=int(len(reference)), wall_seconds=wall,
                   machine=machine_description(), results=results)
    if out:
        with open(out, "w") as f:
            json.dump(summary, f, indent=2)
    return summary
