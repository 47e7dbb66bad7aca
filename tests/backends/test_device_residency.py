"""Device input stays on the device through the public API.

Run under the CPU execution of the CUDA kernels (tests/cuda_host/): the stand-in for CuPy
counts every whole-array copy between host and device, refuses NumPy's implicit reads of
a device array, and counts synchronising scalar reads apart. CuPy input through
``fastzsl.knn``, ``ExactIndex``, ``LoOP``, ``loop_fit``/``loop_score`` and
``gaussian_loglik`` must copy no array either way, come back as CuPy, equal the NumPy
reference, and be checked with the same messages as NumPy input. With a real CuPy these
tests skip: it has no transfer counter.

Torch CUDA tensors (``knn``, ``LoOP.fit``/``outlier_probability``, ``gaussian_loglik``) are
tested with a stand-in tensor over a fake CuPy array and a patched ``torch.from_dlpack``:
that proves the plumbing (DLPack in at the boundary, cupy backend, DLPack out, no copy),
not the real torch/CuPy DLPack interop, which needs a GPU.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import fastzsl
from fastzsl import neighbors
from fastzsl._validation import as_float_matrix
from fastzsl.backends import get_backend, numpy_
from fastzsl.testing import TOL, assert_knn_equal

# Scalar reads one public call may make (validation's finiteness and range checks, LoOP's
# nPLOF and its -1 guard), however large the data: a bound, so that a per-row or per-chunk
# read shows.
MAX_SCALARS = 12


@pytest.fixture
def fake(monkeypatch):
    cupy = sys.modules.get("cupy")
    if not getattr(cupy, "IS_FAKE", False):
        pytest.skip("needs the CPU harness's stand-in for CuPy, which counts transfers")
    # Several query chunks, so that a per-chunk upload of the reference would show.
    monkeypatch.setattr(neighbors._search, "SEARCH_CHUNK", 64)
    return cupy


class _Counted:
    """Counts the transfers of the ``with`` body."""

    def __init__(self, fake):
        self.fake = fake

    def __enter__(self):
        self.fake.reset_counters()
        return self

    def __exit__(self, *exc):
        self.arrays = dict(self.fake.transfers)
        self.scalars = self.fake.scalar_transfers["to_host"]
        self.kernels = [name for name, *_ in self.fake.launches]


def _assert_no_array_moved(counted):
    assert counted.arrays == {"to_device": 0, "to_host": 0}, counted.arrays
    assert counted.scalars <= MAX_SCALARS, counted.scalars


def _points(n=300, d=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X[:12] = X[0]  # duplicates: zero distances, ties
    return X.astype(dtype)


def test_the_stand_in_sees_every_way_to_the_host(fake):
    # What the counts below rest on: a device array reaches NumPy only through a counted
    # door, never implicitly.
    x = fake.asarray(np.arange(6.0).reshape(2, 3))
    for implicit in (np.asarray, np.isfinite, lambda a: np.zeros(3) + a,
                     lambda a: np.concatenate([a]), lambda a: memoryview(a.data), lambda a: a.base):
        with pytest.raises((TypeError, AttributeError)):
            implicit(x)
    with _Counted(fake) as counted:
        x.get(), fake.asnumpy(x), x.tolist(), repr(x)
    assert counted.arrays == {"to_device": 0, "to_host": 4} and counted.scalars == 0
    with _Counted(fake) as counted:
        for read in (float, int, bool, lambda a: a.item(), lambda a: range(9)[a]):
            read(x.astype(np.int64)[1, 2])
    assert counted.arrays == {"to_device": 0, "to_host": 0} and counted.scalars == 5
    with _Counted(fake) as counted:
        y = fake.asarray(np.ones(3)) + x.sum(axis=0) * 2.0  # one upload; the rest stays
    assert counted.arrays == {"to_device": 1, "to_host": 0} and isinstance(y, fake.ndarray)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("exclude_self", [False, True], ids=["queries", "self"])
def test_knn_of_device_input_moves_no_array(fake, dtype, exclude_self):
    R = _points(dtype=dtype)
    Q = R if exclude_self else _points(150, seed=1, dtype=dtype)
    Rd, Qd = fake.asarray(R), fake.asarray(Q)
    with _Counted(fake) as counted:
        D, I = fastzsl.knn(Qd, Rd, 7, exclude_self=exclude_self)
    _assert_no_array_moved(counted)
    assert "knn_" + ("f32" if dtype == np.float32 else "f64") in counted.kernels
    assert isinstance(D, fake.ndarray) and isinstance(I, fake.ndarray)
    assert_knn_equal(D.get(), I.get(), *numpy_.knn(Q, R, 7, 0 if exclude_self else -1),
                     **TOL[np.dtype(dtype)])


def test_exact_index_keeps_a_device_reference_on_the_device(fake, monkeypatch):
    # Low-dimensional and "large": backend="auto" on NumPy input would take the host k-d tree.
    monkeypatch.setattr(neighbors._methods, "KDTREE_MIN_N", 10)
    R, Q = _points(d=2), _points(200, d=2, seed=3)
    with _Counted(fake) as counted:
        index = fastzsl.ExactIndex(fake.asarray(R))
    assert counted.arrays == {"to_device": 1, "to_host": 0}  # the test's own asarray
    assert isinstance(index.reference, fake.ndarray)
    assert index.kernels.name == "cupy" and index.method == "exact"
    Qd = fake.asarray(Q)
    with _Counted(fake) as counted:
        D, I = index.search(Qd, 5)
    _assert_no_array_moved(counted)
    assert_knn_equal(D.get(), I.get(), *numpy_.knn(Q, R, 5, -1), **TOL[np.dtype(np.float64)])


def test_a_host_reference_is_uploaded_once_per_index(fake):
    R, Q = _points(), _points(200, seed=4)
    index = fastzsl.ExactIndex(R, backend="cupy")
    Qd = fake.asarray(Q)
    with _Counted(fake) as counted:
        index.search(Qd, 5)
        D, I = index.search(Qd, 5)  # 4 query chunks a search
    assert counted.arrays == {"to_device": 1, "to_host": 0}, counted.arrays
    assert isinstance(D, fake.ndarray)
    assert_knn_equal(D.get(), I.get(), *numpy_.knn(Q, R, 5, -1), **TOL[np.dtype(np.float64)])


def test_loop_fitted_and_scored_on_the_device_moves_no_array(fake):
    X, new = _points(), _points(130, seed=5)
    new[-1] = 9.0
    Xd, newd = fake.asarray(X), fake.asarray(new)
    with _Counted(fake) as counted:
        model = fastzsl.LoOP(n_neighbors=8).fit(Xd)
    _assert_no_array_moved(counted)
    assert model.backend_ == "cupy" and isinstance(model.index_.reference, fake.ndarray)
    assert isinstance(model.probabilities_, fake.ndarray)
    assert isinstance(model.fit_.pdist, fake.ndarray)
    results = []
    for method in (model.outlier_probability, model.score_samples, model.predict):
        with _Counted(fake) as counted:
            results.append(method(newd))
        _assert_no_array_moved(counted)
    prob, normal, labels = results
    assert all(isinstance(a, fake.ndarray) for a in (prob, normal, labels))

    host = fastzsl.LoOP(n_neighbors=8, backend="numpy").fit(X)
    tol = TOL[np.dtype(np.float64)]
    np.testing.assert_allclose(model.probabilities_.get(), host.probabilities_, **tol)
    np.testing.assert_allclose(model.fit_.mean_expected_pdist, host.fit_.mean_expected_pdist,
                               **tol)
    np.testing.assert_allclose(prob.get(), host.outlier_probability(new), **tol)
    np.testing.assert_allclose(normal.get(), host.score_samples(new), **tol)
    np.testing.assert_array_equal(labels.get(), host.predict(new))


def test_loop_fit_and_score_of_a_device_graph_move_no_array(fake):
    X, new = _points(), _points(90, seed=6)
    D, I = numpy_.knn(X, X, 6, 0)
    Dq, Iq = numpy_.knn(new, X, 6, -1)
    args = [fake.asarray(a) for a in (D, I, Dq, Iq)]
    with _Counted(fake) as counted:
        fit = fastzsl.loop_fit(args[0], args[1])
    _assert_no_array_moved(counted)
    with _Counted(fake) as counted:
        stream = fastzsl.loop_score(args[2], args[3], fit, scoring="stream")
    _assert_no_array_moved(counted)
    with _Counted(fake) as counted:
        prob = fastzsl.loop_score(args[2], args[3], fit)
    _assert_no_array_moved(counted)
    assert all(isinstance(a, fake.ndarray) for a in (fit.pdist, fit.probabilities, prob))
    ref = fastzsl.loop_fit(D, I, backend="numpy")
    tol = TOL[np.dtype(np.float64)]
    np.testing.assert_allclose(fit.probabilities.get(), ref.probabilities, **tol)
    np.testing.assert_allclose(fit.mean_expected_pdist, ref.mean_expected_pdist, **tol)
    np.testing.assert_allclose(prob.get(), fastzsl.loop_score(Dq, Iq, ref, backend="numpy"),
                               **tol)
    np.testing.assert_allclose(
        stream.get(), fastzsl.loop_score(Dq, Iq, ref, scoring="stream", backend="numpy"), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("full", [True, False], ids=["full", "reductions"])
def test_gaussian_loglik_of_device_input_moves_no_array(fake, dtype, full):
    rng = np.random.default_rng(7)
    F, means = rng.normal(size=(260, 5)).astype(dtype), rng.normal(size=(9, 5)).astype(dtype)
    variances, log_weights = rng.uniform(0.5, 2, 9), np.log(rng.dirichlet(np.ones(9)))
    thresholds = np.full(9, -6.0)
    on_device = [fake.asarray(a) for a in (F, means, variances, log_weights, thresholds)]
    kernel = "gaussian_" + ("f32" if dtype == np.float32 else "f64")
    with _Counted(fake) as counted:
        got = fastzsl.gaussian_loglik(on_device[0], on_device[1], on_device[2],
                                      log_weights=on_device[3], thresholds=on_device[4],
                                      full=full)
    _assert_no_array_moved(counted)
    assert counted.kernels == [kernel]
    with _Counted(fake) as counted:  # the default weights and thresholds made on the device
        defaults = fastzsl.gaussian_loglik(on_device[0], on_device[1], on_device[2])
    _assert_no_array_moved(counted)
    assert counted.kernels == [kernel]
    ref = fastzsl.gaussian_loglik(F, means, variances, log_weights=log_weights,
                                  thresholds=thresholds, backend="numpy")
    tol = TOL[np.dtype(dtype)]
    assert (got.loglik is None) == (not full)
    for name in ("loglik", "max", "argmax", "logsumexp", "all_below"):
        value = getattr(got, name)
        if value is None:
            continue
        assert isinstance(value, fake.ndarray), name
        np.testing.assert_allclose(value.get(), getattr(ref, name), **tol)
    np.testing.assert_allclose(defaults.max.get(), ref.max, **tol)


def test_auto_picks_cupy_for_device_input(fake):
    assert get_backend("auto", device_input=True).name == "cupy"
    assert get_backend("auto").name != "cupy"  # host input keeps the CPU order


def test_a_named_host_backend_takes_device_input_through_the_host(fake):
    R = _points()
    with _Counted(fake) as counted:
        D, I = fastzsl.knn(fake.asarray(R), fake.asarray(R), 4, exclude_self=True,
                           backend="numpy")
    assert not counted.kernels  # the NumPy reference ran
    assert counted.arrays["to_host"] >= 1 and isinstance(D, fake.ndarray)
    assert_knn_equal(D.get(), I.get(), *numpy_.knn(R, R, 4, 0), **TOL[np.dtype(np.float64)])


def _bad_inputs():
    X = _points(20, 3)
    nan, inf = X.copy(), X.copy()
    nan[7, 2] = np.nan
    inf[3, 0] = -np.inf
    return {"nan": nan, "inf": inf, "1-D": X[0], "3-D": X[None], "no rows": X[:0],
            "no columns": X[:, :0], "complex": X.astype(np.complex128)}


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_device_validation_refuses_what_host_validation_refuses(fake, case):
    bad = _bad_inputs()[case]
    with pytest.raises((ValueError, TypeError)) as host:
        as_float_matrix(bad, "queries", keep_device=True)
    with pytest.raises(type(host.value)) as device:
        as_float_matrix(fake.asarray(bad), "queries", keep_device=True)
    assert str(device.value) == str(host.value)
    # and through the public API, validated once at its boundary
    R = fake.asarray(_points(20, 3))
    with pytest.raises(type(host.value), match="queries"):
        fastzsl.knn(fake.asarray(bad), R, 3)


def test_device_validation_keeps_the_dtype_policy_and_checks_k(fake):
    X = np.arange(12).reshape(4, 3)
    for data, dtype in ((X, np.float64), (X.astype(np.float16), np.float32),
                        (X.astype(np.float32), np.float32), (X > 5, np.float64)):
        checked = as_float_matrix(fake.asarray(data), keep_device=True)
        assert isinstance(checked, fake.ndarray) and checked.dtype == dtype
        assert checked.flags.c_contiguous
    transposed = as_float_matrix(fake.asarray(X.astype(np.float64)).T, keep_device=True)
    assert transposed.flags.c_contiguous
    np.testing.assert_array_equal(transposed.get(), X.T)
    assert isinstance(as_float_matrix(fake.asarray(X)), np.ndarray)  # the host contract
    with pytest.raises(ValueError) as host:
        fastzsl.knn(X, X, 5)
    with pytest.raises(ValueError) as device:
        fastzsl.knn(fake.asarray(X), fake.asarray(X), 5)
    assert str(device.value) == str(host.value)


@pytest.mark.parametrize("rule", ["paper", "mixture"])
def test_gaussian_novelty_fitted_on_the_device_stays_there(fake, rule):
    rng = np.random.default_rng(8)
    y = rng.integers(0, 5, size=240)  # host labels, as datasets give them
    F = rng.normal(size=(240, 6)) + y[:, None]
    new = np.concatenate([rng.normal(size=(70, 6)) + 2, [[30.0] * 6]])
    Fd, newd = fake.asarray(F), fake.asarray(new)
    with _Counted(fake) as counted:
        model = fastzsl.GaussianNovelty(rule=rule).fit(Fd, y)
    # Only what the host labels give goes up: the class grouping and the priors.
    assert counted.arrays == {"to_device": 2, "to_host": 0}, counted.arrays
    for fitted in (model.means_, model.variances_, model.priors_):
        assert isinstance(fitted, fake.ndarray)
    host = fastzsl.GaussianNovelty(rule=rule, backend="numpy").fit(F, y)
    tol = TOL[np.dtype(np.float64)]
    np.testing.assert_allclose(model.means_.get(), host.means_, **tol)
    np.testing.assert_allclose(model.variances_.get(), host.variances_, **tol)
    for method, moved in ((model.outlier_probability, 0), (model.score_samples, 0),
                          (model.log_likelihood, 0),
                          # the paper rule's C thresholds, read as scalars, go up as one array
                          (model.predict, 1 if rule == "paper" else 0)):
        with _Counted(fake) as counted:
            got = method(newd)
        assert counted.arrays == {"to_device": moved, "to_host": 0}, (method, counted.arrays)
        assert isinstance(got, fake.ndarray), method
        expected = getattr(host, method.__name__)(new)
        if method.__name__ == "predict":
            np.testing.assert_array_equal(got.get(), expected)
        else:
            np.testing.assert_allclose(got.get(), expected, **tol)
    # saved and loaded, the model is a host model with the same answers
    meta, arrays = model._export()
    restored = fastzsl.GaussianNovelty._restore(meta, arrays)
    np.testing.assert_allclose(restored.outlier_probability(new), host.outlier_probability(new),
                               **tol)


# --- torch CUDA tensors: the DLPack plumbing ------------------------------------------------
# These prove the plumbing only: a torch CUDA tensor is recognised, handed to
# ``cupy.from_dlpack`` at the boundary, runs the cupy backend where it lies and comes back
# through ``torch.from_dlpack``, with no array copied either way. The tensor below is a
# stand-in over a fake CuPy array and ``torch.from_dlpack`` is patched to take the fake's
# stand-in capsule: real torch <-> CuPy DLPack interop (capsules, streams, devices) is not
# exercised here and needs a GPU.


class FakeCudaTensor:
    """The few parts of a torch CUDA tensor the boundary reads, over a fake CuPy array."""

    __module__ = "torch"  # fastzsl._array.array_kind recognises tensors by their module
    is_cuda = True

    def __init__(self, array):
        import torch

        self._array = array
        self.device = torch.device("cuda", array.device.id)
        self.dtype = torch.from_numpy(np.empty(0, array.dtype)).dtype
        self.shape = torch.Size(array.shape)

    def __dlpack__(self, stream=None, **kwargs):
        return self._array.__dlpack__()

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()

    def detach(self):
        return self

    def cpu(self):  # the host route the boundary must not take: counted as a copy
        import torch

        return torch.from_numpy(self._array.get())


@pytest.fixture
def torch_cuda(fake, monkeypatch):
    """A maker of fake torch CUDA tensors, with ``torch.from_dlpack`` taking fake arrays."""
    torch = pytest.importorskip("torch")

    def from_dlpack(x):
        assert x.__dlpack_device__()[0] == 2, "not a CUDA DLPack producer"  # kDLCUDA
        capsule = x.__dlpack__()
        assert isinstance(capsule, fake.ndarray), type(capsule)
        return FakeCudaTensor(capsule)

    monkeypatch.setattr(torch, "from_dlpack", from_dlpack)
    return lambda a: FakeCudaTensor(fake.asarray(a))


def _assert_cuda_tensor(x):
    assert isinstance(x, FakeCudaTensor), type(x)
    assert x.device.type == "cuda"


@pytest.mark.parametrize("exclude_self", [False, True], ids=["queries", "self"])
def test_knn_of_torch_cuda_input_moves_no_array(torch_cuda, fake, exclude_self):
    R = _points(dtype=np.float32)
    Q = R if exclude_self else _points(150, seed=1, dtype=np.float32)
    Rt = torch_cuda(R)
    Qt = Rt if exclude_self else torch_cuda(Q)
    with _Counted(fake) as counted:
        D, I = fastzsl.knn(Qt, Rt, 7, exclude_self=exclude_self)
    _assert_no_array_moved(counted)
    assert "knn_f32" in counted.kernels  # the cupy backend ran, on the tensors' memory
    _assert_cuda_tensor(D), _assert_cuda_tensor(I)
    assert_knn_equal(D._array.get(), I._array.get(),
                     *numpy_.knn(Q, R, 7, 0 if exclude_self else -1), **TOL[np.dtype(np.float32)])


def test_loop_of_torch_cuda_input_moves_no_array(torch_cuda, fake):
    X, new = _points(), _points(130, seed=5)
    new[-1] = 9.0
    Xt, newt = torch_cuda(X), torch_cuda(new)
    with _Counted(fake) as counted:
        model = fastzsl.LoOP(n_neighbors=8).fit(Xt)
    _assert_no_array_moved(counted)
    assert model.backend_ == "cupy" and isinstance(model.index_.reference, fake.ndarray)
    with _Counted(fake) as counted:
        prob = model.outlier_probability(newt)
    _assert_no_array_moved(counted)
    _assert_cuda_tensor(prob)
    host = fastzsl.LoOP(n_neighbors=8, backend="numpy").fit(X)
    np.testing.assert_allclose(prob._array.get(), host.outlier_probability(new),
                               **TOL[np.dtype(np.float64)])


def test_gaussian_loglik_of_torch_cuda_input_moves_no_array(torch_cuda, fake):
    rng = np.random.default_rng(7)
    F, means = rng.normal(size=(260, 5)), rng.normal(size=(9, 5))
    variances, log_weights = rng.uniform(0.5, 2, 9), np.log(rng.dirichlet(np.ones(9)))
    thresholds = np.full(9, -6.0)
    tensors = [torch_cuda(a) for a in (F, means, variances, log_weights, thresholds)]
    with _Counted(fake) as counted:
        got = fastzsl.gaussian_loglik(tensors[0], tensors[1], tensors[2],
                                      log_weights=tensors[3], thresholds=tensors[4], full=True)
    _assert_no_array_moved(counted)
    assert counted.kernels == ["gaussian_f64"]
    ref = fastzsl.gaussian_loglik(F, means, variances, log_weights=log_weights,
                                  thresholds=thresholds, backend="numpy")
    for name in ("loglik", "max", "argmax", "logsumexp", "all_below"):
        value = getattr(got, name)
        _assert_cuda_tensor(value)
        np.testing.assert_allclose(value._array.get(), getattr(ref, name),
                                   **TOL[np.dtype(np.float64)])


def test_torch_cuda_validation_says_what_cupy_validation_says(torch_cuda, fake):
    bad = _bad_inputs()["nan"]
    with pytest.raises(ValueError) as cupy_error:
        as_float_matrix(fake.asarray(bad), "queries", keep_device=True)
    with _Counted(fake) as counted:
        with pytest.raises(ValueError) as torch_error:
            fastzsl.knn(torch_cuda(bad), torch_cuda(_points(20, 3)), 3)
    assert str(torch_error.value) == str(cupy_error.value)
    assert counted.arrays["to_host"] == 0
