import keras

from keras_ambient import equations
from keras_ambient.layers.denoiser import Denoiser
from keras_ambient.utils.validation import check_scalar


@keras.saving.register_keras_serializable(package="keras_ambient")
class EDMDenoiser(Denoiser):
    """The preconditioned denoiser `D(x; sigma)` of EDM (docs/method.md M2).

    `D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s))` estimates
    `E[x0 | x_s = x]`. `F` is any Keras model called as
    `network([x_scaled, c_noise])` (or `network([x_scaled, c_noise, condition])`
    when a class/text condition is given) that returns a tensor of the shape of
    `x`. The preconditioning, the noise levels and the output are kept in
    float32 even under a `mixed_bfloat16` policy; only `F` runs in low precision.

    Args:
        network: the raw network `F`, e.g. `ka.networks.UNet` or
            `ka.networks.MLPDenoiser`.
        sigma_data: standard deviation of the clean data (0.5 for images in
            [-1, 1]).

    Call arguments:
        inputs: a list `[x, sigma]` or `[x, sigma, condition]`; `sigma` is a
            scalar or one level per sample, shape `(batch,)`.

    Example:
    ```python
    net = ka.networks.MLPDenoiser(data_dim=2)
    D = ka.layers.EDMDenoiser(net, sigma_data=0.5)
    x0_hat = D([x_noisy, keras.ops.full((len(x_noisy),), 0.3)])
    ```

    References:
        - Karras, Aittala, Aila, Laine. "Elucidating the Design Space of Diffusion-Based
          Generative Models" (EDM). NeurIPS 2022, arXiv:2206.00364.
        - docs/method.md (in this repository).
    """

    def __init__(self, network, sigma_data=0.5, **kwargs):
        super().__init__(network, **kwargs)
        self.sigma_data = check_scalar("sigma_data", sigma_data, minimum=0, min_inclusive=False)

    def build(self, input_shape):
        # Functional networks are built already; subclassed ones build on first call.
        x_shape = input_shape[0]
        if not self.network.built:
            self.network.build(
                [tuple(x_shape), (x_shape[0],)] + [tuple(s) for s in input_shape[2:]]
            )
        self.built = True

    def denoise(self, x, sigma, condition, training):
        c_skip, c_out, c_in, c_noise = equations.edm_preconditioning(sigma, self.sigma_data)
        out = self._call_network(equations.expand_to(c_in, x) * x, c_noise, condition, training)
        return equations.expand_to(c_skip, x) * x + equations.expand_to(c_out, x) * out

    def get_config(self):
        config = super().get_config()
        config["sigma_data"] = self.sigma_data
        return config
