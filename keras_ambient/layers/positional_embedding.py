import math

import keras
from keras import ops

from keras_ambient.utils.validation import check_int, check_scalar


@keras.saving.register_keras_serializable(package="keras_ambient")
class PositionalEmbedding(keras.layers.Layer):
    """Sinusoidal (transformer / DDPM++) embedding of a scalar noise condition.

    Maps `c` of shape `(batch,)` to `[cos(c w_i), sin(c w_i)]` with
    `w_i = scale * max_period^(-i / (dim/2 - 1))` (EDM's `endpoint=True` form).

    Args:
        dim: even output dimension.
        max_period: ratio between the highest and lowest frequency.
        scale: multiplier of the input. EDM feeds `c_noise = ln(sigma)/4`
            directly (scale 1); larger scales spread nearby noise levels apart.

    The embedding is computed in float32 under any dtype policy (its input is not
    autocast) and returned in the layer's compute dtype.

    Example:
    ```python
    emb = ka.layers.PositionalEmbedding(32)
    emb(keras.ops.array([0.1, -0.5]))  # shape (2, 32)
    ```

    References:
        - Vaswani et al. "Attention Is All You Need" (sinusoidal positional encoding).
          NeurIPS 2017, arXiv:1706.03762.
        - Ho, Jain, Abbeel. "Denoising Diffusion Probabilistic Models". NeurIPS 2020,
          arXiv:2006.11239.
    """

    def __init__(self, dim, max_period=10000.0, scale=1.0, **kwargs):
        # The noise condition stays float32 under a mixed policy (no autocast of the
        # input): its angles reach hundreds of radians, where bfloat16 steps are ~1.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.dim = check_int("dim", dim, minimum=4)
        if self.dim % 2:
            raise ValueError(f"`dim` must be even. Received: dim={dim}")
        self.max_period = check_scalar("max_period", max_period, minimum=1.0)
        self.scale = check_scalar("scale", scale, minimum=0, min_inclusive=False)

    def call(self, noise_condition):
        # In float32 whatever the policy; the result in the compute dtype.
        half = self.dim // 2
        exponents = ops.arange(half, dtype="float32") / float(half - 1)
        freqs = self.scale * ops.exp(-math.log(self.max_period) * exponents)
        c = ops.reshape(ops.cast(noise_condition, "float32"), (-1, 1))
        angles = c * freqs[None, :]
        return ops.cast(ops.concatenate([ops.cos(angles), ops.sin(angles)], axis=-1),
                        self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"dim": self.dim, "max_period": self.max_period, "scale": self.scale}
        )
        return config
