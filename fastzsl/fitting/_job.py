"""A fit's job: its constants, its work folder and the claim on it (one job per model
file, locked as score's output folders are)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .._files import TMP_PREFIX, BatchError, write_atomically
from .._locks import LOCK, output_lock

FORMAT = "fastzsl-fit"
FORMAT_VERSION = 1
PARTS_SUFFIX = ".parts"
MANIFEST = "_manifest.json"


def _parts_folder(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + PARTS_SUFFIX)


@dataclasses.dataclass(frozen=True)
class _Workspace:
    """The work folder of one job, claimed under its lock."""

    folder: Path
    resumed: bool


def _claim(model_path: Path, identity: dict, wait, log):
    """Create (or find) the job's work folder and hold its lock: a context manager giving a
    ``_Workspace``. A model file with no unfinished job behind it is never overwritten."""
    import contextlib

    folder = _parts_folder(model_path)
    if model_path.exists() and not (folder / MANIFEST).exists():
        raise BatchError(f"{model_path} exists; delete it (or name another file) to fit anew")

    @contextlib.contextmanager
    def claimed():
        folder.mkdir(exist_ok=True)
        with output_lock(folder, wait=wait, log=log):
            manifest_path = folder / MANIFEST
            if manifest_path.exists():
                try:
                    old = json.loads(manifest_path.read_text())
                except (OSError, json.JSONDecodeError) as exc:
                    raise BatchError(f"{manifest_path} is unreadable ({exc}); delete "
                                     f"{folder} to fit anew") from None
                diff = sorted(k for k in set(old) | set(identity)
                              if old.get(k) != identity.get(k))
                if diff:
                    raise BatchError(
                        f"{folder} holds an unfinished fit of a different job (it differs in: "
                        f"{', '.join(diff)}); nothing was changed: rerun that job's command, or "
                        f"delete {folder} to fit this one")
                resumed = True
            elif model_path.exists():  # the job we waited for wrote it
                raise BatchError(f"{model_path} exists; delete it (or name another file) to "
                                 "fit anew")
            elif any(p.name != LOCK for p in folder.iterdir()):
                raise BatchError(f"work folder {folder} holds files of no fastzsl fit; delete "
                                 "it or name another model file")
            else:
                write_atomically(manifest_path,
                                 lambda f: f.write(json.dumps(identity, indent=1).encode()))
                resumed = False
            for stale in folder.glob(f"{TMP_PREFIX}*"):
                stale.unlink()
            yield _Workspace(folder, resumed)
            # The model file is written: the folder's work is done. The manifest goes last,
            # so a job killed in between still finds its (finished) job here.
            for path in folder.iterdir():
                if path.name not in (LOCK, MANIFEST):
                    path.unlink()
            (folder / MANIFEST).unlink()
        try:
            folder.rmdir()
        except OSError:  # another job is waiting on its lock, or it is already gone
            pass

    return claimed()
