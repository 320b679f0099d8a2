import math

import keras
from keras import ops

from keras_ambient.utils.validation import check_choice, check_int

KERAS_CV_VERSIONS = (1, 2)


@keras.saving.register_keras_serializable(package="keras_ambient")
class KerasCVUNet(keras.Model):
    """keras-cv's Stable Diffusion U-Net with the `[x, timestep, condition]` signature.

    keras-cv's `DiffusionModel` (SD 1.x; `DiffusionModelV2` for 2.x) takes
    `[latent, timestep_embedding, context]` with a 320-dimensional sinusoidal
    embedding computed outside the network, and predicts the noise `eps` on
    the scaled-linear VP schedule (`ka.schedules.VPSchedule.stable_diffusion()`).
    This adapter computes that embedding (`[cos, sin]` of `timestep * 10000^(-k/160)`,
    keras-cv's convention) from the continuous timestep given by
    `ka.layers.VPDenoiser`, so the pair is the paper's SDXL setting
    (epsilon-prediction on a VP schedule).

    keras-cv is no longer developed; it is an optional extra
    (`pip install keras-ambient[keras-cv]`), imported only by `from_keras_cv`.

    Args:
        network: a Keras model with keras-cv's call convention
            `network([latent, timestep_embedding, context])` (tests use a
            small stand-in), or `None` with `img_height`/`img_width` to build
            keras-cv's own U-Net (860M parameters, random weights: load yours
            with `load_weights`).
        img_height, img_width: image size (latents are 1/8 of it).
        max_text_length: text tokens of the context (77).
        version: 1 (`DiffusionModel`, context 768) or 2 (`DiffusionModelV2`, 1024).
        embedding_dim: size of the timestep embedding (320).

    Example:
    ```python
    unet = ka.pretrained.KerasCVUNet(img_height=512, img_width=512)
    unet.network.load_weights("diffusion_model.weights.h5")   # your weights
    D = ka.layers.VPDenoiser(unet, ka.schedules.VPSchedule.stable_diffusion())
    ```

    References:
        - Rombach, Blattmann, Lorenz, Esser, Ommer. "High-Resolution Image Synthesis with
          Latent Diffusion Models" (Stable Diffusion). CVPR 2022, arXiv:2112.10752.
        - Ho, Jain, Abbeel. "Denoising Diffusion Probabilistic Models". NeurIPS 2020,
          arXiv:2006.11239.
    """

    def __init__(self, network=None, img_height=None, img_width=None, max_text_length=77,
                 version=1, embedding_dim=320, **kwargs):
        super().__init__(**kwargs)
        self.version = check_choice("version", version, KERAS_CV_VERSIONS)
        self.max_text_length = check_int("max_text_length", max_text_length, minimum=1)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, minimum=2)
        self.img_height = img_height
        self.img_width = img_width
        self._owns_keras_cv = network is None
        if network is None:
            if img_height is None or img_width is None:
                raise ValueError(
                    "Pass a `network` or both `img_height` and `img_width` to build "
                    f"keras-cv's U-Net. Received: img_height={img_height}, img_width={img_width}"
                )
            network = build_keras_cv_diffusion_model(img_height, img_width, max_text_length, version)
        self.network = network
        self.context_dim = 768 if version == 1 else 1024
        self.built = bool(getattr(network, "built", False))

    def timestep_embedding(self, timestep):
        """keras-cv's sinusoidal embedding `[cos(t f_k), sin(t f_k)]`, `f_k = 10000^(-k/half)`."""
        half = self.embedding_dim // 2
        freqs = ops.exp(-math.log(10000.0) * ops.arange(0, half, dtype="float32") / half)
        args = ops.reshape(ops.cast(timestep, "float32"), (-1, 1)) * ops.reshape(freqs, (1, -1))
        return ops.concatenate([ops.cos(args), ops.sin(args)], axis=-1)

    def call(self, inputs, training=None):
        latents, timestep = inputs[0], inputs[1]
        context = inputs[2] if len(inputs) > 2 else None
        if context is None:
            context = ops.zeros((ops.shape(latents)[0], self.max_text_length, self.context_dim),
                                latents.dtype)
        return self.network([latents, self.timestep_embedding(timestep), context],
                            training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": None if self._owns_keras_cv
                else keras.saving.serialize_keras_object(self.network),
                "img_height": self.img_height,
                "img_width": self.img_width,
                "max_text_length": self.max_text_length,
                "version": self.version,
                "embedding_dim": self.embedding_dim,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("network") is not None:
            config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


def build_keras_cv_diffusion_model(img_height, img_width, max_text_length=77, version=1):
    """keras-cv's SD U-Net with random weights (`download_weights=False`)."""
    try:
        from keras_cv.src.models.stable_diffusion import diffusion_model
    except ImportError as error:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "keras-cv is needed to build its Stable Diffusion U-Net: "
            "`pip install keras-ambient[keras-cv]` (keras-cv is no longer developed; "
            f"prefer ka.pretrained.SD3Diffuser with keras-hub). Original error: {error}"
        ) from error
    cls = diffusion_model.DiffusionModel if version == 1 else diffusion_model.DiffusionModelV2
    return cls(img_height, img_width, max_text_length, download_weights=False)
