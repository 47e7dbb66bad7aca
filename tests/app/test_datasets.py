"""fastzsl.app.datasets: the IDX reader, the loaders' errors and the paper's split."""
import gzip
import pickle

import numpy as np
import pytest

from fastzsl.app.datasets import (load_cifar10, load_dataset, load_fashion_mnist, read_idx,
                                  zero_shot_split)

from .conftest import write_idx


def test_idx_round_trip_and_corruption(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
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


def test_tiny_fashion_loads(tiny_fashion):
    X_train, y_train, X_test, y_test, names = load_dataset("fashion-mnist", tiny_fashion)
    assert X_train.shape == (400, 28, 28) and X_test.shape == (120, 28, 28)
    assert y_train.dtype == np.int64 and len(names) == 10
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        load_dataset("mnist")


def test_zero_shot_split_is_the_papers():
    y = np.repeat(np.arange(10), 100)
    train, val = zero_shot_split(y, [3, 9], random_state=1)
    assert not set(train) & set(val)
    assert set(np.bincount(y[train], minlength=10)[[0, 1, 2, 4, 5, 6, 7, 8]]) == {95}
    assert np.bincount(y[train], minlength=10)[[3, 9]].tolist() == [0, 0]
    assert np.bincount(y[val], minlength=10).tolist() == [5] * 10
    again = zero_shot_split(y, [3, 9], random_state=1)
    np.testing.assert_array_equal(again[0], train)
    assert not np.array_equal(zero_shot_split(y, [3, 9], random_state=2)[1], val)
    with pytest.raises(ValueError, match="every class is unseen"):
        zero_shot_split(np.array([0, 0, 1, 1]), [0, 1])


def _write_cifar(folder, rng, n=20):
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, n).tolist()
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)


def test_cifar10_pickles(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder, rng)
    X, y, Xt, yt, names = load_cifar10(folder)
    assert X.shape == (100, 32, 32, 3) and Xt.shape == (20, 32, 32, 3) and X.dtype == np.uint8
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)
    # channel-first rows of 1024 red, 1024 green, 1024 blue values -> HWC
    np.testing.assert_array_equal(Xt[0, 0, :, 0], raw[b"data"][0, :32])
    np.testing.assert_array_equal(Xt[0, :, :, 2].ravel(), raw[b"data"][0, 2048:])
    assert names[3] == "cat" and names[9] == "truck"


def test_cifar10_errors(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):
        load_cifar10(tmp_path)
    folder = tmp_path / "c"
    _write_cifar(folder, rng)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [1]}, f)
    with pytest.raises(ValueError, match="asks to load builtins.print"):
        load_cifar10(folder)
