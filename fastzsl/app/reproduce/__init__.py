"""The paper's experiments, offline, as a results folder: ``fastzsl reproduce``.

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
- **pair sweep**: for several held-out pairs (a smaller training subset), the 2-way
  zero-shot accuracy between the two unseen classes (the paper's bar chart) and each
  detector's ROC-AUC and ECE of P(unseen | x), seen / unseen accuracy and GZSL H.

Every experiment compares fastzsl's default novelty detection (LoOP in a PCA of the
features, P(unseen | x) calibrated on pseudo-unseen seen classes) with the paper's LoOP
and Gaussian detector in the semantic space.

Nothing unsupervised sees an unseen class: the k-means dictionary, whitening and feature
standardisation are fitted on the seen classes' training images of each run (each pair of
the sweep fits its own).

Modules: :mod:`.settings` (sizes of a run), :mod:`.experiments` (one function per
experiment), :mod:`.measures` (calibration, aggregation over seeds, distractor words),
:mod:`.plots` and :mod:`.report` (the results folder).
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..._validation import check_class_names
from ..datasets import DATASETS, load_dataset
from .experiments import main_setting, pair_sweep
from .measures import aggregate, nearest_words, pm, random_words
from .report import write_report
from .settings import DEFAULT_UNSEEN, PAIRS, QUICK, Settings, settings_for

__all__ = ["reproduce", "settings_for", "Settings", "QUICK"]


def _check_seeds(seeds):
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise ValueError(f"seeds must be an int >= 1 (the run uses seeds 0..seeds-1), "
                         f"got {seeds!r}")
    return int(seeds)


def _check_unseen(unseen, names, dataset):
    unseen = check_class_names(unseen, names, dataset)
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
    from ...embeddings import class_vectors, glove_50d_arrays, load_glove_50d

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
        runs = [pair_sweep(data, pair, seed, st, kv, backend=backend, progress=progress)
                for seed in range(n_seeds)]
        a, b = class_vectors(pair, kv).astype(np.float64)
        sweep.append({"pair": list(pair),
                      "accuracy": aggregate([r["zero_shot_accuracy"] for r in runs]),
                      "detectors": aggregate([r["detectors"] for r in runs]),
                      "cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
                      "seconds": round(time.perf_counter() - t, 1)})
        auc = {d: pm(s["auc"]) for d, s in sweep[-1]["detectors"].items()}
        log(f"  pair {pair[0]} / {pair[1]}: 2-way zero-shot accuracy "
            f"{pm(sweep[-1]['accuracy'])}, ROC-AUC of P(unseen) {auc} "
            f"({sweep[-1]['seconds']} s)")

    from ..._platform import machine_description

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


def _summary(report):
    """The headline numbers of an ``evaluate`` report (no curve)."""
    return {"soft": report["soft"], "hard": report["hard"], "threshold": report["threshold"],
            "zero_shot_accuracy": report["zero_shot_accuracy"]}


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
