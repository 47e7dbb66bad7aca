"""Batch scoring: chunked, resumable (tested with SIGKILL), on Dask, with clear errors."""
import errno
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
from fastzsl.batch import LOCK, BatchError, output_lock, read_scores, score_file
from fastzsl.testing import make_blobs

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _chunk_files(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("chunk-"))


def assert_same_outputs(a, b):
    """Two job folders hold the same chunk files, byte for byte."""
    names = _chunk_files(a)
    assert names and names == _chunk_files(b)
    mismatch = [n for n in names if not filecmp.cmp(Path(a) / n, Path(b) / n, shallow=False)]
    assert not mismatch, f"files differ: {mismatch}"


@pytest.fixture(scope="module")
def loop_job(tmp_path_factory):
    """A saved LoOP detector and 5,000 query rows (half near the reference, half not)."""
    folder = tmp_path_factory.mktemp("loop_job")
    X, _ = make_blobs(3000, 8, seed=0)
    near, _ = make_blobs(2500, 8, seed=0)
    far = near + 25.0
    Q = np.concatenate([near, far])
    model = LoOP(n_neighbors=10).fit(X)
    model.save(folder / "loop.fzsl")
    np.save(folder / "queries.npy", Q)
    return folder, model, Q


def test_loop_scores_equal_the_in_memory_model(loop_job, tmp_path):
    folder, model, Q = loop_job
    manifest = score_file(folder / "loop.fzsl", folder / "queries.npy", tmp_path / "out",
                          chunk_size=700, progress=False)
    assert manifest["complete"] and manifest["n_chunks"] == 8 and manifest["n_rows"] == len(Q)
    scores = read_scores(tmp_path / "out")
    expected = fastzsl.load(folder / "loop.fzsl").outlier_probability(Q)
    np.testing.assert_array_equal(scores["row"], np.arange(len(Q)))
    np.testing.assert_array_equal(scores["p_unseen"], expected)
    np.testing.assert_array_equal(scores["is_novel"], model.predict(Q) == -1)
    # the test data means something: the shifted half is novel, the other half mostly not
    assert scores["is_novel"][2500:].all() and scores["is_novel"][:2500].mean() < 0.2


def test_gaussian_detector_and_parquet_input_and_output(tmp_path):
    X, y = make_blobs(2000, 6, seed=3)
    Q, _ = make_blobs(1500, 6, seed=4)
    model = GaussianNovelty().fit(X, y)
    model.save(tmp_path / "g.fzsl")
    # Parquet input: one float column per feature, several row groups
    pq.write_table(pa.table({f"f{i}": Q[:, i] for i in range(6)}), tmp_path / "q.parquet",
                   row_group_size=400)
    score_file(tmp_path / "g.fzsl", tmp_path / "q.parquet", tmp_path / "out", chunk_size=300,
               output_format="parquet", progress=False)
    # a Parquet folder any Parquet reader takes
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == len(Q)
    scores = read_scores(tmp_path / "out")
    expected = model.outlier_probability(Q)
    np.testing.assert_array_equal(scores["p_unseen"], expected)
    np.testing.assert_array_equal(scores["is_novel"], model.predict(Q) == -1)


def test_folder_of_mixed_shards_keeps_global_row_order(loop_job, tmp_path):
    folder, model, Q = loop_job
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "part-0.npy", Q[:1300])
    # a fixed-size-list column of float64 rows
    flat = pa.array(Q[1300:3100].astype(np.float64).ravel())
    pq.write_table(pa.table({"features": pa.FixedSizeListArray.from_arrays(flat, 8)}),
                   shards / "part-1.parquet", row_group_size=500)
    np.save(shards / "part-2.npy", Q[3100:].astype(np.float64))
    manifest = score_file(folder / "loop.fzsl", shards, tmp_path / "out", chunk_size=1000,
                          progress=False)
    # chunks never cross shards: 2 + 2 + 2
    assert manifest["n_chunks"] == 6
    scores = read_scores(tmp_path / "out")
    np.testing.assert_array_equal(scores["row"], np.arange(len(Q)))
    expected = np.concatenate([model.outlier_probability(Q[:1300]),
                               model.outlier_probability(Q[1300:3100].astype(np.float64)),
                               model.outlier_probability(Q[3100:].astype(np.float64))])
    np.testing.assert_allclose(scores["p_unseen"], expected, rtol=0, atol=0)


