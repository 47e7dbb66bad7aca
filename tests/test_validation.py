"""Bad input gets a clear error naming the problem and the values; odd but valid input works."""
import numpy as np
import pytest

import fastzsl
from fastzsl import GaussianNovelty, LoOP
from fastzsl.backends import BackendUnavailableError, numpy_


@pytest.fixture
def X(rng):
    return rng.normal(size=(60, 4))


def _entry_points(X):
    """Each public entry point as a function of one 2-D input."""
    loop = LoOP(n_neighbors=5).fit(X)
    gauss = GaussianNovelty().fit(X, np.arange(len(X)) % 3)
    return {
        "knn queries": lambda A: fastzsl.knn(A, X, 3),
        "knn reference": lambda A: fastzsl.knn(X, A, 3),
        "LoOP.fit": lambda A: LoOP(n_neighbors=5).fit(A),
        "LoOP.outlier_probability": loop.outlier_probability,
        "GaussianNovelty.predict": gauss.predict,
    }


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_named(X, bad):
    A = X.copy()
    A[7, 2] = bad
    for name, call in _entry_points(X).items():
        with pytest.raises(ValueError, match=rf"contains NaN or infinity: {bad} at row 7, column 2"):
            call(A)


def test_empty_input(X):
    for name, call in _entry_points(X).items():
        with pytest.raises(ValueError, match=r"is empty: 0 sample\(s\) \(shape=\(0, 4\)\)"):
            call(np.empty((0, 4)))


def test_one_dimensional_input(X):
    for name, call in _entry_points(X).items():
        with pytest.raises(ValueError, match=r"must be 2-D .* got 1-D array of shape \(4,\); "
                                             r"Reshape your data"):
            call(X[0])


def test_wrong_feature_width(X):
    with pytest.raises(ValueError, match="queries has 3 features, but the reference is expecting 4 features"):
        fastzsl.knn(X[:, :3], X, 3)
    with pytest.raises(ValueError, match="X has 5 features, but LoOP is expecting 4 features as input"):
        LoOP(n_neighbors=5).fit(X).outlier_probability(np.ones((2, 5)))


def test_k_larger_than_the_data(X):
    with pytest.raises(ValueError, match=r"k=61 is larger than the data: at most 60 neighbours"):
        fastzsl.knn(X, X, 61)
    with pytest.raises(ValueError, match=r"k=60 is larger than the data: at most 59 neighbours "
                                         r"exist \(n_samples = 60, minus the point itself\)"):
        fastzsl.knn(X, X, 60, exclude_self=True)
    with pytest.raises(ValueError, match=r"n_neighbors=60 is larger than the data: at most 59"):
        LoOP(n_neighbors=60).fit(X)
    with pytest.raises(ValueError, match="k must be >= 1, got k=0"):
        fastzsl.knn(X, X, 0)
    with pytest.raises(TypeError, match=r"k must be an integer, got 2.5"):
        fastzsl.knn(X, X, 2.5)


def test_exclude_self_needs_the_reference_as_queries(X):
    with pytest.raises(ValueError, match="there are 10 queries and 60 reference rows"):
        fastzsl.knn(X[:10], X, 3, exclude_self=True)


def test_integer_and_bool_become_float64_float16_becomes_float32(X):
    ints = np.round(X * 10).astype(np.int32)
    D, _ = fastzsl.knn(ints, ints, 3)
    assert D.dtype == np.float64
    D, _ = fastzsl.knn(X.astype(np.float16), X.astype(np.float16), 3)
    assert D.dtype == np.float32
    D, _ = fastzsl.knn(X > 0, X > 0, 3)
    assert D.dtype == np.float64
    assert LoOP(n_neighbors=5).fit(ints).probabilities_.dtype == np.float64


@pytest.mark.parametrize("bad,error,message", [
    (np.array([["a", "b"]] * 5), TypeError, "has dtype <U1; expected a real numeric array"),
    (np.array([[1, "x"]] * 5, dtype=object), TypeError, "has dtype object with non-numeric"),
    (np.ones((5, 2), dtype=complex), ValueError, "Complex data not supported"),
])
def test_unsupported_dtypes_are_refused(bad, error, message):
    with pytest.raises(error, match=message):
        fastzsl.knn(bad, bad, 1)


def test_object_arrays_of_numbers_and_sparse(X):
    D, _ = fastzsl.knn(X.astype(object), X, 2)
    assert D.dtype == np.float64
    from scipy import sparse
    with pytest.raises(TypeError, match="sparse input is not supported"):
        LoOP().fit(sparse.csr_matrix(X))


