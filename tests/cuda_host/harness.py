"""Compile a CUDA kernel source for the host and launch its kernels (see cuda_host.h).

The source is the exact text CuPy would compile (``_loader.kernel_source``), #included
verbatim after the force-included header; the ``extern "C" __global__`` entry points are
found by preprocessing it and exported as ``fastzsl_host_launch_<name>`` (grid, block,
shared bytes, ``void** args`` as for ``cuLaunchKernel``) and ``fastzsl_host_signature_<name>``
(the parameter types, so every launch is type-checked argument by argument).

Builds are cached on disk by a hash of (source, header, flags). ``FASTZSL_CUDA_HOST_SANITIZE``
= ``address`` (ASan + UBSan) or ``thread`` (TSan) builds an instrumented library; the Python
process must then preload the sanitizer runtime (see ``sanitizer_env``).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

HEADER = Path(__file__).resolve().parent / "cuda_host.h"
CXX = os.environ.get("CXX", "g++")
FLAGS = ("-std=c++17", "-O1", "-g", "-fPIC", "-shared", "-pthread", "-fvisibility=hidden",
         "-ffp-contract=off")
SANITIZERS = {
    "": (),
    "address": ("-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                "-fno-omit-frame-pointer"),
    "thread": ("-fsanitize=thread",),
}
_RUNTIME = {"address": "libasan.so", "thread": "libtsan.so"}
_ENTRY = re.compile(
    r'extern\s+"C"\s+FASTZSL_HOST_KERNEL\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')


class LaunchDesc(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared_mem", ctypes.c_ulonglong)]


def compiler_available() -> bool:
    return shutil.which(CXX) is not None


def sanitizer() -> str:
    value = os.environ.get("FASTZSL_CUDA_HOST_SANITIZE", "")
    if value not in SANITIZERS:
        raise ValueError(f"FASTZSL_CUDA_HOST_SANITIZE={value!r}: one of {sorted(SANITIZERS)}")
    return value


def sanitizer_env(kind: str) -> dict:
    """Environment for a Python process that loads ``kind``-instrumented kernel libraries."""
    runtime = subprocess.run([CXX, f"-print-file-name={_RUNTIME[kind]}"], capture_output=True,
                             text=True, check=True).stdout.strip()
    env = dict(os.environ, FASTZSL_CUDA_HOST_SANITIZE=kind, LD_PRELOAD=runtime)
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0:exitcode=66"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:exitcode=66"
    env["TSAN_OPTIONS"] = "halt_on_error=1:exitcode=66:report_signal_unsafe=0"
    return env


def _cache_dir() -> Path:
    path = os.environ.get("FASTZSL_CUDA_HOST_CACHE") or os.path.join(
        tempfile.gettempdir(), f"fastzsl-cuda-host-{os.getuid()}")
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def kernel_names(source: str) -> list[str]:
    """The ``extern "C" __global__`` functions of ``source``, after macro expansion."""
    proc = subprocess.run([CXX, "-E", "-P", "-x", "c++", "-std=c++17",
                           "-D__global__=FASTZSL_HOST_KERNEL", "-"], input=source,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"preprocessing the kernel source failed:\n{proc.stderr}")
    return _ENTRY.findall(proc.stdout)


class Library:
    """One compiled kernel source: ``launch(name, grid, block, shared_mem, args)``."""

    def __init__(self, path: Path, names: list[str]):
        self.path = path
        self._lib = ctypes.CDLL(str(path))
        self._lib.fastzsl_host_last_error.restype = ctypes.c_char_p
        self.names = names
        self.signatures = {}
        for name in names:
            sig = getattr(self._lib, f"fastzsl_host_signature_{name}")
            sig.restype = ctypes.c_char_p
            self.signatures[name] = sig().decode().split(",") if sig() else []

    def launch(self, name, grid, block, shared_mem, argv) -> None:
        """Run kernel ``name``; ``argv`` is a ctypes array of void* to the argument values."""
        desc = LaunchDesc((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block),
                          int(shared_mem))
        fn = getattr(self._lib, f"fastzsl_host_launch_{name}")
        fn.restype = ctypes.c_int
        if fn(ctypes.byref(desc), argv):
            raise RuntimeError(f"kernel {name}: {self._lib.fastzsl_host_last_error().decode()}")


_LIBRARIES: dict[str, Library] = {}


def build(source: str, kind: str | None = None) -> Library:
    """The host library of kernel ``source`` (memoised in-process and cached on disk)."""
    kind = sanitizer() if kind is None else kind
    flags = (*FLAGS, *SANITIZERS[kind])
    header = HEADER.read_text()
    key = hashlib.sha256("\0".join([source, header, CXX, *flags]).encode()).hexdigest()[:24]
    if key in _LIBRARIES:
        return _LIBRARIES[key]
    names = kernel_names(source)
    if not names:
        raise RuntimeError("no extern \"C\" __global__ kernel in the source")
    out = _cache_dir() / f"{key}{'-' + kind if kind else ''}.so"
    if not out.exists():
        work = Path(tempfile.mkdtemp(dir=_cache_dir()))
        try:
            (work / "kernels.cu").write_text(source)
            exports = "".join(f"FASTZSL_HOST_EXPORT({name})\n" for name in names)
            (work / "entry.cpp").write_text(f'#include "kernels.cu"\n{exports}')
            cmd = [CXX, *flags, "-include", str(HEADER), "-o", str(work / "lib.so"),
                   str(work / "entry.cpp")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{' '.join(cmd)}\n{proc.stderr}")
            os.replace(work / "lib.so", out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    library = _LIBRARIES[key] = Library(out, names)
    return library
