"""fastzsl.pynomaly against PyNomaly itself: same scores, same conventions, same errors."""
import warnings

import numpy as np
import pytest

from fastzsl import pynomaly
from fastzsl.testing import TOL, gamma, loop_datasets

PyNomaly = pytest.importorskip("PyNomaly.loop", reason="PyNomaly is the oracle")

DATASETS = loop_datasets()
# Both compute LoOP in float64 from the same distances: the derived float64 tolerance of
# every backend against the reference (fastzsl.testing.TOL, with its reasons)
ATOL = TOL[np.dtype(np.float64)]


def _both(*args, **kwargs):
    """(PyNomaly's, fastzsl's) fitted models on the same arguments (warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = PyNomaly.LocalOutlierProbability(*args, **kwargs).fit()
        ours = pynomaly.LocalOutlierProbability(*args, **kwargs).fit()
    return theirs, ours


def _stream_all(model, points):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([float(model.stream(p)) for p in points])


def _assert_same_fit(theirs, ours):
    np.testing.assert_allclose(ours.local_outlier_probabilities,
                               theirs.local_outlier_probabilities.astype(float), **ATOL)
    np.testing.assert_allclose(ours.prob_distances, theirs.prob_distances.astype(float),
                               **ATOL)
    np.testing.assert_allclose(ours.prob_distances_ev, theirs.prob_distances_ev.astype(float),
                               **ATOL)
    assert ours.norm_prob_local_outlier_factor == pytest.approx(
        theirs.norm_prob_local_outlier_factor, rel=ATOL["rtol"], abs=ATOL["atol"])
    assert ours.is_fit and theirs.is_fit


@pytest.mark.parametrize("name", list(DATASETS))
@pytest.mark.parametrize("n_neighbors,extent", [(10, 3), (20, 2), (5, 1)])
def test_fit_equals_pynomaly(name, n_neighbors, extent):
    theirs, ours = _both(DATASETS[name], extent=extent, n_neighbors=n_neighbors)
    _assert_same_fit(theirs, ours)
    assert ours.local_outlier_probabilities.dtype == np.float64
    # the same neighbour sets (PyNomaly's are unordered, ours nearest first), up to ties
    if name != "duplicates":
        np.testing.assert_array_equal(np.sort(ours.neighbor_matrix, axis=1),
                                      np.sort(theirs.neighbor_matrix.astype(int), axis=1))
    np.testing.assert_allclose(ours.distance_matrix, np.sort(theirs.distance_matrix, axis=1),
                               **ATOL)


@pytest.mark.parametrize("name", list(DATASETS))
def test_cluster_labels_equal_pynomaly(name):
    X = DATASETS[name]
    labels = list(np.random.default_rng(3).integers(3, size=len(X)))  # PyNomaly wants a list
    theirs, ours = _both(X, n_neighbors=8, cluster_labels=labels)
    _assert_same_fit(theirs, ours)
    # neighbours come from the point's own cluster
    labels = np.asarray(labels)
    assert (labels[ours.neighbor_matrix] == labels[:, None]).all()
    # and differ from the unclustered fit
    _, flat = _both(X, n_neighbors=8)
    assert np.abs(flat.local_outlier_probabilities - ours.local_outlier_probabilities).max() > 0.01


def test_clusters_of_different_density_get_their_own_nplof():
    rng = np.random.default_rng(4)
    X = np.r_[rng.normal(0, 0.1, (120, 2)), rng.normal(5, 2.0, (150, 2)), [[0.9, 0.9]]]
    labels = [0] * 120 + [1] * 150 + [0]  # the last point belongs to the tight cluster
    theirs, ours = _both(X, n_neighbors=10, cluster_labels=labels)
    _assert_same_fit(theirs, ours)
    assert ours.local_outlier_probabilities[-1] > 0.9


@pytest.mark.parametrize("name", list(DATASETS))
def test_stream_equals_pynomaly(name):
    X = DATASETS[name]
    rng = np.random.default_rng(5)
    new = np.r_[X[:10] + rng.normal(scale=0.05, size=(10, X.shape[1])),
                rng.normal(scale=4.0, size=(10, X.shape[1]))]
    theirs, ours = _both(X, n_neighbors=10)
    expected = _stream_all(theirs, new)
    np.testing.assert_allclose(_stream_all(ours, new), expected, **ATOL)
    assert expected.max() > 0.5 and expected.min() < 0.5  # inliers and outliers both tried
    # fastzsl's extension: all points in one call
    np.testing.assert_allclose(ours.stream(new), expected, **ATOL)
    assert isinstance(ours.stream(new[0]), np.float64)


def test_stream_after_a_clustered_fit_warns_and_equals_pynomaly():
    X = DATASETS["outliers"]
    labels = list(np.arange(len(X)) % 2)
    new = np.random.default_rng(6).normal(scale=3.0, size=(8, X.shape[1]))
    theirs, ours = _both(X, n_neighbors=10, cluster_labels=labels)
    with pytest.warns(UserWarning, match="Stream approach does not support clustered data"):
        ours.stream(new[0])
    np.testing.assert_allclose(_stream_all(ours, new), _stream_all(theirs, new), **ATOL)
    assert ours.cluster_labels == labels  # restored


def test_stream_before_fit_fits_first():
    X = DATASETS["blobs"]
    x = X[0] + 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = PyNomaly.LocalOutlierProbability(X, n_neighbors=10).stream(x)
    ours = pynomaly.LocalOutlierProbability(X, n_neighbors=10)
    with pytest.warns(UserWarning, match="Must fit on historical data"):
        got = ours.stream(x)
    assert ours.is_fit
    assert got == pytest.approx(float(expected), rel=ATOL["rtol"], abs=ATOL["atol"])


def test_groups_of_duplicates_use_pynomalys_zero_replacement():
    """k below the size of duplicate groups: expected pdist 0, where PyNomaly uses 1e-8."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 3))
    X = np.r_[np.repeat(base[:10], 4, axis=0), base[10:], rng.normal(size=(40, 3))]
    theirs, ours = _both(X, n_neighbors=3)
    assert (ours.prob_distances_ev == 0).any()
    _assert_same_fit(theirs, ours)
    assert not np.isnan(ours.local_outlier_probabilities).any()