@pytest.fixture(scope="module")
def zeroshot_job(tmp_path_factory):
    pytest.importorskip("torch")
    from test_zeroshot import FAST, UNSEEN, _world, default_gate

    from fastzsl import ZeroShotClassifier

    folder = tmp_path_factory.mktemp("zsl_job")
    vectors, X, y, X_test, _ = _world()
    model = ZeroShotClassifier(vectors, UNSEEN, novelty=default_gate(rounds=2), **FAST).fit(X, y)
    model.save(folder / "model.fzsl")
    np.save(folder / "features.npy", X_test)
    return folder, model, X_test


@pytest.mark.parametrize("output_format", ["npy", "parquet"])
def test_zeroshot_scores_with_probability_rows(zeroshot_job, tmp_path, output_format):
    folder, model, X = zeroshot_job
    score_file(folder / "model.fzsl", folder / "features.npy", tmp_path / "out", chunk_size=97,
               output_format=output_format, with_proba=True, progress=False)
    scores = read_scores(tmp_path / "out")
    # The model on the same 97-row chunks: the same shapes through the same code, so the
    # same bits. (Other chunk sizes may round the float32 GEMMs of the mapping and the
    # softmax differently, as the BLAS blocks another shape otherwise.)
    chunks = [X[start:start + 97] for start in range(0, len(X), 97)]
    parts = [model.predict_proba_with_novelty(chunk) for chunk in chunks]
    proba = np.concatenate([part[0] for part in parts])
    p_unseen = np.concatenate([part[1] for part in parts])
    predicted = np.concatenate([model.predict(chunk) for chunk in chunks])
    np.testing.assert_array_equal(scores["predicted_class"].astype(str), predicted)
    np.testing.assert_array_equal(scores["p_unseen"], p_unseen)
    column = [model.classes_.tolist().index(c) for c in predicted]
    np.testing.assert_array_equal(scores["top_probability"], proba[np.arange(len(X)), column])
    if output_format == "npy":
        np.testing.assert_array_equal(scores["proba"], proba)
    else:
        for j, name in enumerate(model.classes_):
            np.testing.assert_array_equal(scores[f"proba_{name}"], proba[:, j])


def _score_command(model, inputs, output, *extra):
    return [sys.executable, "-m", "fastzsl", "score", str(model), str(inputs), str(output),
            "--quiet", *extra]


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory):
    """A job of 60 chunks that takes a few seconds, so a kill lands in the middle of it."""
    folder = tmp_path_factory.mktemp("slow_job")
    X, _ = make_blobs(20000, 32, seed=5)
    Q, _ = make_blobs(60 * 1500, 32, seed=6)
    LoOP(n_neighbors=20).fit(X).save(folder / "loop.fzsl")
    np.save(folder / "queries.npy", Q)
    command = _score_command(folder / "loop.fzsl", folder / "queries.npy", folder / "clean",
                             "--chunk-size", "1500")
    subprocess.run(command, check=True, capture_output=True)
    return folder


