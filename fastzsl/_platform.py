"""What machine this is: cores, CPU model and SIMD flags, a one-line description for reports.

Every number fastzsl reports (benchmarks, ``fastzsl train``, ``fastzsl reproduce``) names the
machine with :func:`machine_description`, and every ``n_jobs`` counts cores with
:func:`cpu_count`, so the two always agree.
"""
from __future__ import annotations

import os
import platform


def cpu_count() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# The CPU features fastzsl's kernels choose by (vector tiles, BF16 screen) or that decide
# BLAS's speed: what a timing means depends on them.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def simd_flags():
    """The set of SIMD_FLAGS the CPU has, as Linux reports them (/proc/cpuinfo: what the
    OS lets programs use), or None where the OS does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            have = set(next(line for line in f if line.startswith("flags"))
                       .split(":", 1)[1].split())
    except (OSError, StopIteration):
        return None
    return have & set(SIMD_FLAGS)


def cpu_flags() -> str:
    """simd_flags() for a report, e.g. "avx2 fma"; "none of ..." where the CPU has none,
    "unknown" where the OS does not say."""
    have = simd_flags()
    if have is None:
        return "unknown"
    return " ".join(f for f in SIMD_FLAGS if f in have) or "none of " + " ".join(SIMD_FLAGS)


def machine_description() -> str:
    """CPU model and SIMD flags, usable cores and Python version, e.g. for a results
    file."""
    return (f"{cpu_name()} (flags: {cpu_flags()}), {cpu_count()} cores, "
            f"Python {platform.python_version()}")
