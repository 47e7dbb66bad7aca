"""The Coates & Ng features estimator: fit (patch sample, whitening, dictionary, feature
statistics), batched transform on worker threads, model files."""
from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .._model_files import SaveMixin
from .._threads import imap_ordered, resolve_n_jobs, worker_count
from ._encoder import _batch_stats, _Encoder, _RunningStats
from .kmeans import _progress, spherical_kmeans
from .patches import (
    ZCA_EPS, _check_fits, _check_images, _grid, _rng, normalize_patches, sample_patches,
    zca_whitening,
)

STANDARDIZE_EPS = 0.01  # added to each feature's variance
#: Working memory of all encoding workers together (the output matrix not counted).
MEMORY_BUDGET_BYTES = 1 << 30
#: Working memory one worker aims at per batch: the encodings of a batch should mostly
#: stay in cache between the GEMM and the pooling passes (measured on 2 cores, K = 400:
#: 4 Fashion-MNIST images per batch 10-20% faster than 17, 64 or 1).
TARGET_BATCH_BYTES = 8 << 20


class CoatesNgFeatures(SaveMixin, TransformerMixin, BaseEstimator):
    """Coates & Ng single-layer k-means features of images (pipeline: :mod:`fastzsl.features`).

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

        Notes
        -----
        Each row depends on its own image only. The same call on the same machine gives
        the same bits. Another ``batch_size``, ``n_jobs`` or BLAS thread count hands the
        BLAS products of other shapes, which it may sum in another order: the results are
        then equal within the rounding-error bound of the computation in ``dtype`` (each
        float32 dot product of K terms within K 2^-24 sum |a_i b_i| of the exact value,
        propagated through pooling and standardisation; ``fastzsl.testing`` computes the
        bound, and the tests hold every batch size to it), not bit for bit.
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
