"""Crash-safe file replacement, shared by model files and batch-scoring chunks.

Readers see the old contents or the new, never a half-written file, and the new file
survives a power loss once ``write_atomically`` returns: write to a temporary name in the
same folder, flush it to disk, rename it over the target, flush the folder entry.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

class BatchError(RuntimeError):
    """A file job (batch scoring, a fit from files) stopped on bad input or a failed write;
    finished chunks are kept."""


# Temporary files start with this; a job that resumes may delete its own leftovers by it.
TMP_PREFIX = ".tmp-"


def write_atomically(path, write) -> None:
    """Call ``write(binary_file)`` on a temporary file, then move it to ``path`` durably.

    On any error (or interrupt) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(path) -> None:
    """Flush a folder's entries (the rename) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
