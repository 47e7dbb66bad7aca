r"""Single-layer k-means image features (Coates, Lee & Ng, AISTATS 2011; Coates & Ng,
ICML 2011), the image features of Socher et al. (NIPS 2013).

Pipeline, for patches of ``p x p x channels`` pixels:

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
buffers, sized by a memory budget (:data:`MEMORY_BUDGET_BYTES`). NumPy, not torch: on the CPU
(2 cores, K = 400) torch runs the same pipeline within +-20% of it, either way depending on
the batch size, and would make the features need the ``model`` extra.

Modules: :mod:`~fastzsl.features.patches` (steps 1-3), :mod:`~fastzsl.features.kmeans`
(step 4), :mod:`~fastzsl.features._encoder` (steps 5-6 and the running feature statistics of
step 7) and :mod:`~fastzsl.features.estimator` (:class:`CoatesNgFeatures`: fitting, batching,
standardisation, model files).

Any feature matrix (from here or elsewhere) is a plain ``(n, n_features)`` float array; the
rest of the library does not depend on this package.
"""
from .estimator import MEMORY_BUDGET_BYTES, CoatesNgFeatures
from .kmeans import spherical_kmeans
from .patches import extract_patches, normalize_patches, sample_patches, zca_whitening

__all__ = [
    "CoatesNgFeatures",
    "extract_patches",
    "normalize_patches",
    "sample_patches",
    "zca_whitening",
    "spherical_kmeans",
    "MEMORY_BUDGET_BYTES",
]
