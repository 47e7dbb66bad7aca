r"""Single-layer k-means image features (Coates, Lee & Ng, AISTATS 2011; Coates & Ng,
ICML 2011), the image features of Socher et al. (NIPS 2013).

Pipeline (SPEC section 1), for patches of ``p x p x channels`` pixels:

1. **Patches**: every ``p x p`` window at stride ``stride`` (dense, stride 1 by default):
   ``R x C`` positions with ``R = (H - p) // stride + 1`` (27 x 27 on 32 x 32 images, 23 x 23
   on 28 x 28). A patch is flattened in ``(channel, row, column)`` order, ``d = channels p^2``.
2. **Contrast normalisation** of each patch: :math:`(x - \bar x) / \sqrt{\mathrm{var}(x) + 10}`
   (``var`` with ``ddof=0``, as ``np.var``; Coates' MATLAB code divides by ``d - 1``).
3. **ZCA whitening** fitted on the sampled training patches:
   :math:`W = U \operatorname{diag}(1/\sqrt{S + 0.1})\, U^\top` from the eigendecomposition
   :math:`U S U^\top` of their covariance (``np.cov``, ``ddof=1``); applied as ``(x - m) W``.
4. **Dictionary**: spherical k-means (gain-shape VQ) on the whitened sample, see
   :func:`spherical_kmeans`.
5. **Encoder**: :math:`z = D p` (centroids as rows of ``D``, ``p`` the whitened patch), then
   ``[max(0, z - alpha), max(0, -z - alpha)]``: ``2K`` channels per position.
6. **Pooling**: sums over the four quadrants of the ``R x C`` grid of positions (rows
   ``[0, ceil(R/2))`` / ``[ceil(R/2), R)``, columns likewise, MATLAB's ``round(R/2)``) in the
   order top-left, top-right, bottom-left, bottom-right. Feature ``j`` of the output is
   quadrant ``j // 2K``, sign ``(j % 2K) // K`` (0: positive part, 1: negative part),
   centroid ``j % K``; ``4 * 2K`` features (12,800 for K = 1600).
7. **Standardisation**: per feature :math:`(f - \mu) / \sqrt{\sigma^2 + 0.01}` with the mean
   and (``ddof=0``) variance of the training features.

**Pixel scale.** The ``+10`` of step 2 assumes pixel values in ``[0, 255]``. Images are used as
given, without rescaling, so uint8 images and the same images as floats give the same
features. Float images in ``[0, 1]`` must be multiplied by 255 first: on that scale the
``+10`` dominates the variance, contrast normalisation degrades to mean subtraction and the
features lose most of their contrast invariance; :meth:`CoatesNgFeatures.fit` warns when
float training images all lie in ``[0, 1]``.

**Implementation.** Patches of a batch of images are a strided view
(``sliding_window_view``), copied once into a float matrix with a trailing column of ones.
Whitening, the mean patch and the centroids fold into one ``(d + 1) x K`` matrix, so
``z`` of all positions is one float GEMM (NumPy/OpenBLAS). The two rectified parts are pooled
without forming them: ``sum max(0, z - a) = sum max(z, a) - n a`` and
``sum max(0, -z - a) = -sum min(z, -a) - n a``. Batches run on a thread pool (NumPy releases
the GIL; BLAS is limited to one thread per worker meanwhile), each worker reusing its own
buffers, sized by a memory budget (:data:`MEMORY_BUDGET_BYTES`). torch CPU was measured for
the same pipeline (2 cores, K = 400) and was not clearly faster (within +-20%, either way
depending on the batch size), so it is not used.

Any feature matrix (from here or elsewhere) is a plain ``(n, n_features)`` float array; the
rest of the library does not depend on this module.
"""
from __future__ import annotations

import numbers
import threading
import warnings

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._array import to_host
from ._model_files import SaveMixin
from ._threads import imap_ordered, resolve_n_jobs, worker_count

