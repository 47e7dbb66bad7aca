"""What machine this is: cores, CPU model, a one-line description for reports.

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


def machine_description() -> str:
    """CPU model, usable cores and Python version, e.g. for a results file."""
    return f"{cpu_name()}, {cpu_count()} cores, Python {platform.python_version()}"
