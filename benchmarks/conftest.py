"""pytest-benchmark configuration for fastzsl's benchmarks (not tests).

Run from the repository root:

    .venv/bin/python -m pytest benchmarks -p no:cacheprovider --benchmark-json=OUT.json
    .venv/bin/python -m pytest benchmarks -p no:cacheprovider --quick      # smoke sizes

``bench_*.py`` files are collected by :func:`pytest_collect_file` below (the project's
``python_files`` stays at pytest's default ``test_*.py``, so ``pytest`` alone never runs
these). Sizes: N_ref=100_000 reference points, N_q=10_000 queries, d=50, k=20;
``--quick`` or ``FASTZSL_BENCH_QUICK=1`` shrinks them to N_ref=10_000, N_q=1_000.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

from fastzsl._platform import cpu_count, cpu_name
from fastzsl.testing import make_blobs

DATA_DESCRIPTION = "synthetic Gaussian blobs, seeded (fastzsl.testing.make_blobs), float32"
# A trained run ('fastzsl train'): its LoOP reference is real mapped Fashion-MNIST features.
RUN_MODEL = os.environ.get("FASTZSL_BENCH_RUN", "fastzsl-run/model.fzsl")


def trained_run_features():
    """The mapped training features (float32) held by the trained run's LoOP, or None."""
    import fastzsl

    if not os.path.isfile(RUN_MODEL):
        return None
    detector = fastzsl.load(RUN_MODEL).detector_
    detector = next(iter(detector.values())) if isinstance(detector, dict) else detector
    if not hasattr(detector, "index_"):  # a Gaussian-detector model holds no reference set
        return None
    return np.asarray(detector.index_.reference, dtype=np.float32)


# ---------------------------------------------------------------- collection, options
def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", default=False,
                     help="fastzsl benchmarks: smoke sizes (N_ref=10_000, N_q=1_000); "
                          "same as FASTZSL_BENCH_QUICK=1")


def pytest_collect_file(file_path, parent):
    # Collect bench_*.py as test modules; files named on the command line are already
    # collected by pytest itself, so leave those alone (no duplicates).
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


# ---------------------------------------------------------------- sizes and data
@dataclass(frozen=True)
class BenchConfig:
    quick: bool
    n_ref: int
    n_q: int
    d: int = 50
    k: int = 20
    n_fit: int = 10_000          # in-sample LoOP fit group (PyNomaly comparison)
    n_subset: int = 100          # queries of the "knn subset" group (numpy backend)
    n_check: int = 200           # queries checked against the reference before timing
    n_classes: int = 100         # Gaussian group
    n_gauss_target: int = 1_000_000  # Gaussian target group (C=1000)
    rounds: int = 5              # timed rounds (median reported), one warm-up round
    dtype: type = np.float32

    @property
    def n_gauss(self) -> int:
        return self.n_q * 10

    def sizes(self, **extra):
        sizes = dict(N_ref=self.n_ref, N_q=self.n_q, d=self.d, k=self.k)
        sizes.update(extra)
        return sizes


def _is_quick(config) -> bool:
    return bool(config.getoption("--quick", default=False)) or \
        os.environ.get("FASTZSL_BENCH_QUICK", "") not in ("", "0")


@pytest.fixture(scope="session")
def cfg(request) -> BenchConfig:
    if _is_quick(request.config):
        return BenchConfig(quick=True, n_ref=10_000, n_q=1_000, n_fit=2_000,
                           n_gauss_target=50_000)
    return BenchConfig(quick=False, n_ref=100_000, n_q=10_000)


@pytest.fixture(scope="session")
def blobs(cfg):
    """One seeded draw of N_ref + N_q points around 10 shared centres."""
    X, _ = make_blobs(cfg.n_ref + cfg.n_q, cfg.d, seed=0, dtype=cfg.dtype)
    return X


@pytest.fixture(scope="session")
def reference(cfg, blobs):
    return np.ascontiguousarray(blobs[:cfg.n_ref])


@pytest.fixture(scope="session")
def queries(cfg, blobs):
    """New points from the reference's distribution (not reference rows)."""
    return np.ascontiguousarray(blobs[cfg.n_ref:])