def test_non_contiguous_and_read_only_memmap_work(X, tmp_path):
    strided = np.asfortranarray(np.repeat(X, 2, axis=1))[:, ::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(fastzsl.knn(strided, strided, 3)[1], fastzsl.knn(X, X, 3)[1])
    path = tmp_path / "x.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    assert not mm.flags.writeable
    np.testing.assert_array_equal(LoOP(n_neighbors=5).fit(mm).probabilities_,
                                  LoOP(n_neighbors=5).fit(X).probabilities_)
    np.testing.assert_array_equal(np.load(path), X)  # input untouched


def test_all_points_identical(backend):
    X = np.full((20, 3), 2.0)
    D, I = fastzsl.knn(X, X, 5, exclude_self=True, backend=backend)
    assert (D == 0).all() and (I == numpy_.knn(X, X, 5, 0)[1]).all()
    assert (LoOP(n_neighbors=5, backend=backend).fit(X).probabilities_ == 0).all()
    with pytest.raises(ValueError, match=r"classes 0.0 \(n_samples = 20\) have zero variance"):
        GaussianNovelty().fit(X, np.zeros(20))


def test_unknown_and_unavailable_backends(X, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'; choose 'auto' or one of"):
        fastzsl.knn(X, X, 3, backend="cuda")
    with pytest.raises(ValueError, match="unknown kNN method 'hnsw'"):
        fastzsl.knn(X, X, 3, method="hnsw")
    from fastzsl import backends
    monkeypatch.setitem(backends._REGISTRY, "ghost", ("fastzsl.backends.no_such_module",
                                                      "ghost (pip install ghost)"))
    backends._load.cache_clear()
    with pytest.raises(BackendUnavailableError,
                       match=r"backend 'ghost' is not available: .*install ghost \(pip install ghost\)"):
        fastzsl.knn(X, X, 3, backend="ghost")
    assert "ghost" not in fastzsl.available_backends()


def test_auto_logs_what_it_passes_over(X, monkeypatch, caplog):
    from fastzsl import backends
    monkeypatch.setattr(backends, "AUTO_ORDER", ("ghost", "numpy"))
    monkeypatch.setitem(backends._REGISTRY, "ghost", ("fastzsl.backends.no_such_module", "ghost"))
    backends._load.cache_clear()
    with caplog.at_level("INFO", logger="fastzsl.backends"):
        fastzsl.knn(X, X, 3)
    assert "backend='auto' passed over 'ghost'" in caplog.text


def test_missing_faiss_is_named(X, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # "import faiss" now raises ImportError
    with pytest.raises(ImportError, match=r"faiss is needed for kNN methods 'faiss' and 'ivf' "
                                          r".*pip install 'fastzsl\[faiss\]'"):
        fastzsl.knn(X, X, 3, method="faiss")


def test_check_option_lists_the_options():
    from fastzsl._validation import check_option

    assert check_option("b", ("a", "b"), "mode") == "b"
    assert check_option(None, ("a",), "mode", allow_none=True) is None
    with pytest.raises(ValueError, match=r"mode must be one of \('a', 'b'\), got 'c'"):
        check_option("c", ("a", "b"), "mode")
    with pytest.raises(ValueError, match=r"one of \('a',\) or None, got \['a'\]"):
        check_option(["a"], ("a",), "mode", allow_none=True)  # unhashable: not an option
    with pytest.raises(ValueError, match="got None"):
        check_option(None, ("a",), "mode")


def test_check_class_names_names_the_unknown_and_repeated():
    from fastzsl._validation import check_class_names

    known = ["cat", "dog", "bird"]
    assert check_class_names(np.array(["dog", "cat"]), known, "pets") == ["dog", "cat"]
    with pytest.raises(ValueError, match=r"unknown class names \['cow'\]; pets has"):
        check_class_names(["dog", "cow"], known, "pets")
    with pytest.raises(ValueError, match=r"repeat: \['dog'\]"):
        check_class_names(["dog", "dog"], known, "pets")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_values_whose_sum_overflows_pass(X, dtype):
    """The finite check sums the input first (a NaN or infinity makes the sum non-finite);
    finite entries whose sum overflows are checked entry by entry: they pass, and a NaN
    among them is still named."""
    from fastzsl._validation import as_float_matrix
    big = np.finfo(dtype).max
    A = X.astype(dtype)
    A[:, 0] = big
    A[1::2, 1] = -big
    with np.errstate(over="raise", invalid="raise"):  # the check itself warns of nothing
        np.testing.assert_array_equal(as_float_matrix(A, "A"), A)
    A[40, 3] = np.nan
    with pytest.raises(ValueError, match=r"A contains NaN or infinity: nan at row 40, column 3"):
        as_float_matrix(A, "A")


@pytest.mark.parametrize("signs", [(1, 1), (1, -1)])
def test_infinities_of_either_sign_are_named(X, signs):
    """Two infinities (their sum inf or NaN): the first one is named."""
    A = X.copy()
    A[3, 1] = signs[0] * np.inf
    A[9, 0] = signs[1] * np.inf
    with pytest.raises(ValueError, match=r"contains NaN or infinity: inf at row 3, column 1"):
        fastzsl.knn(A, X, 3)


@pytest.mark.parametrize("backend", ["numpy", "numba", "cython"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_gaussian_loglik_names_a_non_finite_row_on_every_backend(backend, bad, dtype):
    """The cython backend finds NaN and infinity in F in its own row norms (no separate
    pass over F); the error is the same as the other backends' (and any later rows' too:
    the bad row sits in a later tile)."""
    from fastzsl.testing import backend_is_available
    if not backend_is_available(backend):
        pytest.skip(f"{backend} backend unavailable")
    rng = np.random.default_rng(0)
    F = rng.standard_normal((3000, 5)).astype(dtype)
    F[2345, 3] = bad
    means = rng.standard_normal((4, 5))
    with pytest.raises(ValueError,
                       match=rf"^F contains NaN or infinity: {bad} at row 2345, column 3$"):
        fastzsl.gaussian_loglik(F, means, np.ones(4), full=False, backend=backend)
