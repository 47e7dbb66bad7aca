"""How the novelty gate's choice rule was chosen: on development pairs, never the sweep's.

The gate chooses its calibration on pseudo-unseen rounds of the seen classes. Which
candidates it offers and how it compares them (the *rule*) is a design choice of the
library; this script makes it on ten development pairs of Fashion-MNIST classes: a seeded
draw from the 39 pairs outside the reproduce sweep, so the sweep's numbers
(``novelty_choices.py``) took no part in it.

Per development pair the default model is fitted once (features, mapping and softmax
without the pair); the script keeps each pseudo-unseen round's scores (every detector's,
and the class-agnostic features) and the test images' scores. Then, for each rule, the
library's own ``NoveltyGate._choose`` runs on the kept rounds, and the chosen calibrator
scores the test images: ROC-AUC of P(unseen | x), and ECE and Brier skill at unseen shares
0.05, 0.2 and 0.5 with the prior set to the share. Each candidate forced alone is shown
beside the rules, and each score's ROC-AUC on the rounds against the test images: the
rounds flatter the semantic-space scores (``novelty_round_leak.py`` shows why).

Run: ``python benchmarks/novelty_rules.py`` (about 10 minutes on 2 idle cores; the rounds
are kept in ``--work`` and reused); writes ``benchmarks/results/novelty-rules.{md,json}``.
"""
import argparse
import datetime
import itertools
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from _harness import write_results
from fastzsl.app.reproduce.measures import SHARES, roc_auc, weighted_calibration
from fastzsl.app.reproduce.settings import PAIRS, settings_for
from fastzsl.novelty_gate import NoveltyGate, at_prior

N_DEV, DEV_SEED = 10, 1
COLUMNS = ("loop", "gaussian", "seen_confidence", "unseen_proximity")
# The rules compared: the rule before this script (pooled: the log loss over all rounds,
# with or without the mean among the candidates) and the gate's rule now (the log loss on
# the worst round, among candidates that beat the constant share over all rounds).
RULES = ("pooled: isotonic, stack", "pooled: isotonic, stack, mean",
         "worst round: isotonic, stack, mean (default)")
CANDIDATES = ("isotonic loop", "isotonic gaussian", "stack", "mean")


def development_pairs(names):
    sweep = {frozenset(p) for p in PAIRS["fashion-mnist"]}
    others = [p for p in itertools.combinations(names, 2) if frozenset(p) not in sweep]
    rng = np.random.default_rng(DEV_SEED)
    return [others[i] for i in sorted(rng.choice(len(others), N_DEV, replace=False))]


def keep_rounds(pair, data, kv, st, path):
    """Fit the default model without ``pair``; save its rounds' and the test scores."""
    from fastzsl.app.experiment import fit_detectors
    from fastzsl.app.reproduce.experiments import prepare_seed

    kept = {}
    choose = NoveltyGate._choose

    def keeping(gate, rounds):
        kept["rounds"] = rounds
        return choose(gate, rounds)

    NoveltyGate._choose = keeping
    try:
        run = prepare_seed(data, list(pair), 0, replace(st, max_per_class=st.sweep_per_class))
        model = fit_detectors(run.X_tr, run.y_tr, kv, list(pair), variants=("default",),
                              n_neighbors=st.n_neighbors, mapper_params=st.mapper_params,
                              seed=0)["default"]
    finally:
        NoveltyGate._choose = choose
    F = model.mapper_.transform(run.X_te)
    test = model.gate_.raw_scores(run.X_te, F, model.seen_classifier_.predict_proba(run.X_te))
    rounds = kept["rounds"]
    arrays = {"test": test, "test_unseen": run.is_unseen,
              "which": np.concatenate([np.full(r["is_unseen"].size, i)
                                       for i, r in enumerate(rounds)]),
              "held_out": np.array([r["held_out"] for r in rounds])}
    for key in ("features", "is_unseen", "truth", "seen_pred", "p_seen_top", "unseen_class"):
        arrays["r_" + key] = np.concatenate([r[key] for r in rounds])
    np.savez(path, **arrays)


def rounds_of(kept):
    which = kept["which"]
    return [{"features": kept["r_features"][which == i],
             "is_unseen": kept["r_is_unseen"][which == i], "truth": kept["r_truth"][which == i],
             "seen_pred": kept["r_seen_pred"][which == i],
             "p_seen_top": kept["r_p_seen_top"][which == i],
             "unseen_class": kept["r_unseen_class"][which == i],
             "held_out": kept["held_out"][i]} for i in np.unique(which)]


def gate_on(kept, prior, only=None):
    """The library's gate choosing on the kept rounds (``only``: that candidate alone)."""
    gate = NoveltyGate(calibration="auto")
    gate.channels_ = [("loop", "pca", None, None), ("gaussian", "semantic", None, None)]
    gate.agnostic_, gate.default_prior_ = True, prior
    if only is not None:
        cols = gate._candidates()[only]
        gate._candidates = lambda: {only: cols}
    gate._choose(rounds_of(kept))
    return gate