__all__ = [
    "CoatesNgFeatures",
    "extract_patches",
    "normalize_patches",
    "sample_patches",
    "zca_whitening",
    "spherical_kmeans",
    "MEMORY_BUDGET_BYTES",
]

CONTRAST_EPS = 10.0  # added to each patch's variance (pixel values in [0, 255])
ZCA_EPS = 0.1  # added to the eigenvalues of the patch covariance
STANDARDIZE_EPS = 0.01  # added to each feature's variance
#: Working memory of all encoding workers together (the output matrix not counted).
MEMORY_BUDGET_BYTES = 1 << 30
#: Working memory one worker aims at per batch: the encodings of a batch should mostly
#: stay in cache between the GEMM and the pooling passes (measured on 2 cores, K = 400:
#: 4 Fashion-MNIST images per batch 10-20% faster than 17, 64 or 1).
TARGET_BATCH_BYTES = 8 << 20
#: Scores (points x centroids) of one k-means GEMM: small enough to stay in cache.
KMEANS_GEMM_BYTES = 4 << 20
# Images checked for NaN/inf at a time (bounds the temporary of the check).
_FINITE_CHECK_IMAGES = 4096


# --------------------------------------------------------------------------- input


def _check_images(images, name="images"):
    """Validate an image stack; return it as an (n, H, W, C) view and one image's shape."""
    images = to_host(images)
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)
    kind = images.dtype.kind
    if kind not in "uif":
        raise TypeError(
            f"{name} has dtype {images.dtype}; expected uint8 (or another integer type) or "
            "float pixel values on the [0, 255] scale")
    if images.ndim not in (3, 4):
        hint = ""
        if images.ndim == 2:
            hint = ("; for one image pass images[None]; flattened images must be reshaped to "
                    "(n, H, W) first")
        raise ValueError(
            f"{name} must be a stack of images of shape (n, H, W) (grayscale) or (n, H, W, C) "
            f"(C channels, e.g. RGB); got a {images.ndim}-D array of shape {images.shape}{hint}")
    image_shape = images.shape[1:]
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty: 0 images (shape={images.shape})")
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[3] == 0:
        raise ValueError(f"{name} has 0 channels (shape={image_shape})")
    if kind == "f":
        for start in range(0, images.shape[0], _FINITE_CHECK_IMAGES):
            chunk = images[start:start + _FINITE_CHECK_IMAGES]
            ok = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
            if not ok.all():
                i = start + int(np.argmin(ok))
                raise ValueError(f"{name} contains NaN or infinity (image {i})")
    return images, tuple(image_shape)


def _grid(height, width, patch_size, stride):
    rows = (height - patch_size) // stride + 1
    cols = (width - patch_size) // stride + 1
    return rows, cols


def _check_fits(image_shape, patch_size, name="images"):
    if image_shape[0] < patch_size or image_shape[1] < patch_size:
        raise ValueError(
            f"{name} of size {image_shape[0]}x{image_shape[1]} (image shape {image_shape}) "
            f"are smaller than the {patch_size}x{patch_size} patch")


def _windows(images4, patch_size, stride):
    """(n, R, C, channels, p, p) strided view of all patches of (n, H, W, channels) images."""
    view = sliding_window_view(images4, (patch_size, patch_size), axis=(1, 2))
    if stride != 1:
        view = view[:, ::stride, ::stride]
    return view


def extract_patches(images, patch_size=6, stride=1, dtype=np.float32):
    """All ``patch_size x patch_size`` patches of every image, flattened.

    Parameters
    ----------
    images : array-like of shape (n, H, W) or (n, H, W, C)
    patch_size : int, default=6
    stride : int, default=1
    dtype : dtype, default=np.float32

    Returns
    -------
    patches : ndarray of shape (n, R, C, d)
        ``R = (H - patch_size) // stride + 1`` (``C`` likewise) positions and
        ``d = channels * patch_size**2`` values in ``(channel, row, column)`` order. Not
        normalised (see :func:`normalize_patches`).
    """
    images4, image_shape = _check_images(images)
    _check_fits(image_shape, patch_size)
    view = _windows(images4, patch_size, stride)
    n, rows, cols = view.shape[:3]
    return view.reshape(n, rows, cols, -1).astype(dtype)


