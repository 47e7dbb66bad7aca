"""Thread control: ``n_jobs`` and outer threadpoolctl limits reach every kernel, and every
setting is restored after each call, also when the call raises."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import fastzsl
from fastzsl import GaussianNovelty, LoOP, gaussian_loglik, knn, loop_fit, loop_score
from fastzsl._platform import cpu_count
from fastzsl._threads import resolve_n_jobs
from fastzsl.backends import thread_limits
from fastzsl.testing import backend_is_available, make_blobs

threads_cpu = pytest.importorskip("fastzsl._ext.threads_cpu",
                                  reason="the compiled extension is not built")
numba = pytest.importorskip("numba")


def _blas_threads():
    return sorted({lib["num_threads"] for lib in threadpool_info()
                   if lib["user_api"] == "blas"})


def _faiss():
    try:
        import faiss
    except ImportError:  # faiss is an optional extra
        return None
    return faiss


def _state():
    """Everything thread_limits sets, as seen from outside."""
    faiss = _faiss()
    return (threads_cpu.max_threads(), numba.get_num_threads(), _blas_threads(),
            faiss.omp_get_max_threads() if faiss else None)


def test_resolve_n_jobs():
    assert resolve_n_jobs(None) is None
    assert resolve_n_jobs(1) == 1
    assert resolve_n_jobs(np.int64(3)) == 3
    assert resolve_n_jobs(-1) == cpu_count()
    if cpu_count() > 1:
        assert resolve_n_jobs(-2) == cpu_count() - 1
    with pytest.raises(ValueError, match="n_jobs=0 runs nothing"):
        resolve_n_jobs(0)
    with pytest.raises(ValueError, match="leaves no thread"):
        resolve_n_jobs(-cpu_count() - 1)
    for bad in (1.5, "2", True):
        with pytest.raises(ValueError, match="n_jobs must be None, a positive int"):
            resolve_n_jobs(bad)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_thread_limits_sets_everything_and_restores_it(n_jobs):
    faiss = _faiss()  # loaded, so thread_limits sets it too
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    before = _state()
    with thread_limits(n_jobs, backend="numba"):
        assert threads_cpu.max_threads() == n_jobs
        assert threads_cpu.team_size() == n_jobs
        assert numba.get_num_threads() == min(n_jobs, numba.config.NUMBA_NUM_THREADS)
        assert _blas_threads() == [n_jobs]
        assert faiss is None or faiss.omp_get_max_threads() == n_jobs
    assert _state() == before
    with pytest.raises(RuntimeError, match="boom"):
        with thread_limits(n_jobs, backend="numba"):
            raise RuntimeError("boom")
    assert _state() == before


def test_none_leaves_an_outer_threadpoolctl_limit_in_place():
    with threadpool_limits(limits=1, user_api="openmp"):
        assert threads_cpu.team_size() == 1  # the kernels' OpenMP runtime is limited
        with thread_limits(None):
            assert threads_cpu.team_size() == 1
    assert threads_cpu.team_size() == threads_cpu.max_threads()


def _spy(monkeypatch, attrs, seen):
    """Wrap the kernel set ``fastzsl.backends.resolve`` returns (the kernel API's one path
    to a backend) so each call of the kernels ``attrs`` records the thread counts it ran
    under."""
    import dataclasses

    import fastzsl.backends
    real = fastzsl.backends.resolve

    def resolve(name, *arrays):
        kernels = real(name, *arrays)

        def wrap(fn):
            def spy(*args):
                seen.append((threads_cpu.team_size(), numba.get_num_threads(),
                             _blas_threads()))
                return fn(*args)
            return spy
        return dataclasses.replace(kernels, **{a: wrap(getattr(kernels, a)) for a in attrs})
    monkeypatch.setattr(fastzsl.backends, "resolve", resolve)


@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_functions_run_kernels_with_n_jobs_threads(monkeypatch, backend):
    if not backend_is_available(backend):
        pytest.skip(f"{backend} unavailable")
    rng = np.random.default_rng(0)
    F, means = rng.normal(size=(50, 4)), rng.normal(size=(3, 4))
    seen = []
    _spy(monkeypatch, ("gaussian_loglik", "loop_fit"), seen)
    before = (threads_cpu.max_threads(), numba.get_num_threads(), _blas_threads())
    gaussian_loglik(F, means, np.ones(3), backend=backend, n_jobs=1)
    D, I = knn(F, F, 5, exclude_self=True, backend=backend, n_jobs=1)
    loop_fit(D, I, backend=backend, n_jobs=1)
    assert seen == [(1, 1, [1]), (1, 1, [1])]
    assert (threads_cpu.max_threads(), numba.get_num_threads(), _blas_threads()) == before


def test_invalid_n_jobs_is_a_clear_error():
    X, y = make_blobs(60, 3, n_centers=2, seed=1, dtype=np.float64)
    with pytest.raises(ValueError, match="n_jobs=0 runs nothing"):
        gaussian_loglik(X, X[:2], np.ones(2), n_jobs=0)
    with pytest.raises(ValueError, match="n_jobs must be None"):
        knn(X, X, 3, n_jobs=2.0)
    with pytest.raises(ValueError, match="n_jobs=0 runs nothing"):
        LoOP(n_neighbors=5, n_jobs=0).fit(X)
    with pytest.raises(ValueError, match="n_jobs must be None"):
        GaussianNovelty(n_jobs="all").fit(X, y)


@pytest.mark.parametrize("backend", ["cython", "numba"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_n_jobs(backend, dtype):
    if not backend_is_available(backend):
        pytest.skip(f"{backend} unavailable")
    X, y = make_blobs(3000, 8, n_centers=40, seed=2, dtype=dtype)
    Q = X[:700] + dtype(0.1)
    means = np.stack([X[y == c].mean(axis=0) for c in range(40)]).astype(dtype)
    variances = np.linspace(0.5, 2.0, 40)
    log_weights = np.log(np.bincount(y) / len(y))
    thresholds = np.full(40, -12.0)
    runs = []
    for n_jobs in (1, 2):
        D, I = knn(Q, X, 9, backend=backend, n_jobs=n_jobs)
        Ds, Is = knn(X, X, 9, exclude_self=True, backend=backend, n_jobs=n_jobs)
        fit = loop_fit(Ds, Is, backend=backend, n_jobs=n_jobs)
        scores = loop_score(D, I, fit, backend=backend, n_jobs=n_jobs)
        g = gaussian_loglik(Q, means, variances, log_weights=log_weights,
                            thresholds=thresholds, backend=backend, n_jobs=n_jobs)
        runs.append((D, I, fit.probabilities, scores, *g))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_estimators_take_n_jobs_and_restore_settings():
    X, y = make_blobs(400, 5, n_centers=3, seed=4, dtype=np.float64)
    before = (threads_cpu.max_threads(), _blas_threads())
    loop_1 = LoOP(n_neighbors=7, n_jobs=1).fit(X)
    loop_all = LoOP(n_neighbors=7, n_jobs=-1).fit(X)
    np.testing.assert_array_equal(loop_1.probabilities_, loop_all.probabilities_)
    np.testing.assert_array_equal(loop_1.outlier_probability(X + 0.3),
                                  loop_all.outlier_probability(X + 0.3))
    gauss_1 = GaussianNovelty(n_jobs=1).fit(X, y)
    gauss_2 = GaussianNovelty(n_jobs=2).fit(X, y)
    np.testing.assert_array_equal(gauss_1.predict(X), gauss_2.predict(X))
    assert LoOP().get_params()["n_jobs"] is None
    assert GaussianNovelty().get_params()["n_jobs"] is None
    assert (threads_cpu.max_threads(), _blas_threads()) == before


def test_import_loads_the_kernels_openmp_runtime():
    import subprocess
    import sys
    code = ("import fastzsl, threadpoolctl; from threadpoolctl import threadpool_info; "
            "print(any('threads_cpu' in str(m) for m in __import__('sys').modules) and "
            "any(l['user_api'] == 'openmp' for l in threadpool_info()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=fastzsl.__path__[0] + "/..")
    assert out.stdout.strip() == "True", out.stdout + out.stderr


def test_settings_are_restored_when_a_kernel_raises(monkeypatch):
    import dataclasses

    import fastzsl.backends
    real = fastzsl.backends.resolve

    def failing(name, *arrays):
        def boom(*args):
            assert threads_cpu.team_size() == 1 and _blas_threads() == [1]
            raise RuntimeError("kernel failed")
        return dataclasses.replace(real(name, *arrays), gaussian_loglik=boom)
    monkeypatch.setattr(fastzsl.backends, "resolve", failing)
    before = (threads_cpu.max_threads(), numba.get_num_threads(), _blas_threads())
    with pytest.raises(RuntimeError, match="kernel failed"):
        gaussian_loglik(np.ones((3, 2)), np.zeros((2, 2)), np.ones(2), n_jobs=1)
    assert (threads_cpu.max_threads(), numba.get_num_threads(), _blas_threads()) == before


def test_thread_limits_reuse_one_controller_and_set_only_what_differs(monkeypatch):
    """Per call, thread control costs microseconds: no new ThreadpoolController (a scan of
    the loaded libraries) while no module was imported, and no library set to the count it
    already has."""
    import threadpoolctl

    from fastzsl import _threads
    from fastzsl._threads import blas_single_threaded

    with thread_limits(1, backend="cython"):  # builds the controller if needed
        pass
    before = _state()  # (threadpool_info builds controllers of its own)
    built, calls = [], []
    real_controller = threadpoolctl.ThreadpoolController
    monkeypatch.setattr(threadpoolctl, "ThreadpoolController",
                        lambda: built.append(1) or real_controller())
    controller = _threads._thread_controller()
    for lib in controller.lib_controllers:
        monkeypatch.setattr(lib, "set_num_threads",
                            lambda n, lib=lib, real=lib.set_num_threads: calls.append(
                                (lib.user_api, n)) or real(n))
    blas = [lib for lib in controller.lib_controllers if lib.user_api == "blas"]
    with thread_limits(threads_cpu.max_threads(), backend="cython"):
        pass
    assert not [c for c in calls if c[0] == "openmp"], "OpenMP set to the count it has"
    calls.clear()
    with blas_single_threaded():
        assert {lib.get_num_threads() for lib in blas} == {1}
    with blas_single_threaded():
        with blas_single_threaded():  # already 1: the inner context sets nothing
            n_calls = len(calls)
        assert len(calls) == n_calls
    assert built == []
    monkeypatch.undo()
    assert _state() == before



def test_a_product_gets_one_blas_thread_per_share_of_work(monkeypatch):
    """sized_matmul runs a @ b on one BLAS thread per BLAS_WORK_PER_THREAD multiply-adds,
    at least one and at most the current setting, and restores the setting after."""
    from fastzsl import _threads
    from fastzsl._threads import blas_threads_for, sized_matmul

    rng = np.random.default_rng(0)
    a, b, v = rng.normal(size=(40, 6)), rng.normal(size=(6, 5)), rng.normal(size=6)
    seen = []
    real_limits = _threads._library_limits

    def spy(threads, user_api=None):
        seen.append((threads, user_api))
        return real_limits(threads, user_api)

    monkeypatch.setattr(_threads, "_library_limits", spy)
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        assert blas_threads_for(10**15) == 2  # never more than the setting
        assert blas_threads_for(0) == 1
        monkeypatch.setattr(_threads, "BLAS_WORK_PER_THREAD", 40 * 6 * 5)
        assert blas_threads_for(40 * 6 * 5 * 2 - 1) == 1
        np.testing.assert_array_equal(sized_matmul(a, b), a @ b)
        np.testing.assert_array_equal(sized_matmul(a, v), a @ v)
        assert seen == [(1, "blas"), (1, "blas")]  # 1200 and 240 multiply-adds
        monkeypatch.setattr(_threads, "BLAS_WORK_PER_THREAD", 40 * 6 * 5 // 2)
        seen.clear()
        np.testing.assert_array_equal(sized_matmul(a, b), a @ b)
        assert seen == [(2, "blas")]
        assert _blas_threads() == before
    with threadpool_limits(limits=1, user_api="blas"):
        assert blas_threads_for(10**15) == 1  # an outer limit holds


def test_the_gate_runs_its_products_on_sized_blas_threads(monkeypatch):
    """The PCA projection (its blocks within one sized_blas_threads), the class-agnostic
    features' distances and the calibrator's linear score (sized_matmul): small products of
    a scoring call on one BLAS thread (on 2 cores, BLAS's busy-waiting threads slowed the
    kernels that follow)."""
    from fastzsl import _threads, calibration, novelty_gate

    calls = []

    def spy(a, b):
        calls.append((a.shape, b.shape))
        return a @ b

    def sized_spy(multiply_adds):
        calls.append(multiply_adds)
        return _threads.sized_blas_threads(multiply_adds)

    monkeypatch.setattr(novelty_gate, "sized_matmul", spy)
    monkeypatch.setattr(novelty_gate, "sized_blas_threads", sized_spy)
    monkeypatch.setattr(calibration, "sized_matmul", spy)
    X, _ = make_blobs(300, 12, n_centers=3, seed=1)
    projection = novelty_gate.PCAProjection(4).fit(X)
    np.testing.assert_array_equal(projection.transform(X[:7]),
                                  (X[:7] - projection.mean_) @ projection.components_.T)
    assert calls == [7 * 12 * 4]
    calls.clear()
    F = X[:7, :4].astype(np.float64)
    p_seen = np.full((7, 2), 0.5)
    novelty_gate.class_agnostic_features(F, p_seen, X[:2, :4], X[2:5, :4])
    assert calls == [((7, 4), (4, 2)), ((7, 4), (4, 3))]
    calls.clear()
    scores = np.column_stack([np.linspace(0.1, 0.9, 20), np.linspace(-1.0, 2.0, 20)])
    stack = calibration.StackCalibrator(columns=[0]).fit(scores, np.arange(20) % 3 == 0)
    calls.clear()
    p = stack.transform(scores[:5])
    assert calls == [((5, 2), (2,))]
    z = stack._z(scores[:5])
    np.testing.assert_array_equal(p, 1.0 / (1.0 + np.exp(-(z @ stack.coef_ + stack.intercept_))))


def test_a_limit_that_fails_to_set_a_library_restores_those_it_set(monkeypatch):
    """_library_limits sets each library in turn: when one refuses (raises), the ones set
    before it go back to their counts, and the error comes through."""
    from fastzsl import _threads

    controller = _threads._thread_controller()
    libs = [lib for lib in controller.lib_controllers
            if lib.user_api == "blas" and lib.get_num_threads() != 1]
    if not libs:
        pytest.skip("no BLAS library with more than one thread to set")
    before = _state()

    def refuse(n):
        raise RuntimeError("cannot set")

    monkeypatch.setattr(libs[-1], "set_num_threads", refuse)
    with pytest.raises(RuntimeError, match="cannot set"):
        with _threads._library_limits(1, "blas"):
            pass  # pragma: no cover - never entered
    monkeypatch.undo()
    assert _state() == before
