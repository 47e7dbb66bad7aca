"""How the zero-shot model's novelty defaults are chosen, and what that gives, per pair.

Nothing here chooses a default. The novelty gate makes every choice itself at fit time, on
pseudo-unseen rounds of the seen classes of the user's own data: the calibration (each
detector alone, or the logistic stack or equal-weight mean of the detectors' scores and
class-agnostic features; the out-of-round log loss on the worst round decides, by the
rule ``novelty_rules.py`` chose on development pairs), the hard-routing threshold
(``max_false_alarm``, then the best harmonic mean of both routings) and soft or hard
routing for ``predict`` (the rounds' GZSL H). This script fits the default model with each pair of the sweep held out and
reports, per pair, what the rounds measured, what the gate chose, and then, once, the
numbers of the chosen model on the test images, which took no part in any choice.

Run: ``python benchmarks/novelty_choices.py [--pairs sandal,pullover ...] [--quick]``
(writes ``benchmarks/results/novelty-choices.{json,md}`` and ``novelty-choices-auc.png``;
about 70 s a pair on 2 idle cores at the default size). Each pair's row is kept in
``--work`` (default ``results-all-pairs/pairs``), which ``fastzsl reproduce --all-pairs``
shares, so neither run measures a pair twice.
"""
import argparse
import json
import sys
from pathlib import Path

from fastzsl.app.reproduce.all_pairs import run_all_pairs
from fastzsl.app.reproduce.settings import PAIRS, settings_for


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="*", default=None,
                        help="pairs as a,b (default: the reproduce sweep's six)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--work", default="results-all-pairs",
                        help="folder whose pairs/ holds the per-pair rows, shared with "
                             "`fastzsl reproduce --all-pairs --out WORK`: rows measured by "
                             "either are reused")
    parser.add_argument("--clean-rounds", action="store_true",
                        help="the gate's rounds learn the features again without their "
                             "held-out classes (writes novelty-choices-clean-rounds.*)")
    args = parser.parse_args(argv)
    pairs = [tuple(p.split(",")) for p in args.pairs] if args.pairs else \
        list(PAIRS["fashion-mnist"])
    name = "novelty-choices-clean-rounds" if args.clean_rounds else "novelty-choices"
    tmp = Path(args.out) / f"{name}.d"
    kept = Path(args.work) / ("pairs-clean-rounds" if args.clean_rounds else "pairs")
    results = run_all_pairs("fashion-mnist", st=settings_for("fashion-mnist", args.quick),
                            out=tmp, pairs=pairs, kept=kept, clean_rounds=args.clean_rounds)
    out = Path(args.out)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))
    report = (tmp / "all_pairs.md").read_text().replace("auc_grid.png", f"{name}-auc.png")
    rounds = ["", "## What the rounds measured", "",
              "Log loss of each candidate, each round scored by a fit on the others, over all "
              "rounds and on its worst round (the worst round decides, among candidates whose "
              "log loss over all rounds beats the constant share's); H of soft and hard "
              "routing.", "",
              "| unseen pair | " + " | ".join(["log loss: all rounds", "worst round",
                                                "constant", "chosen", "H soft / hard",
                                                "routing"]) + " |",
              "|---|---|---|---|---|---|---|"]
    for r in results["pairs"]:
        c = r["choice"]["rounds"]
        losses = ", ".join(f"{k} {v:.3f}" for k, v in c["log_loss"].items())
        worst = ", ".join(f"{k} {v:.3f}" for k, v in c.get("worst_round_log_loss", {}).items())
        h = c.get("harmonic_mean", {})
        rounds.append(f"| {r['pair'][0]} / {r['pair'][1]} | {losses} | {worst or '-'} | "
                      f"{c.get('constant_log_loss', float('nan')):.3f} | "
                      f"{r['choice']['calibration']} | "
                      f"{h.get('soft', float('nan')):.3f} / {h.get('hard', float('nan')):.3f} | "
                      f"{r['choice']['routing']} |")
    (out / f"{name}.md").write_text(report + "\n".join(rounds) + "\n")
    (tmp / "auc_grid.png").replace(out / f"{name}-auc.png")
    for written in ("all_pairs.md", "all_pairs.json"):
        (tmp / written).unlink()
    tmp.rmdir()
    print(f"wrote {out}/{name}.md")


if __name__ == "__main__":
    sys.exit(main())
