"""Chunked LoOP fits from files (``fastzsl.fit_file``) against the in-memory fit.

Run (the sizes are heavy: only with ``FASTZSL_BENCH_FIT=1``, or ``--quick`` for 20k rows):

    FASTZSL_BENCH_FIT=1 FASTZSL_BENCH_FIT_ROWS=1000000 .venv/bin/python -m pytest \\
        benchmarks/bench_fit.py -p no:cacheprovider \\
        --benchmark-json=benchmarks/results/fit-cpu-2core.json
    .venv/bin/python benchmarks/report.py benchmarks/results/fit-cpu-2core.json \\
        --out benchmarks/results/fit-cpu-2core.md

``FASTZSL_BENCH_FIT_DASK=1`` adds the Dask group; ``FASTZSL_BENCH_FIT_ROUNDS`` (default 1)
sets the interleaved rounds of each group.

Groups (data: seeded Gaussian blobs, d = 50, float32, k = 20, as the 1M-row study in
loop-fit-1m-exact-cpu-2core.md; the rows are saved as one ``.npy`` file first)
------
``fit exact N=..``
    baseline: ``LoOP(knn="exact").fit(X).save(model)`` in a subprocess (X loaded into
    memory with ``np.load``). Rows: ``fit_file(LoOP(knn="exact"), "X.npy", model)`` in a
    subprocess (the default schedule: the self-join), and the same with
    ``schedule="chunks"`` (default chunk: about 32 MB of rows). extra_info: the subprocess's peak RSS
    (VmHWM) and the target of the chunked fit, reference + 2 chunks + 300 MB. After timing,
    the two model files are checked equal (probabilities within 1e-10).
``fit dask N=..`` (``FASTZSL_BENCH_FIT_DASK=1``)
    baseline: ``fit_file`` on a ``LocalCluster`` of 1 single-threaded worker; row: 2 workers
    (clusters started outside the timer; each worker's kernels run 1 thread). extra_info:
    the per-worker rate in row pairs per second, and the projected time of 10M and 100M rows
    on 1, 8, 64 workers from it (the exact self-join is n^2 pairs; the projection assumes
    the measured 2-worker efficiency holds).
``fit ivf N=..``
    baseline: ``LoOP(knn="ivf").fit(X).save(model)`` in a subprocess; row: ``fit_file``
    with ``knn="ivf"`` (default nlist and nprobe). extra_info: peak RSS, and the price of
    IVF against the exact chunked model of the first group: mean and max |dP| and the
    Spearman rank correlation of the fitted probabilities (all rows) and of the scores of
    10,000 new points; projections of 10M and 100M rows (default nprobe = nlist / 16 visits
    about n / 16 rows per query: n^2 growth, as exact, at a smaller constant).
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastzsl
from fastzsl.testing import make_blobs

from _harness import Candidate

K = 20
D = 50
SEED = 11  # the 1M-row study's data

FIT_ON = os.environ.get("FASTZSL_BENCH_FIT", "") not in ("", "0")
DASK_ON = os.environ.get("FASTZSL_BENCH_FIT_DASK", "") not in ("", "0")
ROUNDS = int(os.environ.get("FASTZSL_BENCH_FIT_ROUNDS", "1"))

_IN_MEMORY = """
import sys, numpy as np, fastzsl
X = np.load(sys.argv[1])
params = dict(n_neighbors=int(sys.argv[3]), knn=sys.argv[4])
fastzsl.LoOP(**params).fit(X).save(sys.argv[2])
"""

_CHUNKED = """
import sys, fastzsl
params = dict(n_neighbors=int(sys.argv[3]), knn=sys.argv[4])
fastzsl.fit_file(fastzsl.LoOP(**params), sys.argv[1], sys.argv[2], schedule=sys.argv[5],
                 progress=False)
