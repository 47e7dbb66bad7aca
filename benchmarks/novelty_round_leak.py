"""Why the pseudo-unseen rounds flatter the semantic-space scores: the features saw the
round's held-out classes.

The image features (Coates & Ng: k-means dictionary, whitening, standardisation) are
learnt once, on the seen classes' training images, before the zero-shot model and its
novelty gate are fitted. A pseudo-unseen round then holds out seen classes whose images
the feature extractor has learnt from, while a real unseen class's images never were.
This script measures the difference: for one held-out pair, each round of the default gate
is scored twice, with the features as the gate gets them ("leaky") and with features
learnt again without the round's held-out classes ("clean"), and reports each score's
ROC-AUC (pseudo-unseen against pseudo-seen) both ways, beside its ROC-AUC on the real
unseen test images.

Run: ``python benchmarks/novelty_round_leak.py [--pair trouser,shirt]`` (about 5 minutes
on 2 idle cores); writes ``benchmarks/results/novelty-round-leak.{md,json}``.
"""
import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
from _harness import write_results

COLUMNS = ("loop", "gaussian", "seen_confidence", "unseen_proximity")


def main(argv=None):
    from fastzsl import novelty_gate as ng
    from fastzsl._platform import machine_description
    from fastzsl.app.datasets import load_dataset, per_class_subset, zero_shot_split
    from fastzsl.app.experiment import features_without, fit_detectors
    from fastzsl.app.reproduce.measures import roc_auc
    from fastzsl.app.reproduce.settings import settings_for
    from fastzsl.embeddings import load_glove_50d
    from fastzsl.features import CoatesNgFeatures

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="trouser,shirt")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    X_train, y_train, X_test, y_test, names = load_dataset("fashion-mnist", None)
    names_arr, pair = np.array(names), args.pair.split(",")
    kv, st = load_glove_50d(names), settings_for("fashion-mnist")
    # the pair sweep's training set: the seen classes, at most sweep_per_class images each
    train_idx, _ = zero_shot_split(y_train, [names.index(u) for u in pair], random_state=0)
    train_idx = per_class_subset(train_idx, y_train, st.sweep_per_class, random_state=0)
    y_tr = names_arr[y_train[train_idx]]

    def new_extractor():
        return CoatesNgFeatures(n_centroids=st.centroids, stride=st.stride,
                                n_patches=st.n_patches, random_state=0, progress=False)

    extractor = new_extractor()
    X_tr = extractor.fit_transform(X_train[train_idx])
    model = fit_detectors(X_tr, y_tr, kv, pair, variants=("default",),
                          n_neighbors=st.n_neighbors, mapper_params=st.mapper_params,
                          seed=0)["default"]
    gate = model.gate_
    X_te = extractor.transform(X_test)
    test = gate.raw_scores(X_te, model.mapper_.transform(X_te),
                           model.seen_classifier_.predict_proba(X_te))
    is_unseen = np.isin(names_arr[y_test], pair)
    test_auc = [roc_auc(test[:, j], is_unseen) for j in range(len(COLUMNS))]

    classes = np.unique(y_tr)
    codes = np.searchsorted(classes, y_tr)
    n_seen = len(classes)
    scene = ng._Scene(model.class_vectors_[:n_seen], model.class_vectors_[n_seen:],
                      model.mapper_, model.seen_classifier_)
    specs = gate._detector_specs()
    groups = ng.pseudo_unseen_rounds(n_seen, len(pair), random_state=gate.random_state)

    # The gate's own rounds, twice: on the features it gets, and with round_features, the
    # features learnt again without each round's held-out classes (same splits and seeds).
    scored = {label: gate._round_scores(specs, X_tr, codes, classes, scene, len(pair),
                                        round_features)
              for label, round_features in (
                  ("leaky", None),
                  ("clean", features_without(new_extractor, X_train[train_idx], y_tr)))}
    rounds = []
    for r, group in enumerate(groups):
        row = {"held_out": classes[group].tolist()}
        for label, per_round in scored.items():
            row[label] = [roc_auc(per_round[r]["features"][:, j], per_round[r]["is_unseen"])
                          for j in range(len(COLUMNS))]
        rounds.append(row)
        print(f"  round {r}: {row['held_out']}: leaky {np.round(row['leaky'], 3)}, clean "
              f"{np.round(row['clean'], 3)}", flush=True)
    results = {"machine": machine_description(), "pair": pair,
               "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "wall_seconds": round(time.perf_counter() - start, 1), "columns": COLUMNS,
               "test_auc": test_auc, "rounds": rounds}
    write_results(args.out, "novelty-round-leak", results, report)


def report(results) -> str:
    cols = results["columns"]
    lines = [f"# The rounds' features saw the held-out classes: {' / '.join(results['pair'])}"
             " unseen", "",
             f"- Machine: {results['machine']}; {results['date']}; "
             f"{results['wall_seconds']} s.",
             "- ROC-AUC of each score, pseudo-unseen against pseudo-seen images of a round: "
             "with the features the gate gets (learnt with the round's held-out classes: "
             "leaky) and with features learnt again without them (clean); last row: the same "
             "score on the real unseen test images, whose classes the features never saw.",
             "", "| round: held out | " + " | ".join(f"{c} leaky / clean" for c in cols)
             + " |", "|---" * (len(cols) + 1) + "|"]
    for r in results["rounds"]:
        lines.append(f"| {', '.join(r['held_out'])} | " + " | ".join(
            f"{a:.3f} / {b:.3f}" for a, b in zip(r["leaky"], r["clean"])) + " |")
    leaky = np.mean([r["leaky"] for r in results["rounds"]], 0)
    clean = np.mean([r["clean"] for r in results["rounds"]], 0)
    lines.append("| mean | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(leaky, clean))
                 + " |")
    lines.append("| test (real unseen) | " + " | ".join(f"{a:.3f}" for a in
                                                         results["test_auc"]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