def by_rule(kept, prior):
    """{rule or candidate: the gate it gives}: each rule picks from the default gate's
    measured losses, and the pick is the candidate's own gate."""
    default = gate_on(kept, prior)
    alone = {name: gate_on(kept, prior, only=name) for name in CANDIDATES}
    pooled = default.choice_["log_loss"]
    picks = {RULES[0]: min((k for k in pooled if k != "mean"), key=pooled.get),
             RULES[1]: min(pooled, key=pooled.get), RULES[2]: default.calibration_}
    return {**{rule: alone[pick] for rule, pick in picks.items()},
            **{f"{name} alone": gate for name, gate in alone.items()}}


def measures(gate, kept):
    x = kept["test"] if gate.calibration_ in ("stack", "mean") else \
        kept["test"][:, gate.score_column_]
    p = gate.calibrator_.transform(x)  # at the reference prior 1/2
    u = kept["test_unseen"]
    shares = {str(s): weighted_calibration(at_prior(p, 0.5, s), u, s) for s in SHARES}
    return {"calibration": gate.calibration_, "auc": roc_auc(p, u),
            "ece": [shares[str(s)]["ece"] for s in SHARES],
            "brier_skill": [shares[str(s)]["brier_skill"] for s in SHARES]}


def score_aucs(kept):
    rounds = [roc_auc(r["features"][:, j], r["is_unseen"]) for r in rounds_of(kept)
              for j in range(len(COLUMNS))]
    rounds = np.array(rounds).reshape(-1, len(COLUMNS))
    test = [roc_auc(kept["test"][:, j], kept["test_unseen"]) for j in range(len(COLUMNS))]
    return {"rounds_mean": rounds.mean(0).tolist(), "test": test}


def main(argv=None):
    from fastzsl._platform import machine_description
    from fastzsl.app.datasets import load_dataset
    from fastzsl.embeddings import load_glove_50d

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--work", default="results-novelty-rules")
    args = parser.parse_args(argv)
    start, load_before = time.perf_counter(), os.getloadavg()
    data = load_dataset("fashion-mnist", None)
    names = list(data[4])
    kv, st = load_glove_50d(names), settings_for("fashion-mnist")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pairs, rows = development_pairs(names), []
    prior = 2 / len(names)
    for pair in pairs:
        path = work / ("--".join(pair) + ".npz")
        if not path.exists():
            t = time.perf_counter()
            keep_rounds(pair, data, kv, st, path)
            print(f"  {pair[0]} / {pair[1]}: rounds kept ({time.perf_counter() - t:.0f} s)",
                  flush=True)
        kept = dict(np.load(path))
        rows.append({"pair": list(pair), "scores": score_aucs(kept),
                     "rules": {label: measures(gate, kept)
                               for label, gate in by_rule(kept, prior).items()}})
    results = {"machine": machine_description(), "date": datetime.datetime.now().isoformat(
        timespec="seconds"), "load_average_before": [round(x, 2) for x in load_before],
        "wall_seconds": round(time.perf_counter() - start, 1), "prior": prior,
        "shares": list(SHARES), "columns": list(COLUMNS), "pairs": rows}
    write_results(args.out, "novelty-rules", results, report)


def report(results) -> str:
    rows = results["pairs"]
    lines = [
        "# The novelty gate's choice rule, chosen on development pairs",
        "",
        f"- Machine: {results['machine']}; {results['date']}; {results['wall_seconds']} s "
        "(rounds kept from earlier runs are reused).",
        f"- {len(rows)} development pairs: a seeded draw from the pairs outside the reproduce "
        "sweep (`novelty_choices.py` reports the sweep). Per pair: the rounds' choice under "
        "each rule, then its numbers on all test images (ROC-AUC of P(unseen | x); ECE and "
        "Brier skill at unseen shares 0.05 / 0.2 / 0.5 with the prior set to the share).",
        "",
        "| rule | mean ROC-AUC | lowest | pairs with ECE <= 0.05 at all shares | "
        "mean ECE 0.05 / 0.2 / 0.5 | mean Brier skill 0.05 / 0.2 / 0.5 |",
        "|---|---|---|---|---|---|",
    ]
    for label in rows[0]["rules"]:
        m = [r["rules"][label] for r in rows]
        ece, bss = np.mean([x["ece"] for x in m], 0), np.mean([x["brier_skill"] for x in m], 0)
        ok = sum(max(x["ece"]) <= 0.05 for x in m)
        lines.append(f"| {label} | {np.mean([x['auc'] for x in m]):.3f} | "
                     f"{min(x['auc'] for x in m):.3f} | {ok} of {len(m)} | "
                     + " / ".join(f"{v:.3f}" for v in ece) + " | "
                     + " / ".join(f"{v:.2f}" for v in bss) + " |")
    default = RULES[2]
    lines += ["", f"Per pair, the default rule ({default}):", "",
              "| pair | chosen | ROC-AUC | ECE 0.05 / 0.2 / 0.5 | Brier skill | "
              "score ROC-AUC, rounds (mean) -> test: " + ", ".join(results["columns"]) + " |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        d, s = r["rules"][default], r["scores"]
        lines.append(f"| {r['pair'][0]} / {r['pair'][1]} | {d['calibration']} | "
                     f"{d['auc']:.3f} | " + " / ".join(f"{v:.3f}" for v in d["ece"]) + " | "
                     + " / ".join(f"{v:.2f}" for v in d["brier_skill"]) + " | "
                     + ", ".join(f"{a:.2f} -> {b:.2f}" for a, b in zip(s["rounds_mean"],
                                                                      s["test"])) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
