"""Thread control for every kernel: one ``n_jobs`` convention, applied and restored here.

``n_jobs=None`` leaves the current settings alone (all cores, or whatever an outer
``threadpoolctl.threadpool_limits`` says). A positive int runs that many threads and -1
all cores (negative values count back from the number of cores, as in scikit-learn).
:func:`thread_limits` sets OpenMP (the Cython kernels, faiss), BLAS (threadpoolctl),
Numba (``numba.set_num_threads``) and faiss (``faiss.omp_set_num_threads``) for the
duration of one call and restores each of them afterwards, also when the call raises.
"""
from __future__ import annotations

import contextlib
import functools
import numbers
import os
import sys

_blas_controller = None


def cpu_count() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def resolve_n_jobs(n_jobs) -> int | None:
    """None, or the number of threads ``n_jobs`` asks for; a clear ValueError otherwise."""
    if n_jobs is None:
        return None
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral):
        raise ValueError(
            f"n_jobs must be None, a positive int or a negative int (-1 = all cores), "
            f"got {n_jobs!r}")
    n_jobs = int(n_jobs)
    if n_jobs == 0:
        raise ValueError("n_jobs=0 runs nothing: use None (current settings), a positive "
                         "number of threads or -1 (all cores)")
    if n_jobs > 0:
        return n_jobs
    cores = cpu_count()
    threads = cores + 1 + n_jobs
    if threads < 1:
        raise ValueError(f"n_jobs={n_jobs} leaves no thread on this machine's {cores} cores "
                         f"(-1 means all cores, -2 all but one, ...)")
    return threads


def load_openmp() -> None:
    """Load the OpenMP runtime of the compiled kernels (a no-op where they are not built),
    so that threadpoolctl, which only sees loaded libraries, can set it."""
    try:
        import fastzsl._ext.threads_cpu  # noqa: F401
    except ImportError:  # pragma: no cover - the extension is not built
        pass


def _prepare(backend, knn):
    """Import the libraries a call is about to use (its backend; faiss for the faiss kNN
    methods), so thread_limits can set them before the call."""
    from .backends import get_backend

    get_backend(backend)
    if knn in ("faiss", "ivf"):
        from .neighbors import import_faiss

        import_faiss()


@contextlib.contextmanager
def thread_limits(n_jobs, *, backend="auto", knn=None):
    """Run the body with ``n_jobs`` threads in OpenMP, BLAS, Numba and faiss, and restore
    every setting afterwards (also when the body raises); ``None`` changes nothing.

    ``backend`` and ``knn`` name what the body will run, so that its libraries are loaded
    (and set) first. Numba cannot exceed the pool it started with
    (``numba.config.NUMBA_NUM_THREADS``), so it gets at most that many threads.
    """
    threads = resolve_n_jobs(n_jobs)
    if threads is None:
        yield None
        return
    from threadpoolctl import threadpool_limits

    load_openmp()
    _prepare(backend, knn)
    with contextlib.ExitStack() as stack:
        stack.enter_context(threadpool_limits(limits=threads))
        numba = sys.modules.get("numba")
        if numba is not None:
            before = numba.get_num_threads()
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            stack.callback(numba.set_num_threads, before)
        faiss = sys.modules.get("faiss")
        if faiss is not None and hasattr(faiss, "omp_set_num_threads"):
            before_faiss = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(threads)
            stack.callback(faiss.omp_set_num_threads, before_faiss)
        yield threads


def uses_n_jobs(method):
    """Decorator for estimator methods: run under ``thread_limits(self.n_jobs)``, with the
    estimator's ``backend`` and ``knn`` (where it has them) loaded first."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        knn = getattr(self, "knn", None)
        with thread_limits(self.n_jobs, backend=getattr(self, "backend", "auto"),
                           knn="exact" if knn == "auto" else knn):
            return method(self, *args, **kwargs)
    return wrapper


def blas_single_threaded():
    """A context that keeps BLAS on one thread: for kernels that call BLAS from inside
    their own parallel regions (every core is already busy there)."""
    global _blas_controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return contextlib.nullcontext()
    if _blas_controller is None:
        # The kernels call SciPy's BLAS (numba's np.dot too): load it before the controller
        # takes its snapshot of the loaded libraries, or the limit would miss it.
        import scipy.linalg.cython_blas  # noqa: F401

        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")
