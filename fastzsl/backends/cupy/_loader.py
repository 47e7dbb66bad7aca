"""Run-time compilation of fastzsl's CUDA kernels (``csrc/cuda/*.cu``) with CuPy.

The constants the kernels and their Python launchers share (tile sizes, block sizes) are
defined here only: :func:`defines` lists them, :func:`kernel_source` prepends them as
``#define`` lines (so they are part of CuPy's compile-cache key) and the nvcc tests pass
them as ``-D`` flags (:func:`define_flags`). The ``.cu`` files do not define them and stop
with ``#error`` when one is missing.

The kernel sources ship as package data in ``fastzsl/cuda/``; a source checkout on
``PYTHONPATH`` reads them from ``csrc/cuda/`` next to the package instead. Local
``#include "..."`` lines are inlined (NVRTC has no file system search path for them, and
CuPy's on-disk kernel cache keys on the source text, so an edited header must change it),
and ``#line`` directives keep compiler messages pointing at the real files.

CuPy is imported only when a module is loaded, never at import time.
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

# --- constants the kernels are compiled with (see defines()) -----------------------------
# Rows of the shared-memory sub-tile whose distances a thread accumulates at once
# (reference rows in kNN, classes in the Gaussian kernel).
TILE_ROWS = 32
# Dimensions per sub-tile chunk. The tiles hold double for float32 and float64 input alike
# (the kernels accumulate in double; csrc/cuda/common.cuh says why).
TILE_DIMS = 16
# The element type of the tiles, the staged rows, the distance sums and the kNN lists.
ACC_DTYPE = np.dtype(np.float64)
# The most threads per block of the kNN and Gaussian kernels (their __launch_bounds__).
MAX_BLOCK_THREADS = 128
# The most splits of one reference chunk over blocks; the merge kernel takes these lists
# plus the state carried over from earlier chunks.
KNN_MAX_SPLITS = 64
# Threads per block of the LoOP reduction kernels.
REDUCE_THREADS = 256
# Two-pass kNN (csrc/cuda/knn_twopass.cu): threads per block of its filter and re-rank
# kernels, and the most segments a reference tile is split into in the filter (one list
# per segment and query; the re-rank merges them with this many heads in registers).
TWOPASS_THREADS = 128
TWOPASS_MAX_SEGMENTS = 16
# Its filter's blocks: threads, and G rows each thread loads at once per phase (the loads a
# thread has in flight; the phase's shared buffer holds this many bounds per thread).
TWOPASS_FILTER_THREADS = 256
TWOPASS_ROWS_PER_LANE = 8

# The options every module is compiled with (CuPy adds the target architecture).
OPTIONS = ("-std=c++17",)

_SOURCE_TREE = Path(__file__).resolve().parents[3] / "csrc" / "cuda"
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def _read(filename: str) -> str:
    """Text of a kernel file: installed package data first, then the source tree."""
    try:
        resource = resources.files("fastzsl") / "cuda" / filename
        if resource.is_file():
            return resource.read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError):
        pass
    path = _SOURCE_TREE / filename
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise FileNotFoundError(
        f"CUDA kernel source {filename!r} not found in the installed package "
        f"(fastzsl/cuda/) nor in the source tree ({_SOURCE_TREE}); reinstall fastzsl")


def _expand(filename: str, seen: tuple[str, ...]) -> str:
    if filename in seen:
        raise ValueError(f"recursive #include of {filename!r} in the CUDA sources")
    out = [f'#line 1 "{filename}"']
    for number, line in enumerate(_read(filename).splitlines(), start=1):
        match = _INCLUDE.match(line)
        if match:
            out.append(_expand(match.group(1), seen + (filename,)))
            out.append(f'#line {number + 1} "{filename}"')
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def defines() -> dict[str, int]:
    """The preprocessor constants every kernel is compiled with: name -> value."""
    return {
        "FASTZSL_TILE_ROWS": TILE_ROWS,
        "FASTZSL_TILE_DIMS": TILE_DIMS,
        "FASTZSL_MAX_BLOCK_THREADS": MAX_BLOCK_THREADS,
        "FASTZSL_KNN_MAX_SPLITS": KNN_MAX_SPLITS,
        "FASTZSL_REDUCE_THREADS": REDUCE_THREADS,
        "FASTZSL_TWOPASS_THREADS": TWOPASS_THREADS,
        "FASTZSL_TWOPASS_MAX_SEGMENTS": TWOPASS_MAX_SEGMENTS,
        "FASTZSL_TWOPASS_FILTER_THREADS": TWOPASS_FILTER_THREADS,
        "FASTZSL_TWOPASS_ROWS_PER_LANE": TWOPASS_ROWS_PER_LANE,
    }


def define_flags() -> list[str]:
    """:func:`defines` as compiler flags, ``-DNAME=value``."""
    return [f"-D{name}={value}" for name, value in defines().items()]


def kernel_source(name: str) -> str:
    """The full source of ``<name>.cu`` as NVRTC compiles it: the :func:`defines` as
    ``#define`` lines, then the file with its local headers inlined."""
    prelude = "".join(f"#define {name_} {value}\n" for name_, value in defines().items())
    return prelude + _expand(f"{name}.cu", ())


@lru_cache(maxsize=None)
def _load(name: str, device_id: int):
    import cupy

    with cupy.cuda.Device(device_id):
        module = cupy.RawModule(code=kernel_source(name), options=OPTIONS)
        module.compile()  # compile now, so that errors surface here with the file name
    return module


def load_module(name: str, device_id: int | None = None):
    """The compiled ``cupy.RawModule`` of ``csrc/cuda/<name>.cu`` for a device.

    Memoised per (name, device id); ``device_id`` defaults to CuPy's current device.
    """
    import cupy

    if device_id is None:
        device_id = cupy.cuda.Device().id
    return _load(name, int(device_id))
