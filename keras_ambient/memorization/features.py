"""Feature extractors for similarity search (docs/method.md §7).

A feature extractor is any callable `f(images) -> features` mapping a NumPy
batch `(n, ...)` to a `(n, d)` array. `get_feature_extractor` turns the
identifiers accepted across `keras_ambient.memorization` into one.
"""

import keras
import numpy as np

from keras_ambient.utils.structures import map_in_batches
from keras_ambient.utils.validation import check_samples


def pixel_features(images):
    """Raw pixels, flattened: `(n, ...) -> (n, prod(...))` float32.

    Args:
        images: array `(n, ...)`.

    Returns:
        A float32 NumPy array `(n, d)`.

    Example:
    ```python
    f = ka.memorization.pixel_features(x_train[:4])   # (4, 64) for digits
    ```
    """
    # Checked by the caller, under the caller's name (e.g. `references`).
    images = np.asarray(images, dtype="float32")
    if images.ndim < 1:
        raise ValueError(f"`images` must have a batch axis. Received: images with shape {images.shape}")
    return images.reshape(images.shape[0], -1)


def get_feature_extractor(identifier):
    """Returns a feature-extractor callable for `identifier`.

    Args:
        identifier: `None` or `"pixels"` (raw pixels); `"dinov2_small"`,
            `"dinov2_base"`, `"dinov2_large"`, `"dinov2_giant"` (a keras-hub
            preset, CLS token; downloads weights); a keras-hub
            `DINOV2Backbone` (wrapped in `DINOv2FeatureExtractor`); a `keras.Model` /
            `keras.layers.Layer` (wrapped in `KerasFeatureExtractor`); or any
            callable `f(images) -> (n, d)`.

    Returns:
        A callable `f(images) -> features`.

    Example:
    ```python
    f = ka.memorization.get_feature_extractor("pixels")
    f = ka.memorization.get_feature_extractor(my_keras_encoder)
    ```
    """
    from keras_ambient.memorization.dinov2_feature_extractor import DINOv2FeatureExtractor
    from keras_ambient.memorization.keras_feature_extractor import KerasFeatureExtractor

    if identifier is None or (isinstance(identifier, str) and identifier == "pixels"):
        return pixel_features
    if isinstance(identifier, str):
        if identifier.startswith("dinov2"):
            return DINOv2FeatureExtractor(preset=identifier)
        raise ValueError(
            "`feature_extractor` must be 'pixels', a keras-hub DINOv2 preset name "
            "(e.g. 'dinov2_small'), a Keras model or a callable. "
            f"Received: feature_extractor={identifier!r}"
        )
    if type(identifier).__name__ == "DINOV2Backbone":  # keras-hub backbone: CLS token
        return DINOv2FeatureExtractor(backbone=identifier)
    if isinstance(identifier, (keras.Model, keras.layers.Layer)):
        return KerasFeatureExtractor(identifier)
    if callable(identifier):
        return identifier
    raise TypeError(
        "`feature_extractor` must be 'pixels', a DINOv2 preset name, a Keras model "
        f"or a callable. Received: feature_extractor of type {type(identifier).__name__}"
    )


def _extract_features(feature_extractor, images, name="images"):
    """Applies `feature_extractor` and checks its output: `(n, d)` finite."""

    images = np.asarray(images)
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(
            f"`{name}` must be a non-empty batch of shape (n, ...). Received: {name} with shape {images.shape}"
        )
    feats = feature_extractor(images)
    feats = np.asarray(keras.ops.convert_to_numpy(feats) if not isinstance(feats, np.ndarray) else feats)
    if feats.ndim < 2 or feats.shape[0] != images.shape[0]:
        raise ValueError(
            "The feature extractor must return one feature vector per image, shape (n, d). "
            f"Received: features of shape {feats.shape} for {name} of shape {images.shape}"
        )
    return check_samples(f"features of {name}", feats, dtype="float32")


def _batched_apply(fn, images, batch_size):
    """`fn` over padded batches of `images` (one compiled batch shape)."""
    return map_in_batches(fn, images, batch_size, pad=True)
