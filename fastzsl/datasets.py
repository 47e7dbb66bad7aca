"""Data sets that install offline: Fashion-MNIST (Debian package ``dataset-fashion-mnist``).

The loaders read the standard files; a missing data set is an error that says how to
install it.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: header says shape {shape} ({expected} bytes of "
            f"data) but the file holds {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def load_fashion_mnist(data_dir=None):
    """Fashion-MNIST as ``(X_train, y_train, X_test, y_test, class_names)``.

    Images are uint8 arrays of shape (n, 28, 28); labels int64 in 0..9.

    Parameters
    ----------
    data_dir : path, optional
        Folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``. Default: the
        ``FASTZSL_FASHION_MNIST`` environment variable, else the Debian package's folder.
    """
    data_dir = Path(data_dir or os.environ.get("FASTZSL_FASHION_MNIST", FASHION_MNIST_DIR))
    files = {
        split: (data_dir / f"{split}-images-idx3-ubyte.gz", data_dir / f"{split}-labels-idx1-ubyte.gz")
        for split in ("train", "t10k")
    }
    missing = [str(p) for pair in files.values() for p in pair if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found (missing {', '.join(missing)}). Install it with: "
            "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist "
            "(or set FASTZSL_FASHION_MNIST to a folder holding the four IDX files)")
    out = []
    for split in ("train", "t10k"):
        images, labels = (read_idx(p) for p in files[split])
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
        out += [images, labels.astype(np.int64)]
    return (*out, list(FASHION_MNIST_CLASSES))