def normalize_patches(patches, out=None):
    r"""Per-patch contrast normalisation :math:`(x - \bar x) / \sqrt{\mathrm{var}(x) + 10}`.

    Parameters
    ----------
    patches : ndarray of shape (..., d)
        Float patches, pixel values on the [0, 255] scale.
    out : ndarray, optional
        Where to write (may be ``patches`` itself, for in-place normalisation).

    Returns
    -------
    ndarray of shape (..., d)
    """
    patches = np.asarray(patches)
    if out is None:
        out = np.array(patches, dtype=np.result_type(patches.dtype, np.float32))
    elif out is not patches:
        np.copyto(out, patches)
    d = out.shape[-1]
    out -= out.mean(axis=-1, keepdims=True)
    scale = np.einsum("...i,...i->...", out, out)[..., None]
    scale /= d
    scale += CONTRAST_EPS
    np.sqrt(scale, out=scale)
    out /= scale
    return out


def _rng(random_state):
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    return np.random.default_rng(random_state)


def sample_patches(images, n_patches, patch_size=6, stride=1, random_state=None,
                   dtype=np.float32):
    """Random patches: each from a random image at a random position (with replacement).

    Parameters
    ----------
    images : array-like of shape (n, H, W) or (n, H, W, C)
    n_patches : int
    patch_size : int, default=6
    stride : int, default=1
        Positions are those of the stride-``stride`` grid.
    random_state : int, numpy Generator or RandomState, optional
    dtype : dtype, default=np.float32

    Returns
    -------
    ndarray of shape (n_patches, d)
        Raw (not normalised) patches. Draws image indices, then rows, then columns.
    """
    images4, image_shape = _check_images(images)
    _check_fits(image_shape, patch_size)
    view = _windows(images4, patch_size, stride)
    n, rows, cols = view.shape[:3]
    rng = _rng(random_state)
    idx = rng.integers(0, n, n_patches)
    r = rng.integers(0, rows, n_patches)
    c = rng.integers(0, cols, n_patches)
    return view[idx, r, c].reshape(n_patches, -1).astype(dtype)


def zca_whitening(patches, eps=ZCA_EPS):
    r"""ZCA whitening of (normalised) patches.

    Parameters
    ----------
    patches : ndarray of shape (n, d)
    eps : float, default=0.1

    Returns
    -------
    mean : ndarray of shape (d,), float64
    W : ndarray of shape (d, d), float64
        :math:`U \operatorname{diag}(1/\sqrt{S + eps}) U^\top` for the covariance
        (``ddof=1``) :math:`U S U^\top` of the patches; whiten with ``(x - mean) @ W``.
        The whitened sample covariance is :math:`U \operatorname{diag}(S / (S + eps)) U^\top`.
    """
    x = np.asarray(patches, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a (n >= 2, d) matrix of patches, got shape {x.shape}")
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
    s, u = np.linalg.eigh(cov)
    s = np.clip(s, 0.0, None)  # round-off can make tiny eigenvalues negative
    w = (u / np.sqrt(s + eps)) @ u.T
    return mean, (w + w.T) / 2


def _progress(total, desc, progress, unit):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, leave=False)


# --------------------------------------------------------------------------- k-means


def _normalize_rows(a, rng):
    """Unit-norm rows; a zero row becomes a random normal direction."""
    norms = np.linalg.norm(a, axis=1)
    zero = norms == 0
    if zero.any():
        a[zero] = rng.standard_normal((int(zero.sum()), a.shape[1]))
        norms[zero] = np.linalg.norm(a[zero], axis=1)
    a /= norms[:, None]
    return a


