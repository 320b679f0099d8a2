import keras
import numpy as np
from keras import ops

from keras_ambient.memorization.features import _batched_apply
from keras_ambient.utils.validation import check_int

KERAS_HUB_PIP = (
    "pip install --no-deps keras-hub==0.32.0 && "
    "pip install kagglehub sentencepiece tokenizers regex"
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _import_keras_hub():
    try:
        import keras_hub
    except ImportError as e:
        raise ImportError(
            "DINOv2 features need keras-hub, an optional dependency of keras_ambient. "
            f"Install it with:\n    {KERAS_HUB_PIP}\n"
            "(`--no-deps` avoids keras-hub's tensorflow-text requirement, which "
            f"pulls a second, full TensorFlow.) Original error: {e}"
        ) from e
    return keras_hub


class DINOv2FeatureExtractor:
    """DINOv2 CLS-token features through keras-hub (the paper's similarity).

    Daras et al. (docs/method.md §7) compare images by the cosine similarity of
    DINOv2 CLS embeddings. Images are mapped from `value_range` to [0, 1],
    grey images are replicated to 3 channels, resized (bilinear) to the
    backbone's input size, normalised with the ImageNet mean/std, and the
    first token of the backbone's output (CLS) is returned.

    keras-hub is imported lazily (optional extra):
    `pip install --no-deps keras-hub==0.32.0 && pip install kagglehub sentencepiece tokenizers regex`.

    Args:
        backbone: a `keras_hub.models.DINOV2Backbone` (e.g. a small randomly
            initialised one). Exactly one of `backbone` and `preset`.
        preset: a keras-hub preset name, e.g. `"dinov2_small"` or
            `"dinov2_giant"` (the paper used ViT-g/14); downloads weights.
        image_size: side of the square input when building from a preset
            (default 224, a multiple of the patch size 14).
        batch_size: images per backbone call.
        value_range: `(low, high)` range of the input images.
        normalize: apply the ImageNet mean/std normalisation.

    Example:
    ```python
    import keras_hub
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=14, num_layers=2, hidden_dim=16, num_heads=2,
        intermediate_dim=32, image_shape=(28, 28, 3),
        position_embedding_shape=(28, 28, 3))
    f = ka.memorization.DINOv2FeatureExtractor(backbone=backbone)
    feats = f(x_train[:4])                     # (4, 16)
    # The paper's setting (GPU, downloads weights):
    f = ka.memorization.DINOv2FeatureExtractor(preset="dinov2_giant")
    ```

    References:
        - Oquab et al. "DINOv2: Learning Robust Visual Features without Supervision". TMLR
          2024, arXiv:2304.07193.
        - Somepalli, Singla, Goldblum, Geiping, Goldstein. "Diffusion Art or Digital
          Forgery? Investigating Data Replication in Diffusion Models". CVPR 2023,
          arXiv:2212.03860.
    """

    def __init__(self, backbone=None, preset=None, image_size=224, batch_size=64,
                 value_range=(-1.0, 1.0), normalize=True):
        if (backbone is None) == (preset is None):
            raise ValueError(
                "Pass exactly one of `backbone` and `preset`. Received: "
                f"backbone={'None' if backbone is None else type(backbone).__name__}, preset={preset!r}"
            )
        self.image_size = check_int("image_size", image_size, minimum=1)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        if len(tuple(value_range)) != 2 or not value_range[1] > value_range[0]:
            raise ValueError(f"`value_range` must be (low, high) with high > low. Received: value_range={value_range}")
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.normalize = bool(normalize)
        self.preset = preset
        if backbone is None:
            keras_hub = _import_keras_hub()
            backbone = keras_hub.models.DINOV2Backbone.from_preset(
                preset, image_shape=(self.image_size, self.image_size, 3))
        elif not isinstance(backbone, keras.Model):
            raise TypeError(
                f"`backbone` must be a keras_hub.models.DINOV2Backbone. Received: backbone of type {type(backbone).__name__}"
            )
        self.backbone = backbone
        shape = tuple(backbone.image_shape)
        if keras.config.image_data_format() != "channels_last" or len(shape) != 3 or shape[-1] != 3:
            raise ValueError(
                "DINOv2FeatureExtractor needs a channels-last backbone with 3 input channels. "
                f"Received: backbone with image_shape={shape}"
            )
        self.input_size = (int(shape[0]), int(shape[1]))

    def preprocess(self, images):
        """Maps a batch `(n, h, w, c)` (c = 1 or 3) to the backbone's input."""
        images = np.asarray(images, dtype="float32")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(
                "DINOv2 features need images of shape (n, h, w, 1) or (n, h, w, 3). "
                f"Received: images with shape {images.shape}"
            )
        low, high = self.value_range
        x = ops.convert_to_tensor((images - low) / (high - low))
        if images.shape[-1] == 1:
            x = ops.repeat(x, 3, axis=-1)
        if tuple(images.shape[1:3]) != self.input_size:
            x = ops.image.resize(x, self.input_size, interpolation="bilinear")
        if self.normalize:
            mean = ops.convert_to_tensor(np.array(IMAGENET_MEAN, "float32"))
            std = ops.convert_to_tensor(np.array(IMAGENET_STD, "float32"))
            x = (x - mean) / std
        return ops.convert_to_numpy(x)

    def _run(self, batch):
        tokens = self.backbone.predict_on_batch({"images": self.preprocess(batch)})
        return np.asarray(ops.convert_to_numpy(tokens), dtype="float32")[:, 0, :]

    def __call__(self, images):
        images = np.asarray(images, dtype="float32")
        return _batched_apply(self._run, images, self.batch_size)

    def get_config(self):
        return {
            "backbone": None if self.preset is not None else self.backbone,
            "preset": self.preset,
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "value_range": self.value_range,
            "normalize": self.normalize,
        }