def test_precomputed_graph_equals_pynomaly_and_data_input():
    X = DATASETS["outliers"]
    _, from_data = _both(X, n_neighbors=7)
    graph = dict(distance_matrix=from_data.distance_matrix,
                 neighbor_matrix=from_data.neighbor_matrix, n_neighbors=7)
    theirs, ours = _both(**graph)
    _assert_same_fit(theirs, ours)
    np.testing.assert_allclose(ours.local_outlier_probabilities,
                               from_data.local_outlier_probabilities, **ATOL)
    for distance in (0.2, 1.0, 5.0):  # stream takes a distance in this mode
        assert _stream_all(ours, [distance]) == pytest.approx(_stream_all(theirs, [distance]),
                                                              rel=ATOL["rtol"], abs=ATOL["atol"])
    # with cluster labels: nPLOF per cluster over the given graph
    labels = list(np.arange(len(X)) % 2)
    _assert_same_fit(*_both(**graph, cluster_labels=labels))
    # PyNomaly's float index matrix works too
    _, floats = _both(distance_matrix=from_data.distance_matrix,
                      neighbor_matrix=from_data.neighbor_matrix.astype(float), n_neighbors=7)
    np.testing.assert_array_equal(floats.local_outlier_probabilities,
                                  ours.local_outlier_probabilities)


