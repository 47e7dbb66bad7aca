"""fastzsl.app.novelty: held-out Fashion-MNIST classes against the rest (``fastzsl novelty``)."""
import json

import pytest

from fastzsl.app.novelty import novelty_experiment
from fastzsl.cli import main


def test_novelty_command_end_to_end(tiny_fashion, tmp_path, capsys):
    out = tmp_path / "res.json"
    code = main(["novelty", "--data-dir", str(tiny_fashion), "--dims", "10", "--k", "5",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| LoOP |" in printed and "Gaussian (paper rule)" in printed
    results = json.loads(out.read_text())
    assert results["n_reference"] == 320
    # Distinct prototypes per class: every detector separates the held-out classes well.
    assert min(r["roc_auc"] for r in results["results"]) > 0.9


def test_novelty_subsamples_the_reference_and_names_unknown_classes(tiny_fashion, capsys):
    results = novelty_experiment(data_dir=tiny_fashion, dims=5, k=5, n_reference=100,
                                 log=lambda *a: None)
    assert results["n_reference"] == 100 and results["unseen"] == ["sandal", "pullover"]
    with pytest.raises(ValueError, match=r"unknown class names \['cat'\]"):
        novelty_experiment(data_dir=tiny_fashion, unseen=["sandal", "cat"])
    assert main(["novelty", "--data-dir", str(tiny_fashion), "--unseen", "sandal,cat"]) == 2
    assert "unknown class names ['cat']" in capsys.readouterr().err
