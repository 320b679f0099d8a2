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

    The embedding is computed in float32 under any dtype policy (its input is not
    autocast) and returned in the layer's compute dtype.

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
        # The noise condition stays float32 under a mixed policy (no autocast of the
        # input): its angles reach hundreds of radians, where bfloat16 steps are ~1.
        kwargs.setdefault("autocast", False)
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
            autocast=False,  # read in float32 under a mixed policy
        )

    def call(self, noise_condition):
        # In float32 whatever the policy; the result in the compute dtype.
        c = ops.reshape(ops.cast(noise_condition, "float32"), (-1, 1))
        angles = 2.0 * math.pi * c * ops.cast(self.frequencies, "float32")[None, :]
        return ops.cast(ops.concatenate([ops.cos(angles), ops.sin(angles)], axis=-1),
                        self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update({"dim": self.dim, "scale": self.scale, "seed": self.seed})
        return config
