import math

import keras
from keras import ops

from keras_ambient.utils.validation import check_int, check_scalar


@keras.saving.register_keras_serializable(package="keras_ambient")
class FourierEmbedding(keras.layers.Layer):
    """Random Fourier features of a scalar noise condition (NCSN++ style).

    Maps `c_noise` of shape `(batch,)` to `[cos(2 pi f c), sin(2 pi f c)]` of
    shape `(batch, dim)` with fixed frequencies `f ~ N(0, scale^2)`. The
    frequencies are a non-trainable weight, so they are saved with the model.

    Args:
        dim: even output dimension.
        scale: standard deviation of the frequencies. EDM's `c_noise = ln(sigma)/4`
            spans about [-1.5, 1.1] for the usual noise levels; scale 16 (the
            NCSN++ value) resolves that range well.
        seed: seed of the frequency initializer.

    Example:
    ```python
    emb = ka.layers.FourierEmbedding(64)
    emb(keras.ops.array([0.1, -0.5]))  # shape (2, 64)
    ```

    References:
        - Tancik et al. "Fourier Features Let Networks Learn High Frequency Functions in Low
          Dimensional Domains". NeurIPS 2020, arXiv:2006.10739.
        - Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole. "Score-Based Generative
          Modeling through Stochastic Differential Equations" (NCSN++). ICLR 2021,
          arXiv:2011.13456.
    """

    def __init__(self, dim, scale=16.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.dim = check_int("dim", dim, minimum=2)
        if self.dim % 2:
            raise ValueError(f"`dim` must be even. Received: dim={dim}")
        self.scale = check_scalar("scale", scale, minimum=0, min_inclusive=False)
        self.seed = check_int("seed", seed, minimum=0, allow_none=True)

    def build(self, input_shape):
        self.frequencies = self.add_weight(
            name="frequencies",
            shape=(self.dim // 2,),
            initializer=keras.initializers.RandomNormal(stddev=self.scale, seed=self.seed),
            trainable=False,
        )

    def call(self, noise_condition):
        c = ops.reshape(ops.cast(noise_condition, self.compute_dtype), (-1, 1))
        angles = 2.0 * math.pi * c * ops.cast(self.frequencies, self.compute_dtype)[None, :]
        return ops.concatenate([ops.cos(angles), ops.sin(angles)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update({"dim": self.dim, "scale": self.scale, "seed": self.seed})
        return config
