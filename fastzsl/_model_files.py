"""The model-file format and the one save protocol every fastzsl estimator follows.

A model file is a zip archive of JSON metadata and raw arrays.

Nothing is ever unpickled: arrays are read with ``allow_pickle=False`` and every array's
SHA-256 is checked against the metadata, so a corrupt, truncated or tampered file is
refused with a ValueError that says which part is wrong. Writes go to a temporary file
that replaces the target only when complete and on disk (``fastzsl._files``), so an
interrupted save, or a power loss after it returns, loses nothing.

Every saveable estimator derives from :class:`SaveMixin` and provides ``_export() ->
(metadata, arrays)`` and a classmethod ``_restore(metadata, arrays)``; ``fastzsl.load``
(:mod:`fastzsl.persistence`) finds the class from the metadata's ``estimator`` name.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from ._files import write_atomically
from ._version import __version__

FORMAT = "fastzsl-model"
FORMAT_VERSION = 1
_METADATA = "metadata.json"


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()  # no copy


# Every entry's timestamp: a model file's bytes depend on its contents only.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _entry(name: str, size: int) -> tuple:
    """(ZipInfo, force_zip64) of an archive entry of about ``size`` bytes."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    return info, size + 4096 > zipfile.ZIP64_LIMIT


def save_archive(path, metadata: dict, arrays: dict) -> None:
    """Write ``metadata`` (JSON-serialisable) and named NumPy arrays to ``path``."""
    path = Path(path)
    manifest = {}
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.kind == "O":
            raise TypeError(f"array {name!r} has dtype object; model files hold plain arrays only")
        manifest[name] = {"sha256": _digest(array), "shape": list(array.shape),
                          "dtype": array.dtype.str}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata": metadata,
              "arrays": manifest}

    def write(raw):
        with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(_entry(_METADATA, 0)[0], json.dumps(header, indent=1, sort_keys=True))
            for name, array in arrays.items():
                array = np.asarray(array)
                info, zip64 = _entry(f"arrays/{name}.npy", array.nbytes)
                # Streamed into the entry: no in-memory copy of a large array.
                with zf.open(info, "w", force_zip64=zip64) as f:
                    np.lib.format.write_array(f, array, allow_pickle=False)

    write_atomically(path, write)


_ZIP_MAGIC = b"PK\x03\x04"  # a zip's first local file header: every model file starts so


def _starts_like_a_zip(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    except OSError:
        return False


def load_archive(path):
    """Read and verify a model file: returns ``(metadata, arrays)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if _METADATA not in names:
                raise ValueError(f"{path} is not a fastzsl model file (no {_METADATA})")
            try:
                header = json.loads(zf.read(_METADATA))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: {_METADATA} is not valid JSON ({exc})") from None
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ValueError(f"{path} is not a fastzsl model file (format "
                                 f"{header.get('format') if isinstance(header, dict) else None!r})")
            version = header.get("format_version")
            if version != FORMAT_VERSION:
                raise ValueError(f"{path} has model format version {version}; this fastzsl "
                                 f"reads version {FORMAT_VERSION}")
            manifest = header.get("arrays", {})
            stored = {n[len("arrays/"):-len(".npy")] for n in names if n.startswith("arrays/")}
            if stored != set(manifest):
                raise ValueError(
                    f"{path}: arrays in the file {sorted(stored)} do not match the metadata "
                    f"{sorted(manifest)}")
            arrays = {}
            for name, info in manifest.items():
                with zf.open(f"arrays/{name}.npy") as f:
                    array = np.lib.format.read_array(io.BytesIO(f.read()), allow_pickle=False)
                if _digest(array) != info["sha256"] or list(array.shape) != info["shape"] \
                        or array.dtype.str != info["dtype"]:
                    raise ValueError(
                        f"{path}: array {name!r} does not match its checksum: the file is "
                        "corrupt or was modified")
                arrays[name] = array
    except zipfile.BadZipFile as exc:
        if _starts_like_a_zip(path):  # a model file cut short or damaged
            raise ValueError(f"{path} is corrupt or truncated ({exc})") from None
        raise ValueError(f"{path} is not a fastzsl model file (not a zip archive)") from None
    except (zipfile.LargeZipFile, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path} could not be read as a model file ({exc})") from None
    return header["metadata"], arrays


def save_estimator(path, estimator: str, metadata: dict, arrays: dict) -> None:
    """Write an estimator's ``_export()`` (or the same parts made without the estimator
    object) as the model file ``fastzsl.load`` reads back into class ``estimator``."""
    save_archive(path, {"estimator": estimator, "fastzsl_version": __version__, **metadata},
                 arrays)


class SaveMixin:
    """``save(path)`` for an estimator with ``_export()`` and a classmethod ``_restore``."""

    def save(self, path):
        """Write the fitted estimator to ``path``; read it back with :func:`fastzsl.load`."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        save_estimator(path, type(self).__name__, *self._export())

    def _export(self):  # pragma: no cover - every subclass provides it
        raise NotImplementedError

    @classmethod
    def _restore(cls, metadata, arrays):  # pragma: no cover - every subclass provides it
        raise NotImplementedError


def pack_parts(parts: dict):
    """Nest estimators' exports in one file: ``{name: (meta, arrays)}`` -> ``(meta, arrays)``
    with ``meta[name]`` and the arrays named ``"<name>.<array>"``."""
    meta, arrays = {}, {}
    for name, (part_meta, part_arrays) in parts.items():
        meta[name] = part_meta
        arrays.update({f"{name}.{key}": value for key, value in part_arrays.items()})
    return meta, arrays


def unpack_part(meta: dict, arrays: dict, name: str):
    """The ``(meta, arrays)`` of one part packed by :func:`pack_parts`."""
    prefix = name + "."
    return meta[name], {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