@pytest.fixture(scope="session")
def faiss_flat(reference):
    """faiss IndexFlatL2 over the reference, built once, outside every timer."""
    import faiss
    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(np.ascontiguousarray(reference, dtype=np.float32))
    return index


@pytest.fixture(scope="session")
def knn_expected(cfg, reference, queries):
    """Exact kNN of the first n_check queries from fastzsl's NumPy reference backend."""
    import fastzsl
    return fastzsl.knn(queries[:cfg.n_check], reference, cfg.k, backend="numpy")


# ---------------------------------------------------------------- machine, bookkeeping
def _threads() -> dict:
    info = {}
    try:
        import faiss
        info["faiss_threads"] = faiss.omp_get_max_threads()
    except Exception:  # pragma: no cover
        pass
    try:
        import numba
        info["numba_threads"] = numba.get_num_threads()
    except Exception:  # pragma: no cover
        pass
    return info


@pytest.fixture(scope="session")
def machine() -> dict:
    return dict(cpu=cpu_name(), cores=cpu_count(), **_threads())


@pytest.fixture
def bench(benchmark, cfg, machine):
    """``bench(fn, group=..., label=..., baseline=False, rounds=None, **extra)``.

    Sets the group and extra_info, then times ``fn`` with
    ``benchmark.pedantic(fn, rounds=R, warmup_rounds=1, iterations=1)`` and returns its
    result. ``rounds=1`` (used for multi-minute fits) skips the warm-up round.
    """
    def run(fn, *, group, label, baseline=False, rounds=None, **extra):
        rounds = cfg.rounds if rounds is None else rounds
        benchmark.group = group
        info = dict(label=label, baseline=bool(baseline), data=DATA_DESCRIPTION,
                    dtype=np.dtype(cfg.dtype).name, quick=cfg.quick,
                    machine=f"{machine['cpu']}, {machine['cores']} cores", **machine)
        info.update(extra)  # a group may describe its own data
        benchmark.extra_info.update(info)
        if hasattr(os, "getloadavg"):  # other work on the machine shows up here
            benchmark.extra_info["loadavg_1m_before"] = round(os.getloadavg()[0], 2)
        warmup = 1 if rounds > 1 else 0
        return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
    return run


# ---------------------------------------------------------------- peak memory of a subprocess
# The child reports its own high-water mark (VmHWM of its address space after exec). The
# rusage of wait4 would not do: Linux carries the forked parent's RSS into ru_maxrss.
_PEAK_RSS_WRAPPER = """
import runpy, sys
out, target, sys.argv = sys.argv[1], sys.argv[2], sys.argv[2:]
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as f:
        hwm = next(line for line in f if line.startswith("VmHWM"))
    open(out, "w").write(str(int(hwm.split()[1]) / 1024))
"""


@pytest.fixture
def run_with_peak_rss(tmp_path):
    """``run(target, args)``: ``python -m target`` (or a .py path) with args; its peak RSS in MiB."""
    import subprocess
    import sys

    def run(target, args):
        rss_file = tmp_path / "peak_rss.txt"
        subprocess.run([sys.executable, "-c", _PEAK_RSS_WRAPPER, str(rss_file), str(target),
                        *map(str, args)], check=True)
        return float(rss_file.read_text())
    return run


# ---------------------------------------------------------------- interleaved rounds
def interleaved(candidates: dict, *, rounds: int = 5, warmup: int = 1) -> dict:
    """Time every callable in ``candidates`` (name -> fn) in interleaved rounds: one call of
    each per round (A B C, A B C, ...), so a fast or slow phase of the machine falls on all
    of them alike. Returns name -> list of seconds per round (warm-up rounds dropped).

    Report ``ratio_of_minima`` and ``ratio_of_medians`` against the baseline (see
    :func:`interleaved_ratios`): these, not absolute times, carry across machines.
    """
    import time

    times = {name: [] for name in candidates}
    for round_ in range(warmup + rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def interleaved_ratios(times: dict, baseline: str) -> dict:
    """name -> {min, median, ratio_of_minima, ratio_of_medians} (baseline time / its time:
    above 1 means faster than the baseline)."""
    base = times[baseline]
    return {name: {"min": min(t), "median": float(np.median(t)),
                   "ratio_of_minima": min(base) / min(t),
                   "ratio_of_medians": float(np.median(base) / np.median(t))}
            for name, t in times.items()}
