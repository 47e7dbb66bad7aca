"""fastzsl as a backend of scikit-learn and PyNomaly: interleaved rounds, ratios.

Groups
------
``lof N=20000 d=50 k=20`` (float64 blobs, the dtype scikit-learn users have by default)
    baseline: ``LocalOutlierFactor(n_neighbors=20).fit(X)`` (algorithm="auto": brute-force
    ArgKmin at d=50); ``make_pipeline(KNeighborsTransformer(n_neighbors=20),
    LocalOutlierFactor(metric="precomputed", n_neighbors=20)).fit(X)``; the same pipeline
    with ``fastzsl.KNNTransformer(n_neighbors=20)``. All three give the same
    ``negative_outlier_factor_`` (checked to 1e-10 before timing).
``pynomaly fit N=10000 / N=100000 d=5 k=10`` (float64 blobs)
    baseline: PyNomaly ``LocalOutlierProbability(X, n_neighbors=10, use_numba=True,
    n_jobs=-1).fit()`` (its fastest configuration: parallel Numba kernel, compiled in a
    warm-up call on a small set first); at N=10000 also PyNomaly's default configuration
    (scipy cdist); fastzsl ``pynomaly.LocalOutlierProbability(X, n_neighbors=10).fit()``.
    Scores checked to 1e-10 before timing (N=10000). At N=100000 PyNomaly takes minutes:
    ONE round, no warm-up, and fastzsl's scores checked against that round's.

Method: ``interleaved`` (benchmarks/_harness.py): one call of each candidate per round
(A B C, A B C, ...), so a busy phase of the shared machine falls on all alike; the
1-minute load average is read before every call. Reported: min and median seconds, and the
ratios of minima and of medians to the baseline (above 1: faster than the baseline).

Results: set ``FASTZSL_BENCH_RESULTS=benchmarks/results`` to write
``sklearn-pynomaly-cpu-2core.json`` and ``.md`` there (merged group by group).
"""
from __future__ import annotations

import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import fastzsl
from fastzsl import pynomaly
from fastzsl._platform import cpu_count, cpu_name
from fastzsl.testing import TOL, make_blobs

from _harness import interleaved, interleaved_ratios

RESULTS_NAME = "sklearn-pynomaly-cpu-2core"


def _time(candidates, baseline, *, rounds, warmup):
    loads = {}
    times = interleaved(candidates, rounds=rounds, warmup=warmup, loads=loads)
    ratios = interleaved_ratios(times, baseline)
    for name in candidates:
        ratios[name].update(times=times[name], load_1m=loads[name],
                            rounds=rounds, baseline=name == baseline)
    return ratios


