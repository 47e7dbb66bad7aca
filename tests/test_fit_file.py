"""Chunked fits from files (fastzsl.fit_file, ``fastzsl fit``): equal to the in-memory fit,
resumable after SIGKILL to the same model file, locked, on Dask, with clear errors.

Tolerances. The kNN lists are the in-memory graph bit for bit (the exact kernels give a row
the same list however the queries are chunked: asserted below), so the only differences
from ``LoOP.fit`` are in the float64 reduction: the same formulas, with sums over k
neighbours and over n rows taken in another order. Each such sum is within about
(k + log2 n) * 2^-53 relative of the other (under 1e-14 here), far below the 1e-10 the
chunked fit promises; the GaussianNovelty sums (per-class, shifted) are within d * N
roundings of the in-memory ones, relative 1e-12 at these sizes, again under 1e-10.
"""
import filecmp
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastzsl
from fastzsl import GaussianNovelty, LoOP
from fastzsl.batch import LOCK, BatchError, output_lock
from fastzsl.fitting import PARTS_SUFFIX, fit_file
from fastzsl.testing import make_blobs

TOL = dict(rtol=1e-10, atol=1e-12)


def _parts(model):
    return Path(str(model) + PARTS_SUFFIX)


def _lists(folder):
    return sorted(p.name for p in Path(folder).glob("lists-*.npy"))


