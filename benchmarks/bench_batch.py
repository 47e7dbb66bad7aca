"""Batch scoring (``fastzsl.batch.score_file``) against in-memory scoring, on Dask, at scale.

Data: semantic-space points **seeded from real mapped features** when a trained run exists
(``FASTZSL_BENCH_RUN``, default ``fastzsl-run/model.fzsl`` from ``fastzsl train``: the
LoOP reference of that model is the 48k mapped Fashion-MNIST training images, d=50):
synthetic rows are random real rows plus Gaussian noise (0.1 x the mean per-dimension
std), seeded. Without a run: Gaussian blobs (seeded). The table says which.
The model is a LoOP detector (k=20, extent 3) on N_ref such rows; scoring semantic
points directly (the mapping is skipped: a ZeroShotClassifier would add its mapping and
softmax per row).

Groups
------
``batch N_ref=.. N_q=..``
    baseline: ``LoOP.outlier_probability(Q)`` with Q in memory; ``score_file`` from a
    ``.npy`` on disk in one process (target: <= 1.10x the baseline); on a Dask
    ``LocalCluster`` of 1 and of 2 single-threaded workers (cluster started outside the
    timer; the model file is broadcast inside it). Reported: the speedup of 2 workers over
    1 and the overhead of 2 workers over the one-process run.
``batch growth N_ref`` / ``batch growth N_q`` (one round each)
    rows/s as the reference set grows (exact and IVF index, fixed N_q) and as the number of
    queries grows (N_ref fixed); ``report.py`` fits the growth exponent of time per series.
    References of 1M points get their LoOP statistics from an IVF graph (nprobe 8: only
    the scoring is timed here); every IVF row searches with the default nlist and nprobe.
``batch scale`` (only with ``FASTZSL_BENCH_SCALE=1``; one round)
    ``fastzsl score`` in a subprocess over a ``.npy`` of N rows (default 10M, 2 GB),
    N_ref=100k; peak RSS of that process (its VmHWM). Sizes from
    ``FASTZSL_BENCH_SCALE_ROWS`` and ``FASTZSL_BENCH_SCALE_KNN`` (exact | ivf).

Rounds are interleaved within each group (conftest ``bench``: A B C, A B C, ...; the group's
first test builds and times all its rows; the Dask clusters and the growth models are set up
before, outside the timer).
"""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import fastzsl
from fastzsl.batch import read_scores, score_file

from _harness import RUN_MODEL, Candidate, trained_run_features

K = 20


def _real_seed():
    """(mapped training features of a trained run, description) or (None, None)."""
    F = trained_run_features()
    if F is None:
        return None, None
    return F, (f"synthetic semantic points seeded from {len(F)} real mapped Fashion-MNIST "
               f"features ({RUN_MODEL}): random real rows + N(0, (0.1 std)^2) noise, "
               f"d={F.shape[1]}")


@pytest.fixture(scope="session")
def semantic_points():
    """draw(n, seed) -> float32 (n, d) rows, and the data description."""
    F, description = _real_seed()
    if F is None:
        from fastzsl.testing import make_blobs

        return (lambda n, seed: make_blobs(n, 50, seed=seed)[0],
                "synthetic Gaussian blobs, seeded (no trained run found at "
                f"{RUN_MODEL}), d=50")
    scale = 0.1 * F.std(axis=0).mean()

    def draw(n, seed):
        rng = np.random.default_rng(seed)
        out = np.empty((n, F.shape[1]), np.float32)
        for start in range(0, n, 1 << 20):  # bounded temporaries for 10M rows
            stop = min(start + (1 << 20), n)
            out[start:stop] = F[rng.integers(len(F), size=stop - start)]
            out[start:stop] += rng.normal(scale=scale, size=(stop - start, F.shape[1]))
        return out

    return draw, description


