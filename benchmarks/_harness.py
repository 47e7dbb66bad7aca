"""The benchmarks' shared harness: interleaved timing, candidates, the machine, shared data.

Imported by ``conftest.py`` (the pytest-benchmark suites) and by the scripts
(``shapes.py``, ``kdtree_crossover.py``, ...); no benchmark imports another. Scripts run as
``python benchmarks/<script>.py`` find it beside them (Python puts a script's folder first
on ``sys.path``), and pytest puts ``benchmarks/`` there for the suites.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fastzsl._platform import cpu_count, cpu_flags, cpu_name

DATA_DESCRIPTION = "synthetic Gaussian blobs, seeded (fastzsl.testing.make_blobs), float32"
# A trained run ('fastzsl train'): its LoOP reference is real mapped Fashion-MNIST features.
RUN_MODEL = os.environ.get("FASTZSL_BENCH_RUN", "fastzsl-run/model.fzsl")


def trained_run_features():
    """The training features (float32) held by the trained run's LoOP, or None: a detector
    file's reference set, or a zero-shot model's (``fastzsl train``) first LoOP channel of
    its novelty gate (the training images in the gate's 50-d PCA)."""
    import fastzsl

    if not os.path.isfile(RUN_MODEL):
        return None
    model = fastzsl.load(RUN_MODEL)
    if hasattr(model, "gate_"):
        detectors = [channel[3] for channel in model.gate_.channels_]
    else:
        detector = model.detector_
        detectors = list(detector.values()) if isinstance(detector, dict) else [detector]
    for detector in detectors:  # a Gaussian detector holds no reference set
        if hasattr(getattr(detector, "index_", None), "reference"):
            return np.asarray(detector.index_.reference, dtype=np.float32)
    return None


# ---------------------------------------------------------------- the machine
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


def machine() -> dict:
    """CPU model and SIMD flags, usable cores and the thread counts of faiss and numba where
    they load."""
    return dict(cpu=cpu_name(), flags=cpu_flags(), cores=cpu_count(), **_threads())


def write_results(out, name: str, results: dict, report: Callable[[dict], str]) -> None:
    """A script's results as ``out/name.json`` and its report, ``report(results)``, as
    ``out/name.md``."""
    import json
    from pathlib import Path

    out = Path(out)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))
    (out / f"{name}.md").write_text(report(results))
    print(f"wrote {out / name}.md")


def load_1m() -> float:
    """The 1-minute load average (other work on the machine), to record beside a timing."""
    return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------- interleaved rounds
@dataclass
class Candidate:
    """One row of an interleaved group: ``fn()`` is timed; ``extra`` goes to extra_info (a
    candidate may add to it while it runs, e.g. a subprocess's peak RSS)."""
    label: str
    fn: Callable
    baseline: bool = False
    extra: dict = field(default_factory=dict)


# Idle time before each timed call: the previous call's BLAS and OpenMP threads spin-wait
# for a while after it returns, and the call that follows would pay for them (a 10k x 100k
# kNN right after a 4096^3 sgemm: 740 ms; after a 0.5 s pause: 688 ms; 2 cores).
SETTLE_SECONDS = 0.25


def interleaved(candidates: dict, *, rounds: int = 5, warmup: int = 1, loads: dict = None,
                results: dict = None) -> dict:
    """Time every callable in ``candidates`` (name -> fn) in interleaved rounds: one call of
    each per round (A B C, A B C, ...; SETTLE_SECONDS idle before each), so a fast or slow
    phase of the machine falls on all of them alike. Returns name -> list of seconds per
    round (warm-up rounds dropped).
    ``loads``: filled with name -> the 1-minute load average before each timed call;
    ``results``: name -> what its last call returned.

    Report ``ratio_of_minima`` and ``ratio_of_medians`` against the baseline (see
    :func:`interleaved_ratios`): these, not absolute times, carry across machines.
    """
    import time

    times = {name: [] for name in candidates}
    if loads is not None:
        loads.update({name: [] for name in candidates})
    for round_ in range(warmup + rounds):
        for name, fn in candidates.items():
            if loads is not None and round_ >= warmup and hasattr(os, "getloadavg"):
                loads[name].append(round(os.getloadavg()[0], 2))
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            out = fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
            if results is not None:
                results[name] = out
            del out  # a large result should not stay alive while the next candidate runs
    return times


def interleaved_ratios(times: dict, baseline: str) -> dict:
    """name -> {min, median, ratio_of_minima, ratio_of_medians} (baseline time / its time:
    above 1 means faster than the baseline)."""
    base = times[baseline]
    return {name: {"min": min(t), "median": float(np.median(t)),
                   "ratio_of_minima": min(base) / min(t),
                   "ratio_of_medians": float(np.median(base) / np.median(t))}
            for name, t in times.items()}
