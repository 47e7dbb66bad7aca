"""CuPy backend: fastzsl's CUDA kernels (``csrc/cuda/*.cu``), compiled at run time by NVRTC.

Semantics are those of the NumPy reference (:mod:`fastzsl.backends.numpy_`): exact squared
Euclidean distances as sums of squared differences (float accumulation for float32,
double for float64), ties to the lower reference index, LoOP's zero conventions, and
Gaussian reductions in double.

Every kernel wrapper accepts NumPy arrays (copied to the current device; results come back
as NumPy, so the public functions work unchanged), CuPy arrays (computed on their device;
results stay there as CuPy) and torch tensors (CUDA tensors are shared zero-copy; results
come back as torch tensors on the same device).

Modules: :mod:`._loader` reads and compiles the kernel sources, :mod:`._launch` holds the
array and launch helpers, and :mod:`.knn`, :mod:`.loop`, :mod:`.gaussian` wrap one
operation each. CuPy is imported only when a kernel runs; ``is_available`` says why it
cannot.
"""
from __future__ import annotations

from .._base import KernelSet
from . import gaussian, knn, loop

KERNELS = KernelSet(
    name="cupy",
    device="cuda",
    knn=knn.knn,
    loop_fit=loop.loop_fit,
    loop_score=loop.loop_score,
    gaussian_loglik=gaussian.gaussian_loglik,
    knn_prepare=knn.prepare,
)

_INSTALL = "pip install 'fastzsl[gpu]' (CuPy for your CUDA version) on a machine with a CUDA GPU"
_NO_DEVICE = "the cupy backend needs a CUDA GPU and its driver"


def is_available():
    """(True, "") when CuPy imports and sees a CUDA device, else (False, what to install)."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CuPy that cannot find its CUDA libraries
        return False, f"cupy is not importable ({exc}); {_INSTALL}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"no CUDA device is visible to cupy ({exc}); {_NO_DEVICE}"
    if count < 1:
        return False, f"no CUDA device is visible to cupy; {_NO_DEVICE}"
    return True, ""
