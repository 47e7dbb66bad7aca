"""fastzsl.pynomaly against PyNomaly itself: same scores, same conventions, same errors."""
import warnings

import numpy as np
import pytest

from fastzsl import pynomaly
from fastzsl.testing import loop_datasets

PyNomaly = pytest.importorskip("PyNomaly.loop", reason="PyNomaly is the oracle")

DATASETS = loop_datasets()
ATOL = dict(rtol=0, atol=1e-10)


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
                               rtol=1e-12)
    np.testing.assert_allclose(ours.prob_distances_ev, theirs.prob_distances_ev.astype(float),
                               rtol=1e-12)
    assert ours.norm_prob_local_outlier_factor == pytest.approx(
        theirs.norm_prob_local_outlier_factor, rel=1e-12)
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
                               rtol=1e-12, atol=1e-14)


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
    assert got == pytest.approx(float(expected), abs=1e-10)


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
                                                              abs=1e-10)
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
    assert float(ours.stream(x)) == pytest.approx(float(theirs.stream(x)), abs=1e-5)
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
    with pytest.warns(UserWarning, match="not both"):
        pynomaly.LocalOutlierProbability(X, distance_matrix=np.ones((60, 10)))
    with pytest.warns(UserWarning, match="must both be provided"):
        pynomaly.LocalOutlierProbability(distance_matrix=np.ones((60, 10)))
    with pytest.warns(UserWarning, match="must match"):
        pynomaly.LocalOutlierProbability(distance_matrix=np.ones((60, 10)),
                                         neighbor_matrix=np.ones((60, 9), dtype=int))
    with pytest.warns(UserWarning, match="does not match the number of neighbors"):
        model = pynomaly.LocalOutlierProbability(distance_matrix=np.ones((60, 9)),
                                                 neighbor_matrix=np.ones((60, 9), dtype=int))
    with pytest.raises(pynomaly.ValidationError):
        model.fit()
    with pytest.warns(UserWarning, match="extent parameter"):
        pynomaly.LocalOutlierProbability(X, extent=4)
    with pytest.warns(UserWarning, match="ndarray or DataFrame"):
        pynomaly.LocalOutlierProbability(X.tolist())
    with pytest.raises(ValueError, match="one label per observation"):
        pynomaly.LocalOutlierProbability(X, cluster_labels=[0, 1]).fit()
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
