"""Thread control for every kernel: one ``n_jobs`` convention, applied and restored here.

``n_jobs=None`` leaves the current settings alone (all cores, or whatever an outer
``threadpoolctl.threadpool_limits`` says). A positive int runs that many threads and -1
all cores (negative values count back from the number of cores, as in scikit-learn).
:func:`thread_limits` sets OpenMP (the Cython kernels, faiss), BLAS (threadpoolctl),
Numba (``numba.set_num_threads``) and faiss (``faiss.omp_set_num_threads``) for the
duration of one call and restores each of them afterwards, also when the call raises.
It sets the libraries that are loaded when it is entered: callers load their backend
first (``fastzsl.backends.thread_limits`` does both).

Both contexts cost microseconds per call: they keep one ``threadpoolctl``
ThreadpoolController (building one scans the loaded libraries, about a millisecond; it is
rebuilt when modules have been imported since, which is when new libraries can appear)
and set only the libraries whose thread count differs from the one asked for.
"""
from __future__ import annotations

import contextlib
import numbers
import sys
from collections import deque

from ._platform import cpu_count

_controller = None
_controller_modules = -1  # len(sys.modules) when _controller was built


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


def openmp_threads() -> int:
    """The OpenMP thread count in force (the compiled kernels' runtime), else all cores."""
    try:
        from fastzsl._ext.threads_cpu import max_threads
    except ImportError:  # pragma: no cover - the extension is not built
        return cpu_count()
    return max_threads()


@contextlib.contextmanager
def thread_limits(n_jobs):
    """Run the body with ``n_jobs`` threads in OpenMP, BLAS, Numba and faiss, and restore
    every setting afterwards (also when the body raises); ``None`` changes nothing.

    Only loaded libraries can be set, so load what the body runs first. Numba cannot
    exceed the pool it started with (``numba.config.NUMBA_NUM_THREADS``), so it gets at
    most that many threads.
    """
    threads = resolve_n_jobs(n_jobs)
    if threads is None:
        yield None
        return
    load_openmp()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_library_limits(threads))
        numba = sys.modules.get("numba")
        if numba is not None:
            _set_restored(stack, numba.get_num_threads, numba.set_num_threads,
                          min(threads, numba.config.NUMBA_NUM_THREADS))
        faiss = sys.modules.get("faiss")
        if faiss is not None and hasattr(faiss, "omp_set_num_threads"):
            _set_restored(stack, faiss.omp_get_max_threads, faiss.omp_set_num_threads, threads)
        yield threads


def _set_restored(stack, get, set_, value):
    """set_(value) now and the previous value when ``stack`` closes, if it differs."""
    before = get()
    if before != value:
        set_(value)
        stack.callback(set_, before)


def _thread_controller():
    """The ThreadpoolController of the loaded libraries, rebuilt after new imports."""
    global _controller, _controller_modules
    if _controller is None or len(sys.modules) != _controller_modules:
        from threadpoolctl import ThreadpoolController

        modules = len(sys.modules)
        _controller = ThreadpoolController()
        _controller_modules = modules
    return _controller


class _library_limits:
    """threadpoolctl's ``threadpool_limits(threads, user_api)`` as a context, setting only
    the libraries whose count differs (and restoring those). A class rather than a
    generator context: every kernel call enters one (``blas_single_threaded``), and this
    form costs about half as much (6 us against 12 on a Zen 3)."""

    __slots__ = ("threads", "user_api", "restore")

    def __init__(self, threads, user_api=None):
        self.threads, self.user_api = threads, user_api

    def __enter__(self):
        self.restore = []
        try:
            for lib in _thread_controller().lib_controllers:
                if self.user_api is None or lib.user_api == self.user_api:
                    before = lib.get_num_threads()
                    if before != self.threads:
                        lib.set_num_threads(self.threads)
                        self.restore.append((lib, before))
        except BaseException:
            self.__exit__()  # what was set so far
            raise
        return self

    def __exit__(self, *exc):
        for lib, before in reversed(self.restore):
            lib.set_num_threads(before)
        return False


# Multiply-adds per BLAS thread of the products in sized_matmul (about 10 ms of one core's
# sgemm): a smaller product runs on fewer threads
BLAS_WORK_PER_THREAD = 1 << 30


def blas_threads_for(multiply_adds: int) -> int:
    """BLAS threads for a product of ``multiply_adds``: one per BLAS_WORK_PER_THREAD, at
    least one, at most the current setting (``n_jobs``, an outer limit, all cores)."""
    current = max((lib.get_num_threads() for lib in _thread_controller().lib_controllers
                   if lib.user_api == "blas"), default=1)
    return int(max(1, min(current, multiply_adds // BLAS_WORK_PER_THREAD)))


def sized_matmul(a, b):
    """``a @ b`` (NumPy arrays, b a matrix or a vector) on ``blas_threads_for`` its size.

    For the products a scoring call runs between its OpenMP kernels (the gate's PCA
    projection, ...). OpenBLAS's threads busy-wait for a while after each multi-threaded
    call (``OPENBLAS_THREAD_TIMEOUT``), and on the same cores they slow the OpenMP kernels
    that follow: on 2 cores, ``predict_proba`` of 1,000 rows of the trained run's model,
    called back to back, took 102 ms with its PCA projection on both BLAS threads and
    60 ms with it on one. A product this small gains little from more threads anyway.
    """
    with sized_blas_threads(a.shape[0] * a.shape[-1] * (b.shape[1] if b.ndim == 2 else 1)):
        return a @ b


def sized_blas_threads(multiply_adds: int):
    """BLAS on ``blas_threads_for(multiply_adds)`` threads within the block, restored after:
    :func:`sized_matmul` for a product computed in parts."""
    return _library_limits(blas_threads_for(multiply_adds), "blas")


def worker_count(n_jobs) -> int:
    """Threads for a Python-level worker pool: ``n_jobs`` resolved, all cores for None."""
    threads = resolve_n_jobs(n_jobs)
    return cpu_count() if threads is None else threads


def imap_ordered(fn, items, n_workers, bar=None):
    """Yield ``fn(i) for i in items``, in order, computed on ``n_workers`` threads (BLAS on
    one thread each meanwhile). At most ``4 * n_workers`` tasks are in flight, so finished
    results waiting for the consumer stay few; ``bar`` (tqdm) advances once per result."""
    def done(result):
        if bar is not None:
            bar.update(1)
        return result

    with _library_limits(1, "blas"):
        if n_workers == 1:
            for item in items:
                yield done(fn(item))
            return
        from concurrent.futures import ThreadPoolExecutor

        ex = ThreadPoolExecutor(max_workers=n_workers)
        pending = deque()
        try:
            for item in items:
                if len(pending) >= 4 * n_workers:
                    yield done(pending.popleft().result())
                pending.append(ex.submit(fn, item))
            while pending:
                yield done(pending.popleft().result())
        finally:
            for f in pending:
                f.cancel()
            ex.shutdown(wait=True)


def blas_single_threaded():
    """A context that keeps BLAS on one thread: for kernels that call BLAS from inside
    their own parallel regions (every core is already busy there)."""
    # The kernels call SciPy's BLAS (numba's np.dot too): load it before the controller
    # takes its snapshot of the loaded libraries, or the limit would miss it.
    import scipy.linalg.cython_blas  # noqa: F401

    return _library_limits(1, "blas")
