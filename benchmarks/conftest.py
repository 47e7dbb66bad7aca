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

from _harness import DATA_DESCRIPTION, Candidate, interleaved, interleaved_ratios
from _harness import machine as machine_info
from fastzsl.testing import make_blobs


# ---------------------------------------------------------------- collection, options
def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", default=False,
                     help="fastzsl benchmarks: smoke sizes (N_ref=10_000, N_q=1_000); "
                          "same as FASTZSL_BENCH_QUICK=1")
    parser.addoption("--bench-dim", type=int, default=None,
                     help="fastzsl benchmarks: the data's dimension d (default 50); from "
                          f"d >= {WIDE} the full sizes are N_ref=50_000, N_q=5_000")


def pytest_collect_file(file_path, parent):
    # Collect bench_*.py as test modules; files named on the command line are already
    # collected by pytest itself, so leave those alone (no duplicates).
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


# ---------------------------------------------------------------- sizes and data
WIDE = 256  # --bench-dim from which the full groups search 5k x 50k instead of 10k x 100k
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
    d = request.config.getoption("--bench-dim", default=None)
    d = 50 if d is None else d
    if d < 1:
        raise pytest.UsageError(f"--bench-dim must be at least 1, got {d}")
    if _is_quick(request.config):
        return BenchConfig(quick=True, n_ref=10_000, n_q=1_000, d=d, n_fit=2_000,
                           n_gauss_target=50_000)
    if d >= WIDE:  # a quarter of the rows' pairs: the groups stay within seconds a round
        return BenchConfig(quick=False, n_ref=50_000, n_q=5_000, d=d)
    return BenchConfig(quick=False, n_ref=100_000, n_q=10_000, d=d)


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
@pytest.fixture(scope="session")
def machine() -> dict:
    return machine_info()


@pytest.fixture(scope="session")
def _groups() -> dict:
    """group name -> its interleaved timing (or the exception its build raised)."""
    return {}


def _record_rounds(benchmark, seconds):
    """Gives pytest-benchmark the per-round seconds measured by :func:`interleaved`, as if
    its own ``pedantic(rounds=len(seconds), iterations=1)`` had timed them (it has no public
    call for times taken elsewhere; this is what pedantic does with each round's time)."""
    if benchmark.disabled:
        return
    stats = benchmark._make_stats(1)
    for t in seconds:
        stats.update(t)
    benchmark._mode = "interleaved rounds (benchmarks/conftest.py)"


@pytest.fixture
def bench(benchmark, cfg, machine, _groups):
    """``bench(group, case, build, rounds=None, warmup=None)``: records candidate ``case``
    of ``group`` and returns what its last timed call returned.

    The first test of a group calls ``build(stack)`` -> {case: Candidate, or a str: the
    reason that case is skipped}; build checks every candidate's result before anything is
    timed and may enter context managers on ``stack`` (an ExitStack closed after timing).
    Then all candidates run in interleaved rounds (:func:`interleaved`: A B C, A B C, ...;
    ``warmup`` rounds first, 1 unless ``rounds`` is 1), once per session. Every test of the
    group then gets its candidate's rounds: pytest-benchmark's stats (so the JSON's min,
    median and report.py's ratios are of the interleaved rounds) and, in extra_info, the
    ratio of minima and of medians against the baseline (baseline time / this time: above 1
    is faster), the 1-min load average before each round and the other candidates' labels.
    Selecting one case with -k still times its whole group: a ratio needs the baseline.
    """
    def run(group, case, build, *, rounds=None, warmup=None):
        rounds = cfg.rounds if rounds is None else rounds
        warmup = (1 if rounds > 1 else 0) if warmup is None else warmup
        if group not in _groups:
            try:
                _groups[group] = _time_group(build, rounds, warmup)
            except Exception as exc:  # every case of the group reports it
                _groups[group] = exc
        entry = _groups[group]
        if isinstance(entry, Exception):
            raise entry
        cand = entry["candidates"][case]
        if isinstance(cand, str):
            pytest.skip(cand)
        benchmark.group = group
        ratios = entry["ratios"][case]
        info = dict(label=cand.label, baseline=bool(cand.baseline), data=DATA_DESCRIPTION,
                    dtype=np.dtype(cfg.dtype).name, quick=cfg.quick,
                    machine=f"{machine['cpu']}, {machine['cores']} cores", **machine)
        info.update(cand.extra)  # a group may describe its own data
        info.update(interleaved=True, warmup_rounds=warmup,
                    interleaved_with=[c.label for name, c in entry["timed"].items()
                                      if name != case],
                    baseline_label=entry["timed"][entry["baseline"]].label,
                    ratio_of_minima=ratios["ratio_of_minima"],
                    ratio_of_medians=ratios["ratio_of_medians"],
                    load_1m_rounds=entry["loads"][case],
                    loadavg_1m_before=entry["loads"][case][0])
        benchmark.extra_info.update(info)
        _record_rounds(benchmark, entry["times"][case])
        return entry["results"][case]
    return run


def _time_group(build, rounds, warmup):
    import contextlib

    with contextlib.ExitStack() as stack:
        candidates = build(stack)
        timed = {case: c for case, c in candidates.items() if isinstance(c, Candidate)}
        baseline = [case for case, c in timed.items() if c.baseline]
        assert len(baseline) == 1, f"one baseline per group, not {baseline}"
        loads, results = {}, {}
        times = interleaved({case: c.fn for case, c in timed.items()}, rounds=rounds,
                            warmup=warmup, loads=loads, results=results)
    return dict(candidates=candidates, timed=timed, times=times, loads=loads, results=results,
                baseline=baseline[0], ratios=interleaved_ratios(times, baseline[0]))


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