def test_float32_and_1d_and_dataframe_input():
    X = DATASETS["blobs"]
    theirs, ours = _both(X.astype(np.float32), n_neighbors=10)
    _assert_same_fit(theirs, ours)  # both compute in float64
    x = X[0].astype(np.float32) + 1
    # PyNomaly measures the new point's distances in float32 here (float32 data and point),
    # within gamma_(d+3) relative; pdist keeps that, PLOF = pdist / ev - 1 moves by at most
    # 2 rel (1 + PLOF), and erf(PLOF / (nPLOF sqrt 2)) by 2 / sqrt(pi) / (nPLOF sqrt 2) times that
    from scipy.special import erfinv
    p = float(ours.stream(x))
    nplof = ours.norm_prob_local_outlier_factor
    plof = max(0.0, float(erfinv(p)) * nplof * np.sqrt(2))
    rel = gamma(X.shape[1] + 3, np.float32)
    slope = 2 / np.sqrt(np.pi) / (nplof * np.sqrt(2))
    assert abs(p - float(theirs.stream(x))) <= slope * 2 * rel * (1 + plof) + ATOL["atol"]
    theirs, ours = _both(X[:, 0].copy(), n_neighbors=10)  # 1-D: one feature
    _assert_same_fit(theirs, ours)
    pd = pytest.importorskip("pandas")
    theirs, ours = _both(pd.DataFrame(X), n_neighbors=10)
    _assert_same_fit(theirs, ours)


def test_n_neighbors_is_adjusted_with_pynomalys_warnings():
    X = DATASETS["blobs"][:30]
    model = pynomaly.LocalOutlierProbability(X, n_neighbors=30)
    with pytest.warns(UserWarning, match="must be less than the number of observations"):
        model.fit()
    assert model.n_neighbors == 29
    model = pynomaly.LocalOutlierProbability(X, n_neighbors=0)
    with pytest.warns(UserWarning, match="must be greater than 0"):
        model.fit()
    assert model.n_neighbors == 10