def _sizes(cfg):
    if cfg.quick:
        return dict(n_ref=10_000, n_q=50_000, growth_ref=[2_000, 10_000, 50_000],
                    growth_ref_nq=5_000, growth_q=[10_000, 30_000, 100_000])
    return dict(n_ref=100_000, n_q=1_000_000, growth_ref=[10_000, 100_000, 1_000_000],
                growth_ref_nq=20_000, growth_q=[100_000, 300_000, 1_000_000])


def _fit_loop(reference, knn="exact"):
    """LoOP with default settings; scoring uses the exact or the default IVF index."""
    if len(reference) < 500_000:
        return fastzsl.LoOP(n_neighbors=K, knn=knn).fit(reference)
    # 1M references: the LoOP statistics come from a cheap IVF graph (only scoring is timed)
    model = fastzsl.LoOP(n_neighbors=K, knn="ivf", knn_params={"nprobe": 8}).fit(reference)
    if knn == "exact":
        model.set_params(knn="exact", knn_params=None)
        model._build_index(reference)
    else:  # the default IVF search, as for the smaller references
        model.index_.index.nprobe = fastzsl.FaissIndex.default_nprobe(model.index_.index.nlist)
    return model


@pytest.fixture(scope="session")
def batch_job(cfg, semantic_points, tmp_path_factory):
    draw, description = semantic_points
    sizes = _sizes(cfg)
    folder = tmp_path_factory.mktemp("batch")
    model = _fit_loop(draw(sizes["n_ref"], 0))
    model.save(folder / "loop.fzsl")
    Q = draw(sizes["n_q"], 1)
    np.save(folder / "queries.npy", Q)
    return dict(folder=folder, model=model, Q=Q, description=description, **sizes)


def _fresh(path):
    shutil.rmtree(path, ignore_errors=True)


def _score_and_check(job, out, **kwargs):
    _fresh(out)
    score_file(job["folder"] / "loop.fzsl", job["folder"] / "queries.npy", out,
               progress=False, **kwargs)


BATCH_CASES = ["in-memory", "one-process", "dask-1", "dask-2"]


def _batch_candidates(job, stack):
    extra = dict(data=job["description"], rows=job["n_q"])
    out = {"in-memory": Candidate("baseline: LoOP.outlier_probability(Q), Q in memory",
                                  lambda: job["model"].outlier_probability(job["Q"]), True,
                                  extra),
           "one-process": Candidate("score_file from .npy on disk, one process",
                                    lambda: _score_and_check(job, job["folder"] / "out-None"),
                                    extra=extra)}
    try:
        import distributed
    except ImportError:
        return dict(out, **{f"dask-{w}": "distributed not installed" for w in (1, 2)})
    for workers in (1, 2):
        cluster = stack.enter_context(distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None))
        out[f"dask-{workers}"] = Candidate(
            f"score_file on a Dask LocalCluster, {workers} worker(s) x 1 thread",
            lambda cluster=cluster, workers=workers: _score_and_check(
                job, job["folder"] / f"out-{workers}", scheduler=cluster.scheduler_address),
            extra=extra)
    return out


@pytest.mark.parametrize("case", BATCH_CASES)
def test_score_file(bench, cfg, batch_job, case):
    job = batch_job
    bench(f"batch N_ref={job['n_ref']} N_q={job['n_q']}", case,
          lambda stack: _batch_candidates(job, stack),
          rounds=3 if cfg.quick else 2, warmup=1 if cfg.quick else 0)
    if case == "in-memory":
        return
    # correct before fast: the streamed scores (of the last round) equal the in-memory ones
    expected = job["model"].outlier_probability(job["Q"])
    out = job["folder"] / f"out-{case.split('-')[1] if case != 'one-process' else None}"
    np.testing.assert_array_equal(read_scores(out)["p_unseen"], expected)