def _start_and_await_chunks(command, output, n_chunks):
    """Start the job; return its process once ``n_chunks`` result files exist (or it ended)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if output.exists() and len(_chunk_files(output)) >= n_chunks:
            break
        time.sleep(0.002)
    return process


def _kill_after_chunks(command, output, n_chunks, rng):
    """Start the job and SIGKILL it once ``n_chunks`` result files exist (plus a random delay)."""
    process = _start_and_await_chunks(command, output, n_chunks)
    time.sleep(rng.uniform(0, 0.05))
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process


def test_sigkilled_job_resumes_to_identical_output(slow_job, tmp_path):
    rng = random.Random(2026)
    output = tmp_path / "killed"
    command = _score_command(slow_job / "loop.fzsl", slow_job / "queries.npy", output,
                             "--chunk-size", "1500")
    killed = 0
    for target in sorted(rng.sample(range(3, 55), 3)):
        process = _kill_after_chunks(command, output, target, rng)
        if process.returncode == -signal.SIGKILL:
            manifest = json.loads((output / "_manifest.json").read_text())
            if not manifest["complete"]:
                killed += 1
                # the killed job's lock stays behind, naming it; the next run takes it over
                assert json.loads((output / LOCK).read_text())["pid"] == process.pid
            # every file present is a whole chunk: never a half-written one
            for name in _chunk_files(output):
                assert np.load(output / name).shape == (1500,)
    assert killed >= 1, "the job finished before any kill: the test proved nothing"
    assert len(_chunk_files(output)) < 60
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not [p for p in output.iterdir() if p.name.startswith(".tmp-")]
    assert not (output / LOCK).exists()
    assert_same_outputs(slow_job / "clean", output)
    assert read_scores(output)["row"].tolist() == list(range(60 * 1500))


def test_a_second_job_on_a_busy_folder_is_refused_or_waits_and_no_chunk_is_scored_twice(
        slow_job, tmp_path):
    output = tmp_path / "out"
    command = _score_command(slow_job / "loop.fzsl", slow_job / "queries.npy", output,
                             "--chunk-size", "1500")
    first = _start_and_await_chunks(command, output, 2)
    # Frozen in the middle of its work, the first job keeps the folder for as long as needed.
    first.send_signal(signal.SIGSTOP)
    try:
        assert first.poll() is None, "the first job ended before the test could stop it"
        lock = json.loads((output / LOCK).read_text())
        assert lock["pid"] == first.pid and "score" in lock["command"]
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"being scored by another fastzsl job (pid {first.pid} on host " \
               f"{lock['host']}" in second.stderr, second.stderr
        waiting = subprocess.Popen(command + ["--wait"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert waiting.poll() is None, waiting.communicate()
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    assert "(0 chunks scored now" in out, out  # it found every chunk done by the first job
    assert not (output / LOCK).exists()
    assert_same_outputs(slow_job / "clean", output)


def test_the_lock_names_the_job_and_refuses_one_from_another_host(loop_job, tmp_path):
    folder, _, _ = loop_job
    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out) as me:
        assert me["pid"] == os.getpid()
        with pytest.raises(BatchError, match=f"another fastzsl job \\(pid {os.getpid()} "):
            score_file(folder / "loop.fzsl", folder / "queries.npy", out, progress=False)
    assert [p.name for p in out.iterdir()] == []
    # a lock that a job on another host left: it may still run there, so it is not taken
    (out / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere.example",
                                        "started": "?", "command": "fastzsl score ..."}))
    with pytest.raises(BatchError, match="a job on another host .*elsewhere.example"):
        score_file(folder / "loop.fzsl", folder / "queries.npy", out, progress=False)
    assert [p.name for p in out.iterdir()] == [LOCK]
    (out / LOCK).unlink()
    assert score_file(folder / "loop.fzsl", folder / "queries.npy", out, progress=False)["complete"]


def test_dask_local_cluster_is_bit_identical_and_loads_the_model_once_per_worker(
        loop_job, tmp_path):
    distributed = pytest.importorskip("distributed")
    from fastzsl.batch import worker_model_loads

    folder, _, _ = loop_job
    score_file(folder / "loop.fzsl", folder / "queries.npy", tmp_path / "single",
               chunk_size=400, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        manifest = score_file(folder / "loop.fzsl", folder / "queries.npy", tmp_path / "dask",
                              chunk_size=400, scheduler=cluster.scheduler_address,
                              progress=False)
        loads = client.run(worker_model_loads)
    assert manifest["n_chunks"] == 13  # more tasks than workers
    assert sorted(loads.values()) == [1, 1], loads
    assert_same_outputs(tmp_path / "single", tmp_path / "dask")
    assert not (tmp_path / "dask" / LOCK).exists()  # held and released by the driver


def test_dask_zeroshot_model_is_bit_identical(zeroshot_job, tmp_path):
    pytest.importorskip("distributed")
    folder, _, _ = zeroshot_job
    kwargs = dict(chunk_size=60, with_proba=True, progress=False)
    score_file(folder / "model.fzsl", folder / "features.npy", tmp_path / "single", **kwargs)
    score_file(folder / "model.fzsl", folder / "features.npy", tmp_path / "dask",
               scheduler="local", n_workers=2, **kwargs)
    assert_same_outputs(tmp_path / "single", tmp_path / "dask")


# ------------------------------------------------------------------ bad input, nothing lost
def test_nan_rows_name_the_shard_and_rows_and_keep_finished_chunks(loop_job, tmp_path):
    folder, _, Q = loop_job
    shards = tmp_path / "shards"
    shards.mkdir()
    bad = Q[2000:].copy()
    bad[1234, 3] = np.nan
    np.save(shards / "a.npy", Q[:2000])
    np.save(shards / "b.npy", bad)
    with pytest.raises(BatchError, match=r"b\.npy rows 1000\.\.1999 has 1 rows with NaN"):
        score_file(folder / "loop.fzsl", shards, tmp_path / "out", chunk_size=1000,
                   progress=False)
    finished = _chunk_files(tmp_path / "out")
    assert finished == ["chunk-000000.npy", "chunk-000001.npy", "chunk-000002.npy"]
    before = {n: (tmp_path / "out" / n).read_bytes() for n in finished}
    # fix the row in place and rerun the same job: it resumes and keeps what was written
    bad[1234, 3] = 0.0
    np.save(shards / "b.npy", bad)
    manifest = score_file(folder / "loop.fzsl", shards, tmp_path / "out", chunk_size=1000,
                          progress=False)
    assert manifest["chunks_scored_now"] == 2
    assert all((tmp_path / "out" / n).read_bytes() == b for n, b in before.items())
    assert len(read_scores(tmp_path / "out")["row"]) == len(Q)


def test_full_disk_keeps_finished_chunks_and_resumes(loop_job, tmp_path, monkeypatch):
    import fastzsl.batch._tasks as batch

    folder, _, _ = loop_job
    write = batch._write_npy
    calls = []

    def fail_on_third(f, columns, table):
        calls.append(1)
        if len(calls) == 3:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        write(f, columns, table)

    monkeypatch.setattr(batch, "_write_npy", fail_on_third)
    with pytest.raises(BatchError, match=r"queries\.npy rows 1400\.\.2099 .*disk is full.*rerun"):
        score_file(folder / "loop.fzsl", folder / "queries.npy", tmp_path / "out",
                   chunk_size=700, progress=False)
    assert _chunk_files(tmp_path / "out") == ["chunk-000000.npy", "chunk-000001.npy"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")]
    monkeypatch.setattr(batch, "_write_npy", write)
    score_file(folder / "loop.fzsl", folder / "queries.npy", tmp_path / "out", chunk_size=700,
               progress=False)
    score_file(folder / "loop.fzsl", folder / "queries.npy", tmp_path / "clean", chunk_size=700,
               progress=False)
    assert_same_outputs(tmp_path / "clean", tmp_path / "out")


@pytest.mark.parametrize("make_shard, message", [
    (lambda p: np.save(p, np.zeros((10, 7), np.float32)), r"bad\.npy has 7 columns but .*a\.npy has 8"),
    (lambda p: np.save(p, np.zeros((10, 8), np.int64)), r"bad\.npy has dtype int64"),
    (lambda p: np.save(p, np.zeros((10, 8, 1), np.float32)), r"bad\.npy has shape \(10, 8, 1\)"),
    (lambda p: p.write_bytes(b"not a numpy file"), r"cannot read input shard .*bad\.npy"),
    (lambda p: p.write_bytes(_npy_bytes(np.zeros((10, 8), np.float32))[:-40]),
     r"bad\.npy is truncated"),
])
def test_bad_shards_are_refused_by_name_before_any_work(loop_job, tmp_path, make_shard, message):
    folder, _, Q = loop_job
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "a.npy", Q[:100])
    make_shard(shards / "bad.npy")
    with pytest.raises(BatchError, match=message):
        score_file(folder / "loop.fzsl", shards, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _npy_bytes(array):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_an_output_folder_of_another_job_is_refused_untouched(loop_job, tmp_path):
    folder, _, _ = loop_job
    out = tmp_path / "out"
    score_file(folder / "loop.fzsl", folder / "queries.npy", out, chunk_size=1000, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(BatchError, match="different job .*chunk_size"):
        score_file(folder / "loop.fzsl", folder / "queries.npy", out, chunk_size=999,
                   progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(BatchError, match="not empty"):
        score_file(folder / "loop.fzsl", folder / "queries.npy", other, progress=False)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_missing_inputs_and_bad_options_are_named(loop_job, tmp_path):
    folder, _, _ = loop_job
    with pytest.raises(BatchError, match="does not exist"):
        score_file(folder / "loop.fzsl", tmp_path / "nowhere.npy", tmp_path / "o", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchError, match="holds no .npy or .parquet"):
        score_file(folder / "loop.fzsl", tmp_path / "empty", tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        score_file(folder / "loop.fzsl", folder / "queries.npy", tmp_path / "o", chunk_size=0)
    with pytest.raises(ValueError, match="with_proba applies to a ZeroShotClassifier"):
        score_file(folder / "loop.fzsl", folder / "queries.npy", tmp_path / "o",
                   with_proba=True)
    np.save(tmp_path / "narrow.npy", np.zeros((5, 7), np.float32))
    with pytest.raises(BatchError, match=r"narrow\.npy has 7 columns but the model expects 8"):
        score_file(folder / "loop.fzsl", tmp_path / "narrow.npy", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="no model file"):
        score_file(tmp_path / "none.fzsl", folder / "queries.npy", tmp_path / "o")
    with pytest.raises(BatchError, match=r"narrow\.npy is a file; name a folder"):
        score_file(folder / "loop.fzsl", folder / "queries.npy", tmp_path / "narrow.npy")


def test_unfinished_job_is_not_read_as_results(loop_job, tmp_path, monkeypatch):
    import fastzsl.batch._job as batch

    folder, _, _ = loop_job

    def interrupted(model, spec, chunk):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "_run_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        score_file(folder / "loop.fzsl", folder / "queries.npy", tmp_path / "out",
                   progress=False)
    with pytest.raises(BatchError, match="not finished: rerun"):
        read_scores(tmp_path / "out")


def test_cli_score_runs_and_reports_errors(loop_job, tmp_path, capsys):
    from fastzsl.cli import main

    folder, _, Q = loop_job
    assert main(["score", str(folder / "loop.fzsl"), str(folder / "queries.npy"),
                 str(tmp_path / "out"), "--chunk-size", "2000", "--format", "parquet",
                 "--quiet"]) == 0
    assert f"{len(Q)} rows in 3 chunks" in capsys.readouterr().out
    assert main(["score", str(folder / "loop.fzsl"), str(tmp_path / "missing.npy"),
                 str(tmp_path / "out2"), "--quiet"]) == 2
    assert "missing.npy does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--help"])
    assert exit_info.value.code == 0
    assert "rerun the same command" in capsys.readouterr().out


def test_backend_override_scores_with_that_backend(loop_job, tmp_path):
    folder, model, Q = loop_job
    score_file(folder / "loop.fzsl", folder / "queries.npy", tmp_path / "out", backend="numpy",
               progress=False)
    reference = fastzsl.LoOP(n_neighbors=10, backend="numpy").fit(model.index_.reference)
    np.testing.assert_allclose(read_scores(tmp_path / "out")["p_unseen"],
                               reference.outlier_probability(Q), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="bogus"):
        score_file(folder / "loop.fzsl", folder / "queries.npy", tmp_path / "out2",
                   backend="bogus", progress=False)
    assert not (tmp_path / "out2").exists()