def test_validation_errors_and_warnings():
    X = DATASETS["blobs"][:60]
    with pytest.raises(pynomaly.ClusterSizeError, match="larger than smallest cluster"):
        pynomaly.LocalOutlierProbability(X, n_neighbors=10,
                                         cluster_labels=[0] * 50 + [1] * 10).fit()
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(pynomaly.MissingValuesError, match="missing values"):
        pynomaly.LocalOutlierProbability(bad).fit()
    assert issubclass(pynomaly.MissingValuesError, (pynomaly.PyNomalyError, ValueError))
    with pytest.warns(UserWarning, match="Data or a distance matrix must be provided"):
        model = pynomaly.LocalOutlierProbability()
    with pytest.raises(pynomaly.ValidationError, match="must be provided"):
        model.fit()
    with pytest.warns(UserWarning, match="must both be provided"):
        pynomaly.LocalOutlierProbability(distance_matrix=np.ones((60, 10)))
    with pytest.warns(UserWarning, match="extent parameter"):
        pynomaly.LocalOutlierProbability(X, extent=4)
    with pytest.warns(UserWarning, match="ndarray or DataFrame"):
        pynomaly.LocalOutlierProbability(X.tolist())
    with pytest.raises(ValueError, match="one label per observation"):
        pynomaly.LocalOutlierProbability(X, cluster_labels=[0, 1] * 29).fit()
    with pytest.raises(ValueError, match="extent must be a positive"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pynomaly.LocalOutlierProbability(X, extent=0).fit()


def test_an_outlier_is_found():
    rng = np.random.default_rng(8)
    X = np.r_[rng.normal(size=(300, 4)), [[9.0, 9.0, 9.0, 9.0]]]
    model = pynomaly.LocalOutlierProbability(X, n_neighbors=10).fit()
    assert model.local_outlier_probabilities.argmax() == 300
    assert model.local_outlier_probabilities[-1] > 0.9


# ---------------------------------------------------------------- PyNomaly's edge cases
_X = np.random.default_rng(11).normal(size=(40, 3))


def _graph(n_neighbors=10):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PyNomaly.LocalOutlierProbability(_X, n_neighbors=n_neighbors).fit()
    return model.distance_matrix.astype(float), model.neighbor_matrix.astype(int)


_D, _I = _graph()
_LABELS = [0] * 30 + [1] * 10
# name -> constructor arguments; both libraries must warn the same and end the same
SAME_AS_PYNOMALY = {
    "data and a distance matrix (fits from the data)":
        lambda: dict(data=_X, distance_matrix=_D, neighbor_matrix=_I),
    "matrices narrower than n_neighbors": lambda: dict(
        distance_matrix=_D[:, :9], neighbor_matrix=_I[:, :9], n_neighbors=10),
    "matrices wider than n_neighbors": lambda: dict(
        distance_matrix=_D, neighbor_matrix=_I, n_neighbors=8),
    "matrices of different widths": lambda: dict(
        distance_matrix=_D, neighbor_matrix=_I[:, :7], n_neighbors=10),
    "n_neighbors above the observations, with matrices": lambda: dict(
        distance_matrix=_D, neighbor_matrix=_I, n_neighbors=50),
    "a cluster too small": lambda: dict(data=_X, n_neighbors=10, cluster_labels=_LABELS),
    "a cluster too small after n_neighbors is lowered": lambda: dict(
        data=_X, n_neighbors=45, cluster_labels=_LABELS),
    "a cluster too small, with matrices": lambda: dict(
        distance_matrix=_D, neighbor_matrix=_I, n_neighbors=10,
        cluster_labels=[0] * 35 + [1] * 5),
    "a cluster too small comes before missing values": lambda: dict(
        data=np.where(np.arange(120).reshape(40, 3) == 5, np.nan, _X), n_neighbors=10,
        cluster_labels=[0] * 35 + [1] * 5),
    "too few labels (a cluster-size error in PyNomaly)": lambda: dict(
        data=_X, n_neighbors=5, cluster_labels=[0, 1]),
    "n_neighbors a float": lambda: dict(data=_X, n_neighbors=10.0),
    "n_neighbors a string": lambda: dict(data=_X, n_neighbors="5"),
    "n_neighbors a float too large (PyNomaly lowers it)": lambda: dict(
        data=_X, n_neighbors=45.0),
    "n_neighbors negative": lambda: dict(data=_X, n_neighbors=-1),
    "extent a float": lambda: dict(data=_X, extent=2.0),
    "extent a float outside 1-3": lambda: dict(data=_X, extent=0.5),
    "cluster labels as an array": lambda: dict(
        data=_X, n_neighbors=5, cluster_labels=np.arange(40) % 2),
    "cluster labels as a tuple": lambda: dict(
        data=_X, n_neighbors=5, cluster_labels=tuple(np.arange(40) % 2)),
    "use_numba not a bool": lambda: dict(data=_X, use_numba=0),
    "n_jobs 2 without numba": lambda: dict(data=_X, n_jobs=2),
    "n_jobs -1 without numba": lambda: dict(data=_X, n_jobs=-1),
    "n_jobs 2 with matrices (no warning there)": lambda: dict(
        distance_matrix=_D, neighbor_matrix=_I, n_jobs=2),
    "n_jobs 0": lambda: dict(data=_X, n_jobs=0),
    "missing values come before the n_jobs warning": lambda: dict(
        data=np.where(np.arange(120).reshape(40, 3) == 5, np.nan, _X), n_jobs=2),
}


def _outcome(library, kwargs, positional=()):
    """(warning messages in order, scores or the exception's class name)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = library.LocalOutlierProbability(*positional, **kwargs).fit()
            result = np.asarray(model.local_outlier_probabilities, dtype=float)
        except Exception as exc:  # the class is compared below
            result = type(exc)
    return [str(w.message) for w in caught if w.category is UserWarning], result


def _pynomaly_kwargs(kwargs):
    """PyNomaly's type check cannot look up data=, so pass it by position there."""
    kwargs = dict(kwargs)
    data = kwargs.pop("data", None)
    return kwargs, (() if data is None else (data,))


@pytest.mark.parametrize("case", list(SAME_AS_PYNOMALY))
def test_warnings_errors_and_scores_as_pynomaly(case):
    kwargs = SAME_AS_PYNOMALY[case]()
    their_kwargs, positional = _pynomaly_kwargs(kwargs)
    their_warnings, theirs = _outcome(PyNomaly, their_kwargs, positional)
    our_warnings, ours = _outcome(pynomaly, their_kwargs, positional)
    assert our_warnings == their_warnings
    if isinstance(theirs, type):
        assert isinstance(ours, type), f"PyNomaly raises {theirs.__name__}, fastzsl fits"
        assert ours.__name__ == theirs.__name__ or issubclass(ours, theirs), (ours, theirs)
    else:
        assert not isinstance(ours, type), f"fastzsl raises {ours.__name__}"
        np.testing.assert_allclose(ours, theirs, **ATOL)
    # by keyword too (fastzsl accepts data=; PyNomaly's type check raises KeyError on it)
    _, by_keyword = _outcome(pynomaly, kwargs)
    if isinstance(ours, type):
        assert by_keyword is ours
    else:
        np.testing.assert_array_equal(by_keyword, ours)


def test_positional_arguments_of_the_wrong_type_warn_by_value_as_pynomaly():
    positional = (_X.tolist(), None, None, 3, 10)
    their_warnings, theirs = _outcome(PyNomaly, {}, positional)
    our_warnings, ours = _outcome(pynomaly, {}, positional)
    assert our_warnings == their_warnings
    assert "Argument None is not of type <class 'numpy.ndarray'>" in our_warnings
    np.testing.assert_allclose(ours, theirs, **ATOL)


def test_n_jobs_without_numba_runs_one_thread(monkeypatch):
    """PyNomaly falls back to sequential without use_numba; so does fastzsl, which warns
    the same. With use_numba=True the threads are n_jobs; fastzsl's default None keeps
    fastzsl's rule (all cores)."""
    seen = []
    real = pynomaly.thread_limits

    def recording(n_jobs, **kwargs):
        seen.append(n_jobs)
        return real(n_jobs, **kwargs)

    monkeypatch.setattr(pynomaly, "thread_limits", recording)
    with pytest.warns(UserWarning, match="n_jobs > 1 requires use_numba=True"):
        model = pynomaly.LocalOutlierProbability(_X, n_jobs=2).fit()
    model.stream(_X[0] + 1)
    assert seen == [1, 1]
    seen.clear()
    monkeypatch.setattr(pynomaly, "_numba_installed", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pynomaly.LocalOutlierProbability(_X, n_jobs=2, use_numba=True).fit()
        pynomaly.LocalOutlierProbability(_X).fit()
    assert seen == [2, None]


def test_use_numba_without_numba_warns_as_pynomaly(monkeypatch):
    """PyNomaly checks sys.modules for numba; fastzsl whether numba can be imported."""
    monkeypatch.delitem(__import__("sys").modules, "numba", raising=False)
    monkeypatch.setattr(pynomaly, "_numba_installed", lambda: False)
    kwargs = dict(use_numba=True, n_jobs=2)
    their_warnings, theirs = _outcome(PyNomaly, kwargs, (_X,))
    our_warnings, ours = _outcome(pynomaly, kwargs, (_X,))
    assert their_warnings[0] == "Numba is not available, falling back to pure python mode."
    assert our_warnings == their_warnings
    np.testing.assert_allclose(ours, theirs, **ATOL)


# The documented differences, each pinned against PyNomaly.
def test_where_pynomaly_fails_inside_numpy_fastzsl_names_the_problem():
    for kwargs in (dict(), dict(distance_matrix=_D)):
        their_warnings, theirs = _outcome(PyNomaly, kwargs)
        our_warnings, ours = _outcome(pynomaly, kwargs)
        assert our_warnings == their_warnings
        assert theirs is TypeError and ours is pynomaly.ValidationError
    with pytest.raises(pynomaly.ValidationError, match="one row per observation"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pynomaly.LocalOutlierProbability(distance_matrix=_D, neighbor_matrix=_I[:30]).fit()


def test_extent_zero_is_refused_where_pynomaly_returns_zeros():
    _, theirs = _outcome(PyNomaly, dict(extent=0), (_X,))
    assert not isinstance(theirs, type) and (theirs == 0).all()
    _, ours = _outcome(pynomaly, dict(extent=0), (_X,))
    assert ours is ValueError


def test_n_jobs_none_is_fastzsls_default():
    _, theirs = _outcome(PyNomaly, dict(n_jobs=None), (_X,))
    assert theirs is TypeError
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = pynomaly.LocalOutlierProbability(_X, n_jobs=None).fit()
    np.testing.assert_allclose(ours.local_outlier_probabilities,
                               _outcome(PyNomaly, {}, (_X,))[1], **ATOL)