"""


def _rows(cfg):
    if cfg.quick:
        return 20_000
    return int(os.environ.get("FASTZSL_BENCH_FIT_ROWS", 1_000_000))


def _skip_unless_on(cfg):
    if not (FIT_ON or cfg.quick):
        pytest.skip("set FASTZSL_BENCH_FIT=1 (minutes to hours; FASTZSL_BENCH_FIT_ROWS sets "
                    "the size) or run with --quick")


@pytest.fixture(scope="module")
def fit_data(cfg, tmp_path_factory):
    """The rows as one .npy file, 10,000 new points, and where the models go."""
    _skip_unless_on(cfg)
    folder = tmp_path_factory.mktemp("fit_bench")
    n = _rows(cfg)
    X, _ = make_blobs(n + 10_000, D, seed=SEED)
    np.save(folder / "X.npy", X[:n])
    return dict(folder=folder, n=n, queries=np.ascontiguousarray(X[n:]),
                reference_mb=X[:n].nbytes / 2**20,
                chunk_rows=max(1024, (32 << 20) // (D * 4)))


def _subprocess_fit(run_with_peak_rss, script, data, model, knn, schedule, info):
    """Run one fit script in a subprocess (the model file removed first); its peak RSS and
    seconds go to ``info``."""
    if model.exists():
        model.unlink()
    path = data["folder"] / f"{abs(hash(script))}.py"
    path.write_text(script)
    start = time.perf_counter()
    info["peak_rss_mb"] = run_with_peak_rss(path, [data["folder"] / "X.npy", model, K, knn,
                                                   schedule])
    info["seconds"] = time.perf_counter() - start
    info["rows_per_s"] = data["n"] / info["seconds"]


def _fit_group(data, run_with_peak_rss, knn):
    def build(stack):
        common = dict(data=f"seeded Gaussian blobs (10 centres), n={data['n']}, d={D}, "
                      f"float32, k={K}", reference_mb=data["reference_mb"],
                      chunk_mb=data["chunk_rows"] * D * 4 / 2**20)
        common["rss_target_mb"] = common["reference_mb"] + 2 * common["chunk_mb"] + 300
        out = {}
        cases = [("memory", _IN_MEMORY, "auto",
                  f"LoOP(knn={knn!r}).fit(X).save in a subprocess"),
                 ("chunked", _CHUNKED, "auto",
                  f"fit_file(LoOP(knn={knn!r}), X.npy) in a subprocess")]
        if knn == "exact":
            cases.append(("chunks", _CHUNKED, "chunks",
                          f"fit_file(LoOP(knn={knn!r}), X.npy, schedule='chunks') in a "
                          "subprocess"))
        for case, script, schedule, label in cases:
            info = dict(common, schedule=schedule)
            model = data["folder"] / f"{knn}-{case}.fzsl"
            out[case] = Candidate(
                label, lambda s=script, m=model, sc=schedule, i=info: _subprocess_fit(
                    run_with_peak_rss, s, data, m, knn, sc, i), case == "memory", info)
        return out
    return build


def _check_equal(data, knn, case="chunked"):
    memory = fastzsl.load(data["folder"] / f"{knn}-memory.fzsl")
    chunked = fastzsl.load(data["folder"] / f"{knn}-{case}.fzsl")
    np.testing.assert_allclose(chunked.probabilities_, memory.probabilities_,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["memory", "chunked", "chunks"])
def test_fit_exact(bench, benchmark, fit_data, run_with_peak_rss, case):
    bench(f"fit exact N={fit_data['n']}", case, _fit_group(fit_data, run_with_peak_rss, "exact"),
          rounds=ROUNDS, warmup=0)
    if case != "memory":
        _check_equal(fit_data, "exact", case)
        info = benchmark.extra_info
        info.update(_projection(_median(benchmark), fit_data["n"]))


def _price(fit_data):
    """IVF's LoOP error against the exact model: in-sample and on new points."""
    from scipy.stats import spearmanr

    exact = fastzsl.load(fit_data["folder"] / "exact-chunked.fzsl")
    ivf = fastzsl.load(fit_data["folder"] / "ivf-chunked.fzsl")
    out = {"nlist": int(ivf.index_.index.nlist), "nprobe": int(ivf.index_.index.nprobe)}
    for name, a, b in (
            ("fit", ivf.probabilities_, exact.probabilities_),
            ("new", ivf.outlier_probability(fit_data["queries"]),
             exact.outlier_probability(fit_data["queries"]))):
        error = np.abs(np.asarray(a) - np.asarray(b))
        out[f"{name}_mean_abs_dP"] = float(error.mean())
        out[f"{name}_max_abs_dP"] = float(error.max())
        out[f"{name}_spearman"] = float(spearmanr(a, b).statistic)
    return out


