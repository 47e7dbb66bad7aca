"""Steps 1-3 of the features: patches of images, their contrast normalisation, ZCA whitening.

Images are ``(n, H, W)`` or ``(n, H, W, C)`` stacks with pixel values on the [0, 255] scale;
a patch is flattened in ``(channel, row, column)`` order.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._array import to_host

CONTRAST_EPS = 10.0  # added to each patch's variance (pixel values in [0, 255])
ZCA_EPS = 0.1  # added to the eigenvalues of the patch covariance
# Images checked for NaN/inf at a time (bounds the temporary of the check).
_FINITE_CHECK_IMAGES = 4096


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
