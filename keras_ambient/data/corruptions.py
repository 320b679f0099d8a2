"""Deterministic image corruptions (blur, down/up-sampling, JPEG) for "bad data" experiments.

Images are `(n, h, w, c)` (or `(n, h, w)`) in [-1, 1], as `ka.data.load_digits`
returns them; the output has the input's shape, float32. SciPy (a scikit-learn
dependency) blurs, Pillow resizes and encodes JPEG.
"""

import io

import numpy as np

from keras_ambient.evaluation.images import _as_images as _as_image_array
from keras_ambient.utils.validation import check_int, check_scalar


def _as_images(x):
    """`(n, h, w, c)` float32 images (and whether the input had no channel axis)."""
    images = _as_image_array("x", x).astype("float32")
    return images, np.ndim(x) == 3


def _restore(out, squeeze):
    out = out.astype("float32")
    return out[..., 0] if squeeze else out


def gaussian_blur(x, sigma):
    """Blurs each image with a Gaussian kernel of `sigma` pixels (per channel).

    Args:
        x: images `(n, h, w[, c])`.
        sigma: standard deviation of the kernel in pixels (`> 0`).

    Returns:
        The blurred images, float32, same shape (borders reflected).

    Example:
    ```python
    blurred = ka.data.gaussian_blur(ka.data.load_digits(), sigma=1.0)
    ```
    """
    from scipy.ndimage import gaussian_filter

    sigma = check_scalar("sigma", sigma, minimum=0, min_inclusive=False)
    images, squeeze = _as_images(x)
    return _restore(gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode="reflect"), squeeze)


def downsample_upsample(x, factor):
    """Down-samples by `factor` (area average) and up-samples back (bilinear): lost detail.

    Args:
        x: images `(n, h, w[, c])`, `h` and `w` divisible by `factor`.
        factor: integer down-sampling factor (`>= 2`).

    Returns:
        The images at the original size, float32.

    Example:
    ```python
    coarse = ka.data.downsample_upsample(ka.data.load_digits(), factor=2)
    ```
    """
    from PIL import Image

    factor = check_int("factor", factor, minimum=2)
    images, squeeze = _as_images(x)
    n, h, w, c = images.shape
    if h % factor or w % factor:
        raise ValueError(
            f"Image height and width must be divisible by `factor`. Received: factor={factor} "
            f"for images of size {h}x{w}"
        )
    out = np.empty_like(images)
    for i in range(n):
        for k in range(c):
            im = Image.fromarray(np.ascontiguousarray(images[i, :, :, k]))  # float32: mode "F"
            small = im.resize((w // factor, h // factor), Image.Resampling.BOX)
            out[i, :, :, k] = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR))
    return _restore(out, squeeze)


def jpeg_compress(x, quality):
    """Encodes each image as a JPEG of `quality` and decodes it (Pillow).

    Values are mapped from [-1, 1] to 8-bit and back, so the output is quantized
    to 256 levels; one or three channels.

    Args:
        x: images `(n, h, w[, c])` with `c` in (1, 3), values in [-1, 1].
        quality: JPEG quality, 1 (worst) to 95.

    Returns:
        The decoded images in [-1, 1], float32.

    Example:
    ```python
    blocky = ka.data.jpeg_compress(ka.data.load_digits(), quality=10)
    ```
    """
    from PIL import Image

    quality = check_int("quality", quality, minimum=1)
    if quality > 95:
        raise ValueError(f"`quality` must be in [1, 95] (Pillow's range). Received: quality={quality}")
    images, squeeze = _as_images(x)
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"JPEG needs 1 or 3 channels. Received: images with {images.shape[-1]} channels")
    pixels = np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    out = np.empty(images.shape, dtype="float32")
    for i in range(len(pixels)):
        buffer = io.BytesIO()
        frame = pixels[i, :, :, 0] if images.shape[-1] == 1 else pixels[i]
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype="float32")
        out[i] = decoded.reshape(images.shape[1:])
    return _restore(out / 127.5 - 1.0, squeeze)
