"""One job per output folder: a lock file that names its job and carries an ``flock``.

Batch scoring and fits from files hold it while they write into a folder, so two jobs never
score (or search) the same chunks.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from ._files import BatchError

# Held by the job working in the folder (its pid, host and command; an flock).
LOCK = "_job.lock"


def _lock_holder(path) -> dict:
    """Who the lock file at ``path`` names ({} when empty or unreadable)."""
    try:
        holder = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a job that is just starting"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
            f"{holder.get('started')}: {holder.get('command')}")


def _same_file(fd, path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _lock_fd(path: Path, wait: bool, log):
    """Open ``path`` and take its exclusive flock; refuse (or wait) while another job has it."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(path)
                for _ in range(20):  # the holder writes its name right after locking
                    if holder:
                        break
                    time.sleep(0.05)
                    holder = _lock_holder(path)
                if not wait:
                    raise BatchError(
                        f"{path.parent} is being scored by another fastzsl job "
                        f"({_describe(holder)}); two jobs would score the same chunks: let it "
                        "finish (then rerun this command: it finds the chunks done) or stop it "
                        "and rerun this command to continue its work") from None
                log(f"waiting for the job scoring {path.parent} to finish "
                    f"({_describe(holder)})")
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise BatchError(f"cannot lock {path}: {exc}; the output folder's file system "
                                 "does not support file locks: choose a folder on one that "
                                 "does") from None
            # The job before us removes the file as it ends: lock the one now at ``path``.
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def output_lock(output, *, wait=False, log=None):
    """Hold ``OUTPUT/_job.lock`` while a job works in ``output``: one job per folder.

    The file names the job (pid, host, start time, command) and carries an exclusive
    ``flock``. Another job on the folder is refused with an error that names this one, or
    with ``wait=True`` waits for it. A lock left by a killed job is released by the kernel
    with the process and taken over. A lock naming a job on another host that the file
    system's locks did not keep out (its locks may not reach across hosts) is refused: that
    job may be running. The file is removed when the job ends.
    """
    log = log or (lambda message: None)
    output = Path(output)
    path = output / LOCK
    host = socket.gethostname()
    fd = _lock_fd(path, wait, log)
    try:
        previous = _lock_holder(path)
        if previous and previous.get("host") != host:
            raise BatchError(
                f"{path} names a job on another host ({_describe(previous)}) which may still "
                f"be running; if it is not, delete {path} and rerun this command")
        if previous:
            log(f"taking over the lock of a job that no longer runs ({_describe(previous)})")
        me = {"pid": os.getpid(), "host": host,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": shlex.join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        try:
            yield me
        finally:
            if _same_file(fd, path):
                os.unlink(path)
    finally:
        os.close(fd)