def _median(benchmark):
    """The median of this row's timed rounds (None with --benchmark-disable)."""
    return benchmark.stats.stats.median if benchmark.stats else None


def _projection(seconds, n, workers=(1, 8, 64), efficiency=1.0):
    """Hours for 10M and 100M rows: n^2 growth from ``seconds`` at ``n`` on one worker (the
    process measured), ``efficiency`` of perfect scaling on more."""
    if seconds is None:
        return {}
    return {f"projected_hours_{label}_rows_{w}_workers":
            seconds * (big / n) ** 2 / (w * efficiency if w > 1 else 1) / 3600
            for label, big in (("10M", 10_000_000), ("100M", 100_000_000)) for w in workers}


@pytest.mark.parametrize("case", ["memory", "chunked"])
def test_fit_ivf(bench, benchmark, fit_data, run_with_peak_rss, case):
    pytest.importorskip("faiss")
    bench(f"fit ivf N={fit_data['n']}", case, _fit_group(fit_data, run_with_peak_rss, "ivf"),
          rounds=ROUNDS, warmup=0)
    if case == "chunked":
        _check_equal(fit_data, "ivf")
        if (fit_data["folder"] / "exact-chunked.fzsl").exists():
            benchmark.extra_info.update(_price(fit_data))
        benchmark.extra_info.update(_projection(_median(benchmark), fit_data["n"]))


@pytest.mark.parametrize("case", ["1", "2"])
def test_fit_dask_workers(bench, benchmark, fit_data, case):
    if not (DASK_ON or fit_data["n"] <= 20_000):
        pytest.skip("set FASTZSL_BENCH_FIT_DASK=1 for the 1 against 2 workers group")
    distributed = pytest.importorskip("distributed")

    def build(stack):
        out = {}
        for workers in (1, 2):
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                dashboard_address=None))
            model = fit_data["folder"] / f"dask-{workers}.fzsl"

            def run(cluster=cluster, model=model):
                if model.exists():
                    model.unlink()
                fastzsl.fit_file(fastzsl.LoOP(n_neighbors=K, knn="exact", n_jobs=1),
                                 fit_data["folder"] / "X.npy", model,
                                 scheduler=cluster.scheduler_address, progress=False)

            out[str(workers)] = Candidate(
                f"fit_file on a LocalCluster of {workers} worker(s) x 1 thread", run,
                workers == 1, dict(data=f"seeded Gaussian blobs, n={fit_data['n']}, d={D}"))
        return out

    bench(f"fit dask N={fit_data['n']}", case, build, rounds=ROUNDS, warmup=0)
    info = benchmark.extra_info
    if case == "2" and _median(benchmark):
        one, two = (fastzsl.load(fit_data["folder"] / f"dask-{w}.fzsl") for w in (1, 2))
        np.testing.assert_array_equal(one.probabilities_, two.probabilities_)
        seconds_one = _median(benchmark) * info["ratio_of_medians"]
        pairs_per_s = fit_data["n"] ** 2 / seconds_one
        efficiency = info["ratio_of_medians"] / 2
        info.update(pairs_per_s_per_worker=pairs_per_s, two_worker_efficiency=efficiency,
                    **_projection(seconds_one, fit_data["n"], efficiency=efficiency))
