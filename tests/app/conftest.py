import gzip

import numpy as np
import pytest


def write_idx(path, array):
    """``array`` as a gzip-compressed IDX file (the MNIST format)."""
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = array.astype(array.dtype.newbyteorder(">")).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + data)


@pytest.fixture
def tiny_fashion(tmp_path):
    """A Fashion-MNIST-shaped folder: 10 classes, blobs of structured 28x28 images."""
    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, 256, size=(10, 28, 28))
    for split, n in (("train", 400), ("t10k", 120)):
        labels = np.arange(n) % 10
        noise = rng.normal(scale=20, size=(n, 28, 28))
        images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return tmp_path
