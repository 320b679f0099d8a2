import keras
from keras import ops

from keras_ambient.utils.structures import denoiser_inputs


class Denoiser(keras.Model):
    """Base class of the denoisers `D([x, sigma(, condition)]) -> E[x0 | x]`.

    Every denoiser takes data in variance-exploding (VE) coordinates,
    `x = x0 + sigma z`, and returns the clean estimate in the same coordinates,
    so the ambient (M3) and consistency (M4) losses and the samplers are written
    once for all parameterizations (docs/method.md §6). Subclasses implement
    `denoise(x, sigma, condition, training)` for one parameterization:
    `EDMDenoiser` (M2, networks trained from scratch), `VPDenoiser` (DDPM
    epsilon/v-prediction, e.g. Stable Diffusion 1.x/2.x/XL) and `FlowDenoiser`
    (rectified flow, e.g. Stable Diffusion 3). The base class parses the
    inputs, broadcasts a scalar `sigma`, keeps the result in float32 and checks
    the network's output shape.

    Args:
        network: the raw network being wrapped.

    References:
        - Karras, Aittala, Aila, Laine. "Elucidating the Design Space of Diffusion-Based
          Generative Models" (EDM). NeurIPS 2022, arXiv:2206.00364.
        - docs/method.md (in this repository).
    """

    def __init__(self, network, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not callable(network):
            raise TypeError(
                "`network` must be a Keras model or layer. "
                f"Received: network={network!r}"
            )
        self.network = network

    def sample_training_sigma(self, uniform, sigma_lower):
        """Maps `U[0, 1)` draws to training levels `sigma > sigma_lower` drawn
        from the pretrained model's own training distribution
        (`AmbientLoss(noise_distribution="denoiser")`). `None`: not defined."""
        return None

    def build(self, input_shape):
        # Functional networks are built already; subclassed ones build on first call.
        self.built = True

    def call(self, inputs, training=None):
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
            raise ValueError(
                f"{type(self).__name__} expects `[x, sigma]` or `[x, sigma, condition]`. "
                f"Received: inputs of type {type(inputs).__name__}"
                + (f" with {len(inputs)} elements" if isinstance(inputs, (list, tuple)) else "")
            )
        x = ops.cast(inputs[0], "float32")
        sigma = ops.cast(inputs[1], "float32")
        if len(sigma.shape) == 0:
            sigma = ops.broadcast_to(sigma, (ops.shape(x)[0],))
        sigma = ops.reshape(sigma, (-1,))
        condition = inputs[2] if len(inputs) == 3 else None
        return ops.cast(self.denoise(x, sigma, condition, training), "float32")

    def denoise(self, x, sigma, condition, training):
        raise NotImplementedError

    def _call_network(self, x, level, condition, training):
        """Calls the network as `network([x, level(, condition)])` and checks its shape."""
        out = self.network(denoiser_inputs(x, level, condition), training=training)
        check_same_shape(out, x)
        return ops.cast(out, "float32")

    def get_config(self):
        config = super().get_config()
        config["network"] = keras.saving.serialize_keras_object(self.network)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


def check_same_shape(out, x):
    """Raises if the network output's known dimensions differ from the input's."""
    out_shape, x_shape = tuple(out.shape[1:]), tuple(x.shape[1:])
    mismatch = len(out_shape) != len(x_shape) or any(
        a is not None and b is not None and int(a) != int(b) for a, b in zip(out_shape, x_shape)
    )
    if mismatch:
        raise ValueError(
            "The network must return a tensor of the shape of its input x. "
            f"Received: network output shape {tuple(out.shape)} for input "
            f"shape {tuple(x.shape)}"
        )
