"""How the defaults of the zero-shot model's novelty detection were chosen (issue 14).

ROC-AUC of P(unseen | x) on the Fashion-MNIST test images for each detector, score and
detection space, with one held-out pair, one seed:

- spaces: the semantic space with the detector fitted on the mapped training points
  (``sem-in``, the paper) or on cross-fitted points (``sem-oof``, 5 folds), and 50-d /
  100-d PCAs of the Coates & Ng features (``pca50``, ``pca100``);
- scores: LoOP's probability, its PLOF, the mean squared distance to the k nearest
  training points (``knn-dist``) and to the nearest (``knn1``), the Gaussian detector's
  paper rule (``gauss``), the smallest scaled distance to a class mean
  (``gauss-mindist``) and the mixture log-likelihood (``gauss-mixture``); and the seen
  softmax's 1 - max probability and entropy.

Run: ``python benchmarks/novelty_choices.py --pair sandal,pullover [--per-class 2000]``
(writes ``benchmarks/results/novelty-choices-<pair>-<n>.json``). No unseen image enters
any fit; the test images score only.
"""
import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from fastzsl._platform import machine_description
from fastzsl.app.datasets import load_dataset
from fastzsl.app.reproduce.experiments import prepare_seed
from fastzsl.app.reproduce.settings import settings_for
from fastzsl.embeddings import class_vectors, load_glove_50d
from fastzsl.gaussian import GaussianNovelty
from fastzsl.loop import LoOP
from fastzsl.mapping import SemanticMapper
from fastzsl.softmax import SoftmaxClassifier

K, FOLDS = 20, 5


def detector_scores(R, Q, y_ref, means):
    """{score name: novelty score of each row of Q} for reference points R."""
    loop = LoOP(n_neighbors=K).fit(R)
    D, I = loop.index_.search(Q, K)
    pdist = loop.fit_.extent * np.sqrt(D.mean(1))
    gauss = GaussianNovelty().fit(R, y_ref, means=means)
    L = gauss.log_likelihood(Q)
    scaled = ((Q.astype(np.float64)[:, None, :] - gauss.means_[None]) ** 2).sum(2) \
        / gauss.variances_[None]
    return {"loop": loop.outlier_probability(Q), "plof": pdist / loop.fit_.pdist[I].mean(1) - 1,
            "knn-dist": D.mean(1), "knn1": D[:, 0], "gauss": gauss.outlier_probability(Q),
            "gauss-mindist": scaled.min(1),
            "gauss-mixture": -np.logaddexp.reduce(L + np.log(gauss.priors_), axis=1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="sandal,pullover")
    parser.add_argument("--per-class", type=int, default=None,
                        help="training images per seen class (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    unseen = args.pair.split(",")
    start, load = time.perf_counter(), os.getloadavg()
    st = replace(settings_for("fashion-mnist"), max_per_class=args.per_class)
    run = prepare_seed(load_dataset("fashion-mnist"), unseen, args.seed, st)
    seen = sorted(set(run.y_tr.tolist()))
    W = class_vectors(seen, load_glove_50d(seen))
    codes = np.searchsorted(seen, run.y_tr)
    mapper = SemanticMapper(optimizer="adam", random_state=args.seed).fit(run.X_tr, codes, W)
    F_in, F_te = mapper.transform(run.X_tr), mapper.transform(run.X_te)
    rng = np.random.default_rng(args.seed)  # folds, then the PCA samples
    fold = rng.permutation(len(codes)) % FOLDS
    F_oof = np.empty_like(F_in)
    for j in range(FOLDS):
        m = SemanticMapper(optimizer="adam", random_state=args.seed + j + 1)
        F_oof[fold == j] = m.fit(run.X_tr[fold != j], codes[fold != j], W) \
            .transform(run.X_tr[fold == j])
    P = SoftmaxClassifier(random_state=args.seed).fit(run.X_tr, run.y_tr).predict_proba(run.X_te)
    auc = {"softmax 1-maxp": roc_auc_score(run.is_unseen, 1 - P.max(1)),
           "softmax entropy": roc_auc_score(run.is_unseen, -(P * np.log(P + 1e-12)).sum(1))}
    word_means = dict(zip(seen, W))
    spaces = {"sem-in": (F_in, F_te, word_means), "sem-oof": (F_oof, F_te, word_means)}
    for d in (50, 100):
        sample = run.X_tr[rng.choice(len(codes), min(10_000, len(codes)), replace=False)]
        pca = PCA(d, random_state=args.seed).fit(sample)
        spaces[f"pca{d}"] = (pca.transform(run.X_tr), pca.transform(run.X_te), None)
    for name, (R, Q, means) in spaces.items():
        scores = detector_scores(np.ascontiguousarray(R, np.float32),
                                 np.ascontiguousarray(Q, np.float32), run.y_tr, means)
        auc.update({f"{name} {s}": roc_auc_score(run.is_unseen, v) for s, v in scores.items()})
        print(name, {k: round(v, 3) for k, v in auc.items() if k.startswith(name)}, flush=True)
    out = Path(__file__).parent / "results" / \
        f"novelty-choices-{'-'.join(unseen)}-{run.n_train}.json"
    out.write_text(json.dumps({"pair": unseen, "seed": args.seed, "n_train": run.n_train,
                               "n_test": run.n_test, "machine": machine_description(),
                               "load_average_before": load,
                               "seconds": round(time.perf_counter() - start, 1),
                               "roc_auc": auc}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
