"""Numba backend: the fallback for installs where the Cython extension is not built.

``backend="auto"`` prefers cython, which every source install builds; this backend runs
wherever numba does. Its kernels are the readable direct ones, one module per operation
(:mod:`.knn`, :mod:`.loop`, :mod:`.gaussian`): float64 sums of squared differences,
parallel over rows with ``numba.prange``. Their results equal the NumPy reference within
the tested tolerances (float64 1e-10 relative, float32 1e-4), and the kNN results equal the
cython kernels' bit for bit. Speed comes from the cython backend: the GEMM-prefiltered
kNN and the GEMM-form Gaussian kernels live only in ``csrc/cpu``, so that no proven
algorithm has two hand-maintained copies. Scratch space is allocated before each parallel
loop and indexed by row, so no ``prange`` body allocates.
"""
from __future__ import annotations

from .._base import KernelSet
from . import gaussian, knn, loop

KERNELS = KernelSet(
    name="numba",
    device="cpu",
    knn=knn.knn,
    loop_fit=loop.loop_fit,
    loop_score=loop.loop_score,
    gaussian_loglik=gaussian.gaussian_loglik,
)


def is_available():
    return True, ""
