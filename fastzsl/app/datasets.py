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


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


def _read_cifar_batch(path):
    """One ``cifar-10-batches-py`` batch: (images uint8 (n, 32, 32, 3), labels int64).

    The batches are Python pickles of dicts of NumPy arrays and lists; they are read with a
    restricted unpickler that admits only NumPy's array reconstruction, so a tampered file
    cannot run code.
    """
    import pickle

    allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    class _PlainData(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in allowed:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(
                f"{path} asks to load {module}.{name}; a CIFAR batch holds only plain data")

    try:
        with open(path, "rb") as f:
            batch = _PlainData(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable CIFAR-10 batch ({exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 batch (no b'data' / b'labels' entries)")
    data = batch[b"data"]
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(data, dtype=np.uint8)
    data = np.asarray(data, dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.size != labels.size * 3072:
        raise ValueError(f"{path}: {data.size} bytes of image data for {labels.size} labels "
                         "(expected 3072 per image)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(data_dir):
    """CIFAR-10 from the standard ``cifar-10-batches-py`` folder a user supplies.

    Returns ``(X_train, y_train, X_test, y_test, class_names)`` with images uint8 of shape
    (n, 32, 32, 3). The data set does not install offline; download it from its authors.
    """
    data_dir = Path(data_dir)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (data_dir / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found in {data_dir} (missing {', '.join(missing)}): pass the "
            "folder 'cifar-10-batches-py' of the python version of CIFAR-10")
    train = [_read_cifar_batch(data_dir / n) for n in names[:5]]
    X_test, y_test = _read_cifar_batch(data_dir / "test_batch")
    X_train = np.concatenate([b[0] for b in train])
    y_train = np.concatenate([b[1] for b in train])
    return X_train, y_train, X_test, y_test, list(CIFAR10_CLASSES)


DATASETS = ("fashion-mnist", "cifar10")
# The unseen classes of each data set's main setting (fastzsl train, reproduce, novelty).
DEFAULT_UNSEEN = {"fashion-mnist": ("sandal", "pullover"), "cifar10": ("cat", "truck")}


def load_dataset(name, data_dir=None):
    """``(X_train, y_train, X_test, y_test, class_names)`` of a data set by name.

    Parameters
    ----------
    name : {"fashion-mnist", "cifar10"}
    data_dir : path, optional
        Fashion-MNIST: the IDX folder (default: the Debian package's). CIFAR-10: the
        ``cifar-10-batches-py`` folder (required).
    """
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if name == "cifar10":
        if data_dir is None:
            raise FileNotFoundError(
                "CIFAR-10 does not install offline: pass --data-dir, the folder "
                "'cifar-10-batches-py' of the python version of CIFAR-10")
        return load_cifar10(data_dir)
    raise ValueError(f"unknown data set {name!r}; choose one of {DATASETS}")


def zero_shot_split(y_train, unseen_ids, *, val_fraction=0.05, random_state=0):
    """The paper's split of the training images: 95/5 train/validation per class.

    For every seen class a random ``val_fraction`` of its training images goes to
    validation and the rest trains (CIFAR-10: 4750 / 250 of the 5000 per class); the same
    fraction of each unseen class's training images (CIFAR-10: 250) joins the validation
    set, and the remaining unseen-class images are not used at all. The test set is the
    whole test split.

    Parameters
    ----------
    y_train : array-like of int, shape (n,)
    unseen_ids : list of int
        Labels of the unseen classes.
    val_fraction : float, default=0.05
    random_state : int, default=0

    Returns
    -------
    train_idx, val_idx : ndarray of int64
        Sorted row indices into the training images.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    y_train = np.asarray(y_train)
    rng = np.random.default_rng(random_state)
    train, val = [], []
    for label in np.unique(y_train):
        rows = rng.permutation(np.flatnonzero(y_train == label))
        n_val = int(round(val_fraction * rows.size))
        val.append(rows[:n_val])
        if label not in unseen_ids:
            train.append(rows[n_val:])
    if not train:
        raise ValueError("every class is unseen: at least one class needs training images")
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def per_class_subset(rows, y, max_per_class, random_state=0):
    """At most ``max_per_class`` random rows of each label (all rows when None)."""
    rows = np.asarray(rows)
    if max_per_class is None:
        return rows
    rng = np.random.default_rng(random_state)
    keep = [rng.permutation(rows[y[rows] == label])[:max_per_class]
            for label in np.unique(y[rows])]
    return np.sort(np.concatenate(keep))