def _record(group, rows, note):
    out = os.environ.get("FASTZSL_BENCH_RESULTS")
    print(f"\n{group}: " + json.dumps(rows, default=float))
    if not out:
        return
    path = Path(out) / f"{RESULTS_NAME}.json"
    doc = json.loads(path.read_text()) if path.exists() else {"groups": {}}
    doc.update(machine=f"{cpu_name()}, {cpu_count()} cores", python=platform.python_version(),
               versions=_versions())
    doc["groups"][group] = dict(rows=rows, note=note,
                                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    (Path(out) / f"{RESULTS_NAME}.md").write_text(_markdown(doc))


def _versions():
    import PyNomaly.loop
    import sklearn
    return {"fastzsl": fastzsl.__version__, "scikit-learn": sklearn.__version__,
            "PyNomaly": PyNomaly.loop.__version__, "numpy": np.__version__}


def _markdown(doc):
    lines = [f"# fastzsl as scikit-learn's kNN backend and as PyNomaly", "",
             f"Machine: {doc['machine']}; Python {doc['python']}; "
             + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()), "",
             "Interleaved rounds (A B C, A B C, ...; benchmarks/bench_sklearn.py). Ratio = "
             "baseline time / this time (above 1: faster than the baseline), of the minima "
             "and of the medians over the rounds. The machine is shared with other work: "
             "the 1-minute load average read before each timed call is listed (2 cores, so "
             "a load above 2 means the candidates competed for the CPU).", ""]
    for group, entry in doc["groups"].items():
        lines += [f"## {group}", "", f"{entry['note']} ({entry['date']})", "",
                  "| candidate | rounds | min [s] | median [s] | ratio of minima | "
                  "ratio of medians | load 1m before each round |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for name, r in entry["rows"].items():
            label = f"{name} (baseline)" if r["baseline"] else name
            lines.append(f"| {label} | {r['rounds']} | {r['min']:.3g} | {r['median']:.3g} | "
                         f"{r['ratio_of_minima']:.2f} | {r['ratio_of_medians']:.2f} | "
                         f"{', '.join(f'{x:.2f}' for x in r['load_1m'])} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- LOF pipeline
def test_lof_pipeline(cfg):
    from sklearn.neighbors import KNeighborsTransformer, LocalOutlierFactor
    from sklearn.pipeline import make_pipeline

    n, d, k = (20_000, 50, 20) if not cfg.quick else (4_000, 50, 20)
    X, _ = make_blobs(n, d, seed=0, dtype=np.float64)

    def lof():
        return LocalOutlierFactor(n_neighbors=k).fit(X)

    def pipeline(transformer):
        return lambda: make_pipeline(
            transformer, LocalOutlierFactor(metric="precomputed", n_neighbors=k)).fit(X)

    candidates = {
        "LocalOutlierFactor(n_neighbors=20)": lof,
        "pipeline(sklearn KNeighborsTransformer, LOF precomputed)":
            pipeline(KNeighborsTransformer(n_neighbors=k)),
        "pipeline(fastzsl.KNNTransformer, LOF precomputed)":
            pipeline(fastzsl.KNNTransformer(n_neighbors=k)),
    }
    expected = lof().negative_outlier_factor_
    for name, fn in list(candidates.items())[1:]:
        # float64 distances on every path (TOL's derivation, fastzsl.testing)
        np.testing.assert_allclose(fn()[-1].negative_outlier_factor_, expected,
                                   err_msg=name, **TOL[np.dtype(np.float64)])
    rows = _time(candidates, "LocalOutlierFactor(n_neighbors=20)", rounds=5, warmup=1)
    _record(f"lof N={n} d={d} k={k}", rows,
            "LOF fit on float64 Gaussian blobs (fastzsl.testing.make_blobs, seed 0, 10 "
            "centres); same negative_outlier_factor_ (1e-10) checked before timing; "
            "5 rounds after 1 warm-up round")
    fast = rows["pipeline(fastzsl.KNNTransformer, LOF precomputed)"]
    assert fast["ratio_of_minima"] > 0


# ---------------------------------------------------------------- PyNomaly
def _pynomaly_fit(module, X, **kwargs):
    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return module.LocalOutlierProbability(X, n_neighbors=10, **kwargs).fit()
    return fit


@pytest.mark.parametrize("n", [10_000, 100_000])
def test_pynomaly_fit(cfg, n):
    import PyNomaly.loop as theirs

    if cfg.quick:
        n //= 10
    X, _ = make_blobs(n, 5, seed=0, dtype=np.float64)
    _pynomaly_fit(theirs, X[:500], use_numba=True, n_jobs=-1)()  # JIT compile, untimed
    numba_name = "PyNomaly use_numba=True n_jobs=-1"
    candidates = {numba_name: _pynomaly_fit(theirs, X, use_numba=True, n_jobs=-1)}
    if n <= 10_000:
        candidates["PyNomaly default (use_numba=False)"] = _pynomaly_fit(theirs, X)
    candidates["fastzsl.pynomaly"] = _pynomaly_fit(pynomaly, X)
    single = n > 10_000 and not cfg.quick
    if not single:
        expected = candidates[numba_name]().local_outlier_probabilities.astype(float)
        np.testing.assert_allclose(candidates["fastzsl.pynomaly"]().local_outlier_probabilities,
                                   expected, **TOL[np.dtype(np.float64)])
        rows = _time(candidates, numba_name, rounds=5, warmup=1)
        note = "5 rounds after 1 warm-up round; scores equal within the float64 TOL, checked before timing"
    else:
        results = {}
        timed = {name: (lambda name=name, fn=fn: results.__setitem__(name, fn()))
                 for name, fn in candidates.items()}
        rows = _time(timed, numba_name, rounds=1, warmup=0)
        np.testing.assert_allclose(results["fastzsl.pynomaly"].local_outlier_probabilities,
                                   results[numba_name].local_outlier_probabilities.astype(float),
                                   **TOL[np.dtype(np.float64)])
        note = ("ONE round, no warm-up (PyNomaly takes minutes; its Numba kernel was compiled "
                "beforehand on 500 points); scores equal within the float64 TOL, checked after the round")
    _record(f"pynomaly fit N={n} d=5 k=10", rows,
            "in-sample LoOP of float64 Gaussian blobs (make_blobs, seed 0); " + note)
    assert rows["fastzsl.pynomaly"]["ratio_of_minima"] > 0