def spherical_kmeans(X, n_centroids, n_iter=50, random_state=None, *, n_jobs=None,
                     progress=False, chunk_rows=32768):
    r"""Spherical k-means (gain-shape vector quantisation; Coates & Ng 2012).

    Each point is assigned to the centroid of largest :math:`|D_j^\top x|`, with gain
    :math:`s = D_j^\top x`; each centroid becomes the normalised gain-weighted sum
    :math:`\sum_i s_i x_i` of its points.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Points (whitened patches); float32 or float64 (the dtype of the GEMMs).
    n_centroids : int
    n_iter : int, default=50
    random_state : int, numpy Generator or RandomState, optional
    n_jobs : int, optional
        Threads (default: all CPUs this process may use).
    progress : bool, default=False
        tqdm bar over iterations.
    chunk_rows : int, default=32768
        Points per task of a worker thread (each scores them in cache-sized GEMMs of about
        4 MiB and returns its partial sums). Results do not depend on ``n_jobs``.

    Returns
    -------
    centroids : ndarray of shape (n_centroids, d), X's dtype, unit-norm rows.

    Notes
    -----
    *Initialisation*: ``n_centroids`` distinct random points (with repetition only when
    ``n < n_centroids``), normalised; a zero point is replaced by a random normal direction.
    *Empty clusters* (no point assigned, or a zero gain-weighted sum) are re-initialised at
    the end of the iteration to a fresh random point, normalised, drawn from the same seeded
    generator, so they compete again in the next iteration.
    """
    from scipy import sparse

    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    X = np.ascontiguousarray(X)
    n, d = X.shape
    k = int(n_centroids)
    rng = _rng(random_state)
    gemm_rows = max(64, KMEANS_GEMM_BYTES // (k * X.itemsize))
    n_workers = worker_count(n_jobs)
    starts = range(0, n, chunk_rows)

    init = rng.choice(n, size=k, replace=n < k)
    D = _normalize_rows(X[init].astype(np.float64), rng)

    def partial(start):
        x = X[start:start + chunk_rows]
        labels = np.empty(len(x), dtype=np.intp)
        gains = np.empty(len(x), dtype=np.float64)
        for s in range(0, len(x), gemm_rows):  # scores stay in cache for the argmax
            z = x[s:s + gemm_rows] @ Dt
            rows = np.arange(len(z))
            amax = z.argmax(axis=1)
            amin = z.argmin(axis=1)
            zmax = z[rows, amax]
            zmin = z[rows, amin]
            pos = zmax >= -zmin
            labels[s:s + gemm_rows] = np.where(pos, amax, amin)
            gains[s:s + gemm_rows] = np.where(pos, zmax, zmin)
        # gain-weighted sums per centroid: S^T x with S (rows, k) one gain per row
        assign = sparse.csr_matrix((gains, labels, np.arange(len(x) + 1)), shape=(len(x), k))
        return np.asarray(assign.T @ x, dtype=np.float64), np.bincount(labels, minlength=k)

    with _progress(n_iter, "spherical k-means", progress, "iter") as bar:
        for _ in range(n_iter):
            Dt = np.ascontiguousarray(D.T, dtype=X.dtype)
            D = np.zeros((k, d))
            counts = np.zeros(k, dtype=np.int64)
            for sums, cnt in imap_ordered(partial, starts, n_workers):
                D += sums
                counts += cnt
            norms = np.linalg.norm(D, axis=1)
            empty = (counts == 0) | (norms == 0)
            norms[empty] = 1.0
            D /= norms[:, None]
            if empty.any():
                D[empty] = _normalize_rows(
                    X[rng.integers(0, n, int(empty.sum()))].astype(np.float64), rng)
            bar.update(1)
    return D.astype(X.dtype)


# --------------------------------------------------------------------------- encoder


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


# --------------------------------------------------------------------------- estimator


class CoatesNgFeatures(SaveMixin, TransformerMixin, BaseEstimator):
    """Coates & Ng single-layer k-means features of images (see the module docstring).

    Parameters
    ----------
    n_centroids : int, default=1600
        Dictionary size K; the output has ``4 * 2 * K`` features.
    patch_size : int, default=6
        Patches are ``patch_size x patch_size x channels``.
    stride : int, default=1
        Step between patch positions (1: dense extraction).
    n_patches : int, default=400_000
        Random training patches for whitening and k-means; at most the number of
        (image, position) pairs of the training images.
    alpha : float, default=0.25
        Soft threshold of the encoder.
    kmeans_iter : int, default=50
        Spherical k-means iterations.
    batch_size : int, optional
        Images per batch (one task of a worker thread). Default: as many as fit in
        ``TARGET_BATCH_BYTES`` (8 MiB) of working memory per worker, and in
        ``MEMORY_BUDGET_BYTES`` (1 GiB) for all workers together (at least 1): 4 images of
        28 x 28 for K = 400, 1 for K = 1600. The results do not depend on it.
    dtype : {np.float32, np.float64}, default=np.float32
        Dtype of the computations and of the output.
    random_state : int, numpy Generator or RandomState, default=0
        Seeds patch sampling and the k-means initialisation / re-initialisation.
    progress : bool, default=True
        tqdm progress bars (k-means iterations, image batches).
    n_jobs : int, optional
        Worker threads (default: all CPUs this process may use).

    Attributes
    ----------
    mean_patch_ : ndarray of shape (d,)
        Mean of the contrast-normalised training patches (``d = channels * patch_size**2``).
    whiten_ : ndarray of shape (d, d)
        ZCA matrix; whitened patch = ``(x - mean_patch_) @ whiten_``.
    centroids_ : ndarray of shape (n_centroids, d)
        Unit-norm dictionary (rows), in whitened patch space.
    feature_mean_ : ndarray of shape (n_features_out_,)
    feature_scale_ : ndarray of shape (n_features_out_,)
        ``sqrt(var + 0.01)`` of the training features.
    n_features_out_ : int
        ``8 * n_centroids``.
    image_shape_ : tuple
        Shape of one training image, ``(H, W)`` or ``(H, W, C)``; transform requires it.
    n_patches_ : int
        Number of patches used for whitening and k-means.

    Notes
    -----
    Pixel values are taken on the [0, 255] scale as given (no rescaling); see the module
    docstring for float images in [0, 1]. Memory: the working memory is bounded by
    ``MEMORY_BUDGET_BYTES`` plus the random patch sample (``n_patches x d``); one image's
    ``positions x K`` encodings must fit. The output matrix is the caller's
    (``n x 8K`` in ``dtype``); :meth:`fit` alone does not keep it.
    """

    def __init__(self, *, n_centroids=1600, patch_size=6, stride=1, n_patches=400_000,
                 alpha=0.25, kmeans_iter=50, batch_size=None, dtype=np.float32,
                 random_state=0, progress=True, n_jobs=None):
        self.n_centroids = n_centroids
        self.patch_size = patch_size
        self.stride = stride
        self.n_patches = n_patches
        self.alpha = alpha
        self.kmeans_iter = kmeans_iter
        self.batch_size = batch_size
        self.dtype = dtype
        self.random_state = random_state
        self.progress = progress
        self.n_jobs = n_jobs

    # ---- parameters

    def _check_params(self):
        def pos_int(name, minimum=1):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
            return int(v)

        pos_int("n_centroids")
        pos_int("patch_size")
        pos_int("stride")
        pos_int("n_patches", 2)
        pos_int("kmeans_iter", 0)
        if self.batch_size is not None:
            pos_int("batch_size")
        if not isinstance(self.alpha, numbers.Real) or not np.isfinite(self.alpha) \
                or self.alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        dtype = np.dtype(self.dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        resolve_n_jobs(self.n_jobs)
        return dtype

    def _encoder(self, dtype, image_shape):
        hwc = image_shape if len(image_shape) == 3 else (*image_shape, 1)
        return _Encoder(self.mean_patch_, self.whiten_, self.centroids_,
                        patch_size=self.patch_size, stride=self.stride, alpha=self.alpha,
                        dtype=dtype, image_hwc=hwc)

    def _batch_size(self, enc, n_workers):
        if self.batch_size is not None:
            return int(self.batch_size)
        per_image = enc.bytes_per_image()
        bound = min(TARGET_BATCH_BYTES, MEMORY_BUDGET_BYTES // n_workers)
        return max(1, bound // per_image)

    # ---- fit

    def _fit_dictionary(self, images4, image_shape, dtype):
        rng = _rng(self.random_state)
        p, s = self.patch_size, self.stride
        rows, cols = _grid(image_shape[0], image_shape[1], p, s)
        n_avail = images4.shape[0] * rows * cols
        n_patches = min(int(self.n_patches), n_avail)
        if n_patches < self.n_centroids:
            raise ValueError(
                f"n_centroids={self.n_centroids} exceeds the {n_patches} patches available "
                f"({images4.shape[0]} images x {rows * cols} positions, n_patches="
                f"{self.n_patches})")
        x = sample_patches(images4, n_patches, p, s, rng, dtype=dtype)
        normalize_patches(x, out=x)
        mean, w = zca_whitening(x, ZCA_EPS)
        x -= mean.astype(dtype)
        xw = x @ w.astype(dtype)
        del x
        centroids = spherical_kmeans(xw, self.n_centroids, self.kmeans_iter, rng,
                                     n_jobs=self.n_jobs, progress=self.progress)
        self.mean_patch_ = mean.astype(dtype)
        self.whiten_ = w.astype(dtype)
        self.centroids_ = centroids.astype(dtype)
        self.n_patches_ = n_patches

    def _run(self, images4, image_shape, dtype, out=None, stats=False, standardize=False,
             desc="features"):
        """Encode all images in batches; optionally keep them, their stats, standardise."""
        enc = self._encoder(dtype, image_shape)
        n_workers = worker_count(self.n_jobs)
        bs = self._batch_size(enc, n_workers)
        n = images4.shape[0]
        if standardize:
            mean = self.feature_mean_.astype(dtype)
            scale = self.feature_scale_.astype(dtype)

        def task(start):
            stop = min(start + bs, n)
            if out is None:
                block = getattr(enc._local, "out", None)
                if block is None or block.shape[0] < stop - start:
                    block = enc._local.out = np.empty((bs, enc.n_out), dtype)
                block = block[:stop - start]
            else:
                block = out[start:stop]
            enc.encode(images4[start:stop], block)
            result = _batch_stats(block) if stats else None
            if standardize:
                block -= mean
                block /= scale
            return result

        starts = range(0, n, bs)
        running = _RunningStats() if stats else None
        with _progress(len(starts), desc, self.progress, "batch") as bar:
            for result in imap_ordered(task, starts, n_workers, bar):
                if stats:
                    running.add(result)
        return running

    def _fit(self, images, keep):
        from threadpoolctl import threadpool_limits

        # All parallelism is this module's worker threads: a multi-threaded BLAS on top
        # oversubscribes the cores (OpenBLAS threads spin-wait; up to 100x slower when
        # another process is busy).
        with threadpool_limits(limits=1, user_api="blas"):
            return self._fit_limited(images, keep)

    def _fit_limited(self, images, keep):
        dtype = self._check_params()
        images4, image_shape = _check_images(images)
        _check_fits(image_shape, self.patch_size)
        if images4.dtype.kind == "f" and np.max(images4) <= 1.0:
            warnings.warn(
                "float training images all lie in [0, 1]; the contrast normalisation "
                "(+10 added to the patch variance) assumes pixel values in [0, 255]: "
                "multiply the images by 255", UserWarning, stacklevel=3)
        self._fit_dictionary(images4, image_shape, dtype)
        self.image_shape_ = image_shape
        self.n_features_out_ = 8 * int(self.n_centroids)
        out = np.empty((images4.shape[0], self.n_features_out_), dtype) if keep else None
        stats = self._run(images4, image_shape, dtype, out=out, stats=True,
                          desc="features (fit)")
        self.feature_mean_ = stats.mean.astype(dtype)
        self.feature_scale_ = np.sqrt(stats.variance() + STANDARDIZE_EPS).astype(dtype)
        if keep:
            rows = max(1, (32 << 20) // (self.n_features_out_ * dtype.itemsize))
            for start in range(0, out.shape[0], rows):
                block = out[start:start + rows]
                block -= self.feature_mean_
                block /= self.feature_scale_
        return out

    def fit(self, images, y=None):
        """Learn whitening, dictionary and feature statistics from training images.

        Parameters
        ----------
        images : array-like of shape (n, H, W) or (n, H, W, C)
            uint8 (or other integer) or float pixel values on the [0, 255] scale.
        y : ignored

        Returns
        -------
        self
        """
        self._fit(images, keep=False)
        return self

    def fit_transform(self, images, y=None):
        """Fit, and return the standardised features of the training images.

        Encodes the images once (``fit`` then ``transform`` encodes them twice); equal to
        ``fit(images).transform(images)``.

        Parameters
        ----------
        images : array-like of shape (n, H, W) or (n, H, W, C)
        y : ignored

        Returns
        -------
        ndarray of shape (n, n_features_out_)
        """
        return self._fit(images, keep=True)

    # ---- transform

    def _check_transform_input(self, images):
        check_is_fitted(self, ["centroids_", "feature_mean_", "feature_scale_"])
        images4, image_shape = _check_images(images)
        if image_shape != tuple(self.image_shape_):
            raise ValueError(
                f"images have shape {image_shape} each, but this {type(self).__name__} was "
                f"fitted on images of shape {tuple(self.image_shape_)}")
        return images4, image_shape

    def encode(self, images):
        """Pooled features before standardisation (steps 1-6).

        Parameters
        ----------
        images : array-like of shape (n, H, W) or (n, H, W, C)
            Same image shape as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n, n_features_out_)
        """
        return self._encode(images, standardize=False)

    def transform(self, images):
        """Standardised features.

        Parameters
        ----------
        images : array-like of shape (n, H, W) or (n, H, W, C)
            Same image shape as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n, n_features_out_)
            ``(encode(images) - feature_mean_) / feature_scale_``.
        """
        return self._encode(images, standardize=True)

    def _encode(self, images, standardize):
        images4, image_shape = self._check_transform_input(images)
        dtype = np.dtype(self.dtype)
        out = np.empty((images4.shape[0], 8 * self.centroids_.shape[0]), dtype)
        self._run(images4, image_shape, dtype, out=out, standardize=standardize,
                  desc="features (transform)" if standardize else "features (encode)")
        return out

    # ---- model files

    def _export(self):
        params = self.get_params()
        params["dtype"] = np.dtype(self.dtype).name
        if not isinstance(params["random_state"], (numbers.Integral, type(None))):
            params["random_state"] = None  # a Generator is not part of the fitted model
        meta = {"params": params, "image_shape": list(self.image_shape_),
                "n_patches": int(self.n_patches_)}
        return meta, {name: getattr(self, name) for name in _FITTED_ARRAYS}

    @classmethod
    def _restore(cls, meta, arrays):
        params = dict(meta["params"])
        params["dtype"] = np.dtype(params["dtype"]).type
        model = cls(**params)
        for name in _FITTED_ARRAYS:
            setattr(model, name, arrays[name])
        model.image_shape_ = tuple(meta["image_shape"])
        model.n_patches_ = meta["n_patches"]
        model.n_features_out_ = 8 * model.centroids_.shape[0]
        return model


_FITTED_ARRAYS = ("mean_patch_", "whiten_", "centroids_", "feature_mean_", "feature_scale_")
