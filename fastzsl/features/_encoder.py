"""Steps 5-6 of the features (encode, rectify, pool) on batches of images, and the running
feature statistics that standardisation (step 7) is fitted with."""
from __future__ import annotations

import threading

import numpy as np

from .patches import _grid, _windows, normalize_patches


class _Encoder:
    """Encodes and pools batches of (n, H, W, C) images; per-thread reusable buffers."""

    def __init__(self, mean_patch, whiten, centroids, *, patch_size, stride, alpha, dtype,
                 image_hwc):
        self.p = patch_size
        self.stride = stride
        self.alpha = float(alpha)
        self.dtype = np.dtype(dtype)
        m = np.asarray(mean_patch, dtype=np.float64)
        w = np.asarray(whiten, dtype=np.float64)
        dct = np.asarray(centroids, dtype=np.float64)
        self.k, self.d = dct.shape
        # z = (x - m) W D^T = [x, 1] @ [[W D^T], [-m W D^T]]
        wd = w @ dct.T
        self.E = np.vstack([wd, -(m @ wd)[None, :]]).astype(self.dtype)
        h, w_, c = image_hwc
        self.rows, self.cols = _grid(h, w_, patch_size, stride)
        self.n_pos = self.rows * self.cols
        hr, hc = (self.rows + 1) // 2, (self.cols + 1) // 2
        self.quads = [(slice(0, hr), slice(0, hc)), (slice(0, hr), slice(hc, None)),
                      (slice(hr, None), slice(0, hc)), (slice(hr, None), slice(hc, None))]
        sizes = [hr * hc, hr * (self.cols - hc), (self.rows - hr) * hc,
                 (self.rows - hr) * (self.cols - hc)]
        self.offsets = (np.asarray(sizes, dtype=self.dtype) * self.dtype.type(self.alpha))
        self.n_out = 8 * self.k
        self._local = threading.local()

    def bytes_per_image(self):
        return self.dtype.itemsize * self.n_pos * (self.d + 1 + 2 * self.k)

    def _buffers(self, n_images):
        loc = self._local
        if getattr(loc, "capacity", 0) < n_images:
            loc.capacity = n_images
            loc.xa = np.empty((n_images, self.rows, self.cols, self.d + 1), self.dtype)
            loc.xa[..., self.d] = 1
            loc.z = np.empty((n_images * self.n_pos, self.k), self.dtype)
            loc.buf = np.empty((n_images * self.n_pos, self.k), self.dtype)
        m = n_images * self.n_pos
        return loc.xa[:n_images], loc.z[:m], loc.buf[:m]

    def encode(self, images4, out):
        """Pooled, unstandardised features of ``images4`` written into ``out`` (B, 8K)."""
        b = images4.shape[0]
        view = _windows(images4, self.p, self.stride)  # (B, R, C, ch, p, p)
        xa, z, buf = self._buffers(b)
        xv = xa[..., :self.d]
        dst = xv.reshape(view.shape)
        assert np.may_share_memory(dst, xa)
        np.copyto(dst, view, casting="unsafe")
        normalize_patches(xv, out=xv)
        np.matmul(xa.reshape(b * self.n_pos, self.d + 1), self.E, out=z)
        o = out.reshape(b, 4, 2, self.k)
        grid = (b, self.rows, self.cols, self.k)
        np.maximum(z, self.alpha, out=buf)
        bg = buf.reshape(grid)
        for q, (rs, cs) in enumerate(self.quads):
            np.sum(bg[:, rs, cs], axis=(1, 2), out=o[:, q, 0])
        np.minimum(z, -self.alpha, out=buf)
        for q, (rs, cs) in enumerate(self.quads):
            np.sum(bg[:, rs, cs], axis=(1, 2), out=o[:, q, 1])
        # sum max(0, z - a) = sum max(z, a) - n a ; sum max(0, -z - a) = -sum min(z, -a) - n a
        o[:, :, 1] *= -1
        o -= self.offsets[None, :, None, None]
        return out


def _batch_stats(f):
    """Row count, mean and sum of squared deviations (float64) of a feature block."""
    f64 = f.astype(np.float64)
    mean = f64.mean(axis=0)
    f64 -= mean
    return len(f), mean, np.einsum("ij,ij->j", f64, f64)


class _RunningStats:
    """Mean and variance of feature blocks merged in order (Chan et al.), float64."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, block_stats):
        n, mu, s2 = block_stats
        if self.mean is None:
            self.n, self.mean, self.m2 = n, mu.copy(), s2.copy()
            return
        delta = mu - self.mean
        total = self.n + n
        self.mean += delta * (n / total)
        self.m2 += s2 + delta ** 2 * (self.n * n / total)
        self.n = total

    def variance(self):
        return self.m2 / self.n
