"""Crash-safe writes (fastzsl._files), as used by model files and batch-scoring chunks."""
import os

import numpy as np
import pytest

import fastzsl
from fastzsl import _files


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(_files.TMP_PREFIX)]


def test_write_is_flushed_to_disk_then_renamed(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(_files.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    target = tmp_path / "out.bin"
    _files.write_atomically(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    assert len(synced) == 2, "the file and its folder are both flushed"
    assert not _leftovers(tmp_path)


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def write(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        _files.write_atomically(target, write)
    assert target.read_bytes() == b"old"
    assert not _leftovers(tmp_path)


def test_failed_model_save_keeps_the_saved_model(tmp_path, monkeypatch, rng):
    X = rng.normal(size=(200, 4))
    path = tmp_path / "loop.fzsl"
    first = fastzsl.LoOP(n_neighbors=5, backend="numpy").fit(X)
    first.save(path)
    before = path.read_bytes()

    def broken_write_array(*args, **kwargs):
        raise KeyboardInterrupt  # an interrupt in the middle of writing the arrays

    monkeypatch.setattr(np.lib.format, "write_array", broken_write_array)
    with pytest.raises(KeyboardInterrupt):
        fastzsl.LoOP(n_neighbors=7, backend="numpy").fit(X).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and not _leftovers(tmp_path)
    restored = fastzsl.load(path)
    np.testing.assert_array_equal(restored.probabilities_, first.probabilities_)
