"""One registry of kernel sets, imported lazily by name.

``get_backend(name)`` imports ``fastzsl.backends.<module>`` only when asked, so
``import fastzsl`` never loads numba, cupy or faiss. A backend named explicitly that
cannot load raises :class:`BackendUnavailableError` naming what to install; only
``"auto"`` may pass over a backend, and it logs what it chose and why.

The kernel API reaches the backends through one path: :func:`resolve` picks the kernel set
for a call's arrays once, and :func:`kernels_for` also hands the arrays over in the kind
those kernels read (``fastzsl._array.for_kernels``) and sets the call's threads; results go
back in the kind of the caller's input through ``fastzsl._array.like``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from functools import lru_cache

from .. import _threads
from .._array import for_kernels, on_device
from .._optional import import_faiss
from ._base import KernelSet

logger = logging.getLogger(__name__)

# name -> (module, what to install when it is missing)
_REGISTRY = {
    "numpy": ("fastzsl.backends.numpy_", "numpy and scipy"),
    "numba": ("fastzsl.backends.numba", "numba (pip install 'fastzsl[numba]')"),
    "cython": (
        "fastzsl.backends.cython_",
        "the compiled extension (pip install --no-build-isolation -e . from a source checkout)",
    ),
    "cupy": ("fastzsl.backends.cupy", "cupy and a CUDA GPU (pip install 'fastzsl[gpu]')"),
}

# Fastest first; "auto" takes the first one that loads.
AUTO_ORDER = ("cython", "numba", "numpy")
# For input on a GPU (CuPy arrays) "auto" tries these first: the data stays there.
DEVICE_AUTO_ORDER = ("cupy",)


class BackendUnavailableError(RuntimeError):
    """A backend was named explicitly but cannot run here."""


def registered_backends() -> list[str]:
    """Every backend name fastzsl knows, available here or not."""
    return list(_REGISTRY)


@lru_cache(maxsize=None)
def _load(name: str) -> tuple[KernelSet | None, str]:
    module_name, install = _REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return None, f"{exc}; install {install}"
    ok, reason = module.is_available()
    if not ok:
        return None, reason
    return module.KERNELS, ""


def get_backend(name: str, *, device_input: bool = False) -> KernelSet:
    """The kernel set called ``name``; ``"auto"`` picks the fastest that loads (the cupy
    backend first when ``device_input``: the caller's arrays are on a GPU)."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name == "auto":
        for candidate in (DEVICE_AUTO_ORDER + AUTO_ORDER) if device_input else AUTO_ORDER:
            kernels, reason = _load(candidate)
            if kernels is not None:
                logger.debug("backend='auto' chose %r", candidate)
                return kernels
            logger.info("backend='auto' passed over %r: %s", candidate, reason)
        raise BackendUnavailableError("no backend could be loaded")  # numpy always loads
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown backend {name!r}; choose 'auto' or one of {registered_backends()}"
        )
    kernels, reason = _load(name)
    if kernels is None:
        raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
    return kernels


def backend_status() -> dict[str, str]:
    """Every registered backend -> "" where it loads here, else why not (what to install)."""
    order = list(AUTO_ORDER) + [n for n in _REGISTRY if n not in AUTO_ORDER]
    return {name: _load(name)[1] for name in order}


def available_backends() -> list[str]:
    """Names of the backends that load on this machine, fastest first."""
    return [name for name, reason in backend_status().items() if not reason]


def resolve(name, *arrays) -> KernelSet:
    """The kernel set ``name`` names for a call on ``arrays``: ``"auto"`` prefers a GPU
    backend when the first of them is on a GPU (a CuPy array or a torch CUDA tensor)."""
    return get_backend(name, device_input=bool(arrays) and on_device(arrays[0]))


@contextlib.contextmanager
def thread_limits(n_jobs, *, backend="auto", knn=None):
    """``fastzsl._threads.thread_limits`` for a body that runs ``backend`` (a name, or a
    kernel set already resolved) and faiss, for the kNN methods "faiss" and "ivf": their
    libraries are loaded first, so they are set too."""
    if _threads.resolve_n_jobs(n_jobs) is not None:
        if not isinstance(backend, KernelSet):
            get_backend(backend)
        if knn in ("faiss", "ivf"):
            import_faiss()
    with _threads.thread_limits(n_jobs) as threads:
        yield threads


@contextlib.contextmanager
def kernels_for(backend, *arrays, n_jobs=None):
    """The one path from the kernel API to a backend: yields ``(kernels, arrays)``, the
    kernel set :func:`resolve` picks for ``arrays`` and the arrays where it reads them,
    with ``n_jobs`` threads in force for the body. None entries stay None."""
    kernels = resolve(backend, *arrays)
    converted = tuple(None if a is None else for_kernels(a, kernels.device) for a in arrays)
    with thread_limits(n_jobs, backend=kernels):
        yield kernels, converted


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