def assert_same_loop(model, expected, queries):
    """A fitted LoOP equals ``expected`` (reference exactly; fit and scores within TOL)."""
    np.testing.assert_array_equal(model.index_.reference, expected.index_.reference)
    assert model.get_params() == expected.get_params()
    for name in ("pdist", "plof", "probabilities"):
        np.testing.assert_allclose(getattr(model.fit_, name), getattr(expected.fit_, name),
                                   **TOL, err_msg=name)
    for name in ("nplof", "mean_expected_pdist", "extent"):
        assert getattr(model.fit_, name) == pytest.approx(getattr(expected.fit_, name),
                                                          rel=1e-10), name
    np.testing.assert_allclose(model.outlier_probability(queries),
                               expected.outlier_probability(queries), **TOL)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3,000 reference rows (d = 8, float32, with a few exact duplicates) and new points."""
    folder = tmp_path_factory.mktemp("fit_data")
    X, y = make_blobs(3000, 8, seed=0)
    X[100:110] = X[0]  # duplicates: zero distances, ties broken by index
    np.save(folder / "X.npy", X)
    np.save(folder / "y.npy", y)
    Q = np.concatenate([make_blobs(200, 8, seed=0)[0] + 0.5, X[:50] + 20.0])
    return folder, X, y, Q


@pytest.mark.parametrize("schedule", ["auto", "chunks"])
def test_loop_model_equals_the_in_memory_fit_and_scores_new_points_alike(data, tmp_path,
                                                                          schedule):
    folder, X, _, Q = data
    messages = []
    summary = fit_file(LoOP(n_neighbors=10, extent=2.0), folder / "X.npy",
                       tmp_path / "loop.fzsl", chunk_size=700, schedule=schedule,
                       progress=False, log=messages.append)
    assert summary["n_chunks"] == 5 and summary["chunks_searched_now"] == 5
    assert summary["knn"]["method"] == "exact"
    assert any(m.startswith("kNN: exact") for m in messages), messages  # it says which
    assert not _parts(tmp_path / "loop.fzsl").exists()  # the work folder is gone
    model = fastzsl.load(tmp_path / "loop.fzsl")
    expected = LoOP(n_neighbors=10, extent=2.0).fit(X)
    assert_same_loop(model, expected, Q)
    np.testing.assert_array_equal(model.predict(Q), expected.predict(Q))


def test_a_folder_of_mixed_shards_fits_like_their_concatenation(data, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder, X, _, Q = data
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "a.npy", X[:1000])
    pq.write_table(pa.table({f"f{j}": X[1000:2200, j].astype(np.float64) for j in range(8)}),
                   shards / "b.parquet")
    np.save(shards / "c.npy", X[2200:])
    fit_file(LoOP(n_neighbors=7, knn="kdtree"), shards, tmp_path / "loop.fzsl",
             chunk_size=512, progress=False)
    model = fastzsl.load(tmp_path / "loop.fzsl")
    # float64, as np.concatenate makes it
    assert model.index_.reference.dtype == np.float64
    assert_same_loop(model, LoOP(n_neighbors=7, knn="kdtree").fit(X.astype(np.float64)), Q)


def test_chunk_lists_are_the_in_memory_graph_bit_for_bit(data, tmp_path):
    from fastzsl.fitting import LoopJob, search_chunk

    folder, X, _, _ = data
    job = LoopJob(job_id="test", folder=str(tmp_path), reference=str(folder / "X.npy"),
                  n_rows=len(X), width=8, dtype=X.dtype.str, k=9, method="exact",
                  backend="cython" if "cython" in fastzsl.available_backends() else "numpy",
                  nprobe=None, n_jobs=None)
    D, I = fastzsl.knn(X, X, 9, exclude_self=True, backend=job.backend)
    for index, (start, stop) in enumerate([(0, 1), (1, 1300), (1300, 3000)]):
        assert search_chunk(job, index, start, stop) == stop - start
        lists = np.load(job.lists_path(index))
        np.testing.assert_array_equal(lists["D"], D[start:stop])
        np.testing.assert_array_equal(lists["I"], I[start:stop])


def test_gaussian_equals_the_in_memory_fit_with_labels_from_parquet_shards(data, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder, X, y, Q = data
    features, labels = tmp_path / "features", tmp_path / "labels"
    features.mkdir()
    labels.mkdir()
    names = np.array([f"class{c}" for c in y])
    for i, (a, b) in enumerate([(0, 1800), (1800, 3000)]):
        np.save(features / f"part{i}.npy", X[a:b] + 1000.0)  # a large mean: no cancellation
        pq.write_table(pa.table({"label": names[a:b]}), labels / f"part{i}.parquet")
    for rule in ("paper", "mixture"):
        model_path = tmp_path / f"{rule}.fzsl"
        fit_file(GaussianNovelty(rule=rule), features, model_path, labels=labels,
                 chunk_size=500, progress=False)
        model = fastzsl.load(model_path)
        expected = GaussianNovelty(rule=rule).fit(X + 1000.0, names)
        assert model.classes_.tolist() == expected.classes_.tolist()
        np.testing.assert_allclose(model.means_, expected.means_, **TOL)
        np.testing.assert_allclose(model.variances_, expected.variances_, **TOL)
        np.testing.assert_array_equal(model.priors_, expected.priors_)
        scores = model._train_scores if rule == "mixture" else np.concatenate(
            model._train_scores)
        expected_scores = expected._train_scores if rule == "mixture" else np.concatenate(
            expected._train_scores)
        np.testing.assert_allclose(scores, expected_scores, **TOL)
        np.testing.assert_array_equal(model.predict(Q + 1000.0), expected.predict(Q + 1000.0))


def test_gaussian_labels_from_a_column_of_the_parquet_input(data, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    _, X, y, Q = data
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, (a, b) in enumerate([(0, 1000), (1000, 3000)]):
        columns = {f"f{j}": X[a:b, j] for j in range(8)}
        pq.write_table(pa.table({**columns, "species": y[a:b]}), shards / f"{i}.parquet")
    fit_file(GaussianNovelty(), shards, tmp_path / "g.fzsl", labels="species", chunk_size=700,
             progress=False)
    model, expected = fastzsl.load(tmp_path / "g.fzsl"), GaussianNovelty().fit(X, y)
    np.testing.assert_allclose(model.means_, expected.means_, **TOL)
    np.testing.assert_allclose(model.variances_, expected.variances_, **TOL)
    np.testing.assert_array_equal(model.predict(Q), expected.predict(Q))
    with pytest.raises(BatchError, match="has no such column"):
        fit_file(GaussianNovelty(), shards, tmp_path / "h.fzsl", labels="genus", progress=False)


# ------------------------------------------------------------------ killed and resumed
def _fit_command(inputs, model, *extra):
    return [sys.executable, "-m", "fastzsl", "fit", str(inputs), str(model), "--quiet",
            *extra]


@pytest.fixture(scope="module")
def slow_fit(tmp_path_factory):
    """A fit of 50 chunks that takes a few seconds, so a kill lands in the middle of it."""
    folder = tmp_path_factory.mktemp("slow_fit")
    X, _ = make_blobs(15000, 32, seed=5)
    np.save(folder / "X.npy", X)
    command = _fit_command(folder / "X.npy", folder / "clean.fzsl", "--chunk-size", "300",
                           "--schedule", "chunks")
    subprocess.run(command, check=True, capture_output=True)
    return folder, X


# The chunk schedule in chunks of 300 rows (50 lists files); the self-join in chunks of 1,500
# (10 chunks, 55 chunk pairs, each saved as it is done).
@pytest.mark.parametrize("schedule, chunk", [("chunks", 300), ("self-join", 1500)])
def test_sigkilled_fit_resumes_to_the_same_model_file_byte_for_byte(slow_fit, tmp_path,
                                                                      schedule, chunk):
    if schedule == "self-join" and "cython" not in fastzsl.available_backends():
        pytest.skip("the self-join schedule runs the cython kernels' self-join")
    folder, X = slow_fit
    n_chunks = len(X) // chunk
    model = tmp_path / "killed.fzsl"
    parts = _parts(model)
    command = _fit_command(folder / "X.npy", model, "--chunk-size", str(chunk), "--schedule",
                           schedule)
    rng = random.Random(2026)
    killed = 0
    for target in sorted(rng.sample(range(1, n_chunks * 9 // 10), 2)):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if parts.exists() and len(_lists(parts)) >= target:
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if process.returncode == -signal.SIGKILL and not model.exists():
            killed += 1
            assert json.loads((parts / LOCK).read_text())["pid"] == process.pid
    assert killed >= 1, "the fit finished before any kill: the test proved nothing"
    # Every lists file left is whole, and is the in-memory graph's rows.
    D, I = fastzsl.knn(X, X, 20, exclude_self=True)
    for name in _lists(parts):
        index = int(name[len("lists-"):-len(".npy")])
        lists = np.load(parts / name)
        np.testing.assert_array_equal(lists["D"], D[index * chunk:(index + 1) * chunk])
        np.testing.assert_array_equal(lists["I"], I[index * chunk:(index + 1) * chunk])
    assert len(_lists(parts)) < n_chunks
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not parts.exists()
    assert filecmp.cmp(folder / "clean.fzsl", model, shallow=False)


class _Stop(Exception):
    pass


@pytest.mark.skipif("cython" not in fastzsl.available_backends(),
                    reason="the self-join schedule runs the cython kernels' self-join")
@pytest.mark.parametrize("stop_after", ["join-", "self-join"])
def test_a_stopped_self_join_goes_on_from_its_saved_lists_to_the_same_model(
        data, tmp_path, monkeypatch, stop_after):
    """Stopped three times (right after writing one of a pair's lists files, before the pair
    is counted; or right after a count), each rerun goes on from the last pair counted, and
    the last one writes the model file of the chunk schedule, byte for byte. A rerun whose
    saved lists are missing starts the join over, to the same model."""
    import fastzsl.fitting._loop as fitting  # the self-join's module

    folder, X, _, _ = data
    estimator = LoOP(n_neighbors=10, backend="cython")
    clean = tmp_path / "clean.fzsl"
    fit_file(estimator, folder / "X.npy", clean, chunk_size=700, schedule="chunks",
             progress=False)
    real_write = fitting.write_atomically

    def stop_at_write(number):
        """write_atomically that raises _Stop after its number-th write of a file whose name
        starts with stop_after."""
        seen = []

        def write(path, what):
            real_write(path, what)
            if Path(path).name.startswith(stop_after):
                seen.append(path)
                if len(seen) == number:
                    raise _Stop
        return write

    model = tmp_path / "joined.fzsl"
    parts = _parts(model)
    counts = []
    for number in (2, 4, 3):  # 5 chunks of 700 rows: 15 chunk pairs
        monkeypatch.setattr(fitting, "write_atomically", stop_at_write(number))
        messages = []
        with pytest.raises(_Stop):
            fit_file(estimator, folder / "X.npy", model, chunk_size=700, progress=False,
                     log=messages.append)
        assert not model.exists()
        counts.append(json.loads((parts / fitting.SELF_JOIN_STATE).read_text())["pairs_done"])
        if len(counts) > 1:
            assert any(f"resuming the self-join after {counts[-2]} of 15 chunk pairs" in m
                       for m in messages), messages
    assert counts == sorted(counts) and counts[0] >= 1
    monkeypatch.setattr(fitting, "write_atomically", real_write)
    fit_file(estimator, folder / "X.npy", model, chunk_size=700, progress=False)
    assert not parts.exists()
    assert filecmp.cmp(clean, model, shallow=False)

    # Saved lists gone missing: the join starts over and still writes the same model.
    model.unlink()
    monkeypatch.setattr(fitting, "write_atomically", stop_at_write(4))
    with pytest.raises(_Stop):
        fit_file(estimator, folder / "X.npy", model, chunk_size=700, progress=False)
    monkeypatch.setattr(fitting, "write_atomically", real_write)
    for path in parts.glob("join-*.npy"):
        path.unlink()
    messages = []
    fit_file(estimator, folder / "X.npy", model, chunk_size=700, progress=False,
             log=messages.append)
    assert any("starting it over" in m for m in messages), messages
    assert filecmp.cmp(clean, model, shallow=False)


def test_the_self_join_schedule_is_refused_where_it_cannot_run(data, tmp_path):
    folder = data[0]
    with pytest.raises(ValueError, match="schedule must be one of"):
        fit_file(LoOP(), folder / "X.npy", tmp_path / "m.fzsl", schedule="pairs")
    with pytest.raises(BatchError, match="schedule=.self-join. needs one process"):
        fit_file(LoOP(knn="kdtree"), folder / "X.npy", tmp_path / "m.fzsl",
                 schedule="self-join", progress=False)
    assert not _parts(tmp_path / "m.fzsl").exists()  # refused before any work


# ------------------------------------------------------------------ one job per model
def test_a_second_job_on_the_same_model_is_refused_naming_the_first(data, tmp_path):
    folder, _, _, _ = data
    model = tmp_path / "loop.fzsl"
    _parts(model).mkdir()
    with output_lock(_parts(model)):
        with pytest.raises(BatchError, match=f"another fastzsl job \\(pid {os.getpid()} "):
            fit_file(LoOP(n_neighbors=5), folder / "X.npy", model, progress=False)
    assert not model.exists()


def test_an_existing_model_or_another_jobs_work_folder_is_refused(data, tmp_path):
    folder, _, _, _ = data
    model = tmp_path / "loop.fzsl"
    fit_file(LoOP(n_neighbors=5), folder / "X.npy", model, progress=False)
    before = model.read_bytes()
    with pytest.raises(BatchError, match="exists; delete it"):
        fit_file(LoOP(n_neighbors=5), folder / "X.npy", model, progress=False)
    assert model.read_bytes() == before
    # an unfinished job of other parameters keeps its folder untouched
    other = tmp_path / "other.fzsl"
    with pytest.raises(KeyboardInterrupt):
        fit_file(LoOP(n_neighbors=5), folder / "X.npy", other, chunk_size=1000,
                 progress=False, log=_interrupt_on("kNN:"))
    listing = sorted(p.name for p in _parts(other).iterdir())
    with pytest.raises(BatchError, match="different job .*params"):
        fit_file(LoOP(n_neighbors=6), folder / "X.npy", other, progress=False)
    assert sorted(p.name for p in _parts(other).iterdir()) == listing


def _interrupt_on(prefix):
    def log(message):
        if message.startswith(prefix):
            raise KeyboardInterrupt
    return log


# ------------------------------------------------------------------ bad input
def _bad_widths(folder, X):
    np.save(folder / "a.npy", X[:100])
    np.save(folder / "b.npy", X[100:200, :5])
    return folder, None, "b.npy has 5 columns but .*a.npy has 8"


def _nan_rows(folder, X):
    bad = X[:300].copy()
    bad[[17, 250], 3] = np.nan
    np.save(folder / "a.npy", X[:100])
    np.save(folder / "b.npy", bad)
    return folder, None, r"b.npy has rows with NaN or infinity: 2 \(rows 17, 250\)"


def _short_labels(folder, X):
    np.save(folder / "a.npy", X[:100])
    np.save(folder.parent / "labels.npy", np.zeros(99, dtype=int))
    return folder, folder.parent / "labels.npy", "labels .*has 99 rows but the input .*has 100"


@pytest.mark.parametrize("make_input", [_bad_widths, _nan_rows, _short_labels])
@pytest.mark.parametrize("detector", ["loop", "gaussian"])
def test_bad_input_is_refused_naming_file_and_rows_before_any_work(data, tmp_path, make_input,
                                                                 detector):
    _, X, _, _ = data
    (tmp_path / "in").mkdir()
    inputs, labels, message = make_input(tmp_path / "in", X)
    if detector == "loop":
        if labels is not None:
            pytest.skip("LoOP takes no labels")
        estimator = LoOP(n_neighbors=5)
    else:
        estimator = GaussianNovelty()
        if labels is None:
            labels = tmp_path / "labels.npy"
            np.save(labels, np.arange(400) % 3)
    model = tmp_path / "model.fzsl"
    with pytest.raises(BatchError, match=message):
        fit_file(estimator, inputs, model, labels=labels, chunk_size=64, progress=False)
    assert not model.exists() and not _parts(model).exists()


def test_bad_arguments_are_named(data, tmp_path):
    folder, _, _, _ = data
    with pytest.raises(TypeError, match="LoOP or a GaussianNovelty"):
        fit_file(object(), folder / "X.npy", tmp_path / "m.fzsl")
    with pytest.raises(ValueError, match="needs labels"):
        fit_file(GaussianNovelty(), folder / "X.npy", tmp_path / "m.fzsl")
    with pytest.raises(ValueError, match="labels apply to GaussianNovelty"):
        fit_file(LoOP(), folder / "X.npy", tmp_path / "m.fzsl", labels=folder / "y.npy")
    with pytest.raises(ValueError, match="chunk_size"):
        fit_file(LoOP(), folder / "X.npy", tmp_path / "m.fzsl", chunk_size=0)
    with pytest.raises(ValueError, match="n_neighbors=3000 is larger than the data"):
        fit_file(LoOP(n_neighbors=3000), folder / "X.npy", tmp_path / "m.fzsl")
    with pytest.raises(BatchError, match="does not exist"):
        fit_file(LoOP(), tmp_path / "missing.npy", tmp_path / "m.fzsl")
    with pytest.raises(BatchError, match="folder .* of the model file does not exist"):
        fit_file(LoOP(), folder / "X.npy", tmp_path / "no" / "m.fzsl")


def test_cli_fit_writes_the_model_and_reports_errors(data, tmp_path, capsys):
    from fastzsl.cli import main

    folder, X, y, Q = data
    assert main(["fit", str(folder / "X.npy"), str(tmp_path / "g.fzsl"), "--detector",
                 "gaussian", "--labels", str(folder / "y.npy"), "--quiet"]) == 0
    assert "GaussianNovelty fitted on 3000 rows" in capsys.readouterr().out
    np.testing.assert_array_equal(fastzsl.load(tmp_path / "g.fzsl").predict(Q),
                                  GaussianNovelty().fit(X, y).predict(Q))
    assert main(["fit", str(folder / "X.npy"), str(tmp_path / "l.fzsl"), "--n-neighbors",
                 "8", "--extent", "2", "--chunk-size", "1000"]) == 0
    captured = capsys.readouterr()
    assert "kNN: exact" in captured.err and "LoOP fitted on 3000 rows in 3 chunks" in captured.out
    assert_same_loop(fastzsl.load(tmp_path / "l.fzsl"), LoOP(n_neighbors=8, extent=2).fit(X), Q)
    assert main(["fit", str(folder / "X.npy"), str(tmp_path / "l.fzsl"), "--quiet"]) == 2
    assert "exists; delete it" in capsys.readouterr().err


# ------------------------------------------------------------------ approximate kNN
def test_ivf_chunked_fit_equals_the_in_memory_ivf_fit_and_says_so(tmp_path):
    pytest.importorskip("faiss")
    from fastzsl.neighbors import SEARCH_CHUNK

    X, _ = make_blobs(2 * SEARCH_CHUNK + 700, 8, seed=4)
    np.save(tmp_path / "X.npy", X)
    messages = []
    estimator = LoOP(n_neighbors=10, knn="ivf", knn_params={"nprobe": 12})
    # searched in the in-memory fit's batches: 100 rows round up to one batch of 8192
    summary = fit_file(estimator, tmp_path / "X.npy", tmp_path / "ivf.fzsl", chunk_size=100,
                       progress=False, log=messages.append)
    nlist = fastzsl.FaissIndex.default_nlist(len(X))
    assert summary["n_chunks"] == 3
    assert summary["knn"]["method"] == "ivf" and summary["knn"]["nprobe"] == 12
    assert summary["knn"]["nlist"] == nlist
    assert any(m.startswith(f"kNN: approximate, faiss IVF (nlist={nlist}, nprobe=12)")
               for m in messages), messages
    expected = LoOP(n_neighbors=10, knn="ivf", knn_params={"nprobe": 12}).fit(X)
    assert_same_loop(fastzsl.load(tmp_path / "ivf.fzsl"), expected, X[:300] + 0.5)


# ------------------------------------------------------------------ Dask
def test_dask_local_cluster_writes_the_same_model_file_and_loads_once_per_worker(data,
                                                                                tmp_path):
    distributed = pytest.importorskip("distributed")
    from fastzsl.fitting import searcher_builds

    folder, _, _, _ = data
    fit_file(LoOP(n_neighbors=10), folder / "X.npy", tmp_path / "single.fzsl",
             chunk_size=400, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        summary = fit_file(LoOP(n_neighbors=10), folder / "X.npy", tmp_path / "dask.fzsl",
                           chunk_size=400, scheduler=cluster.scheduler_address,
                           progress=False)
        builds = client.run(searcher_builds)
    assert summary["n_chunks"] == 8  # more tasks than workers
    assert all(n <= 1 for n in builds.values()) and sum(builds.values()) >= 1, builds
    assert filecmp.cmp(tmp_path / "single.fzsl", tmp_path / "dask.fzsl", shallow=False)


def test_dask_tasks_are_parts_of_chunks_and_a_stopped_fit_keeps_its_parts(data, tmp_path,
                                                                          monkeypatch):
    """Tasks of DASK_TASK_ROWS rows (here 150: 3 per chunk of 400, the last of 100), each
    writing its part's lists; the driver joins them into the chunks' lists files. Stopped
    after joining one chunk, the rerun submits no task for the parts written and writes the
    one-process model file, byte for byte."""
    distributed = pytest.importorskip("distributed")
    import fastzsl.fitting._loop as fitting

    folder, _, _, _ = data
    fit_file(LoOP(n_neighbors=10), folder / "X.npy", tmp_path / "single.fzsl",
             chunk_size=400, progress=False)
    monkeypatch.setattr(fitting, "DASK_TASK_ROWS", 150)
    real_write = fitting._write_lists
    joined = []

    def stop_after_one_join(job, path, n_rows, blocks):
        if Path(path).name.startswith("lists-") and joined:
            raise _Stop
        real_write(job, path, n_rows, blocks)
        joined.append(path)

    monkeypatch.setattr(fitting, "_write_lists", stop_after_one_join)
    model = tmp_path / "dask.fzsl"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with pytest.raises(_Stop):
            fit_file(LoOP(n_neighbors=10), folder / "X.npy", model, chunk_size=400,
                     scheduler=cluster.scheduler_address, progress=False)
        assert _lists(_parts(model)) == ["lists-000000.npy"]
        parts = sorted(p.name for p in _parts(model).glob("part-*.npy"))
        # 3,000 rows: chunks 1-6 of 400 rows (3 parts each), chunk 7 of 200 (2 parts)
        assert len(parts) == 6 * 3 + 2 and parts[0] == "part-000001-000000.npy"
        monkeypatch.setattr(fitting, "_write_lists", real_write)
        messages = []
        fit_file(LoOP(n_neighbors=10), folder / "X.npy", model, chunk_size=400,
                 scheduler=cluster.scheduler_address, progress=False, log=messages.append)
    assert any("resuming: 20 of 20 Dask tasks already done" in m for m in messages), messages
    assert filecmp.cmp(tmp_path / "single.fzsl", model, shallow=False)


def test_cupy_backend_workers_run_the_same_tasks(tmp_path):
    """The plumbing of GPU workers (backend="cupy"): here the CUDA kernels run on the CPU
    (tests/cuda_host) in a thread-based LocalCluster, which shares this process's stand-in
    CuPy; on GPU machines the same code runs on the device."""
    from fastzsl.backends import cupy as cupy_backend

    ok, reason = cupy_backend.is_available()
    if not ok:
        pytest.skip(f"backend 'cupy' unavailable: {reason}")
    distributed = pytest.importorskip("distributed")
    X, _ = make_blobs(400, 4, seed=3, dtype=np.float64)
    np.save(tmp_path / "X.npy", X)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        summary = fit_file(LoOP(n_neighbors=6, backend="cupy"), tmp_path / "X.npy",
                           tmp_path / "gpu.fzsl", chunk_size=150,
                           scheduler=cluster.scheduler_address, progress=False)
    assert summary["knn"]["backend"] == "cupy"
    model = fastzsl.load(tmp_path / "gpu.fzsl")
    expected = LoOP(n_neighbors=6, backend="numpy").fit(X)
    for name in ("pdist", "plof", "probabilities"):
        np.testing.assert_allclose(to_numpy(getattr(model.fit_, name)),
                                   getattr(expected.fit_, name), **TOL)


def to_numpy(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)
