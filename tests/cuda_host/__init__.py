"""CPU execution of fastzsl's CUDA kernels, for tests only (never a user-facing backend).

:mod:`.harness` compiles the exact kernel text of ``fastzsl/backends/cupy/_loader.py`` with
the host C++ compiler against ``cuda_host.h`` (every CUDA thread a fiber, or a host thread in
the sanitizer builds; blocks one at a time; ``__syncthreads`` a checked barrier) and launches it through ctypes;
:mod:`.fake_cupy` is a stand-in for the few CuPy calls the cupy backend makes, so that the
backend's own host code (layouts, chunks, splits, merges) runs unchanged on top of it.
"""
