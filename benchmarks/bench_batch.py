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
"""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import fastzsl
from fastzsl.batch import read_scores, score_file

from conftest import RUN_MODEL, trained_run_features

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


def test_in_memory_baseline(bench, batch_job):
    job = batch_job
    result = bench(lambda: job["model"].outlier_probability(job["Q"]),
                   group=f"batch N_ref={job['n_ref']} N_q={job['n_q']}",
                   label="baseline: LoOP.outlier_probability(Q), Q in memory", baseline=True,
                   rounds=2, data=job["description"], rows=job["n_q"])
    job["expected"] = result


def _score_and_check(job, out, **kwargs):
    _fresh(out)
    score_file(job["folder"] / "loop.fzsl", job["folder"] / "queries.npy", out,
               progress=False, **kwargs)


@pytest.mark.parametrize("workers", [None, 1, 2], ids=["one-process", "dask-1", "dask-2"])
def test_score_file(bench, batch_job, workers):
    job = batch_job
    out = job["folder"] / f"out-{workers}"
    group = f"batch N_ref={job['n_ref']} N_q={job['n_q']}"
    if workers is None:
        bench(lambda: _score_and_check(job, out), group=group, rounds=2,
              label="score_file from .npy on disk, one process", data=job["description"],
              rows=job["n_q"])
    else:
        distributed = pytest.importorskip("distributed")
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster:
            bench(lambda: _score_and_check(job, out, scheduler=cluster.scheduler_address),
                  group=group, rounds=1, data=job["description"], rows=job["n_q"],
                  label=f"score_file on a Dask LocalCluster, {workers} worker(s) x 1 thread")
    # correct before fast: the streamed scores equal the in-memory ones
    expected = job.get("expected")
    if expected is None:
        expected = job["model"].outlier_probability(job["Q"])
    np.testing.assert_array_equal(read_scores(out)["p_unseen"], expected)


@pytest.mark.parametrize("knn", ["exact", "ivf"])
@pytest.mark.parametrize("step", [0, 1, 2])
def test_growth_in_reference_size(bench, cfg, semantic_points, knn, step):
    draw, description = semantic_points
    sizes = _sizes(cfg)
    n_ref, n_q = sizes["growth_ref"][step], sizes["growth_ref_nq"]
    model = _fit_loop(draw(n_ref, 10 + step), knn=knn)
    Q = draw(n_q, 20)
    bench(lambda: model.outlier_probability(Q), group=f"batch growth N_ref (N_q={n_q})",
          label=f"{knn} N_ref={n_ref}", rounds=1, baseline=(knn == "exact" and step == 0),
          data=description, rows=n_q, series=knn, growth_size=n_ref)


@pytest.mark.parametrize("knn", ["exact", "ivf"])
@pytest.mark.parametrize("step", [0, 1, 2])
def test_growth_in_query_count(bench, cfg, batch_job, semantic_points, knn, step):
    draw, description = semantic_points
    n_q = _sizes(cfg)["growth_q"][step]
    model = batch_job["model"] if knn == "exact" else batch_job.setdefault(
        "ivf_model", _fit_loop(batch_job["model"].index_.reference, knn="ivf"))
    Q = draw(n_q, 30 + step)
    bench(lambda: model.outlier_probability(Q),
          group=f"batch growth N_q (N_ref={batch_job['n_ref']})", label=f"{knn} N_q={n_q}",
          rounds=1, baseline=(knn == "exact" and step == 0), data=description, rows=n_q,
          series=knn, growth_size=n_q)


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

    bench(run, group=f"batch scale N_ref={batch_job['n_ref']} N_q={n_rows}",
          label=f"fastzsl score subprocess, {knn} kNN", rounds=1, baseline=True,
          data=description, rows=n_rows, input_gb=round(n_rows * model.n_features_in_ * 4 / 1e9, 2))
    benchmark.extra_info.update(info)  # the scoring process's peak RSS, in the same JSON row
    scores = read_scores(tmp_path / "out")
    assert len(scores["row"]) == n_rows and np.isfinite(scores["p_unseen"]).all()
    assert info["peak_rss_mb"] < 1536, info