def _growth_candidates(sizes, models, Qs, description, size_key):
    """exact / ivf at each size, one round each; baseline: exact at the smallest size."""
    out = {}
    for knn in ("exact", "ivf"):
        for step, size in enumerate(sizes):
            model, Q = models(knn, step), Qs(step)
            out[f"{knn}-{step}"] = Candidate(
                f"{knn} {size_key}={size}",
                lambda model=model, Q=Q: model.outlier_probability(Q),
                knn == "exact" and step == 0,
                dict(data=description, rows=len(Q), series=knn, growth_size=size))
    return out


GROWTH_CASES = [f"{knn}-{step}" for knn in ("exact", "ivf") for step in range(3)]


@pytest.mark.parametrize("case", GROWTH_CASES)
def test_growth_in_reference_size(bench, cfg, semantic_points, case):
    draw, description = semantic_points
    sizes = _sizes(cfg)
    n_q = sizes["growth_ref_nq"]

    def build(stack):
        Q = draw(n_q, 20)
        return _growth_candidates(
            sizes["growth_ref"],
            lambda knn, step: _fit_loop(draw(sizes["growth_ref"][step], 10 + step), knn=knn),
            lambda step: Q, description, "N_ref")

    bench(f"batch growth N_ref (N_q={n_q})", case, build, rounds=1)


@pytest.mark.parametrize("case", GROWTH_CASES)
def test_growth_in_query_count(bench, cfg, batch_job, semantic_points, case):
    draw, description = semantic_points
    sizes = _sizes(cfg)["growth_q"]

    def build(stack):
        ivf = _fit_loop(batch_job["model"].index_.reference, knn="ivf")
        Qs = [draw(n_q, 30 + step) for step, n_q in enumerate(sizes)]
        return _growth_candidates(
            sizes, lambda knn, step: batch_job["model"] if knn == "exact" else ivf,
            lambda step: Qs[step], description, "N_q")

    bench(f"batch growth N_q (N_ref={batch_job['n_ref']})", case, build, rounds=1)


@pytest.mark.skipif(os.environ.get("FASTZSL_BENCH_SCALE", "") in ("", "0"),
                    reason="set FASTZSL_BENCH_SCALE=1 for the 10M-row run (minutes, 2 GB disk)")
def test_scale_subprocess(bench, benchmark, batch_job, semantic_points, tmp_path,
                          run_with_peak_rss):
    draw, description = semantic_points
    n_rows = int(os.environ.get("FASTZSL_BENCH_SCALE_ROWS", 10_000_000))
    knn = os.environ.get("FASTZSL_BENCH_SCALE_KNN", "exact")
    model_path = tmp_path / "loop.fzsl"
    model = batch_job["model"] if knn == "exact" else _fit_loop(
        batch_job["model"].index_.reference, knn=knn)
    model.save(model_path)
    queries = np.lib.format.open_memmap(tmp_path / "q.npy", mode="w+", dtype=np.float32,
                                        shape=(n_rows, model.n_features_in_))
    for start in range(0, n_rows, 1 << 20):
        stop = min(start + (1 << 20), n_rows)
        queries[start:stop] = draw(stop - start, 1000 + start)
    queries.flush()
    del queries
    info = {}

    def run():
        _fresh(tmp_path / "out")
        info["peak_rss_mb"] = run_with_peak_rss(
            "fastzsl", ["score", model_path, tmp_path / "q.npy", tmp_path / "out", "--quiet"])

    bench(f"batch scale N_ref={batch_job['n_ref']} N_q={n_rows}", "scale",
          lambda stack: {"scale": Candidate(
              f"fastzsl score subprocess, {knn} kNN", run, True,
              dict(data=description, rows=n_rows,
                   input_gb=round(n_rows * model.n_features_in_ * 4 / 1e9, 2)))},
          rounds=1)
    benchmark.extra_info.update(info)  # the scoring process's peak RSS, in the same JSON row
    scores = read_scores(tmp_path / "out")
    assert len(scores["row"]) == n_rows and np.isfinite(scores["p_unseen"]).all()
    assert info["peak_rss_mb"] < 1536, info
