import math

import keras
from keras import ops

from keras_ambient import equations
from keras_ambient.layers.denoiser import Denoiser
from keras_ambient.utils.validation import check_scalar


@keras.saving.register_keras_serializable(package="keras_ambient")
class FlowDenoiser(Denoiser):
    """`D(x; sigma)` from a rectified-flow network (docs/method.md §6), e.g. Stable Diffusion 3.

    Rectified flow noises `x_t = (1 - t) x0 + t eps` and the network predicts the
    velocity `v = eps - x0` at timestep `timestep_scale * t`. In VE coordinates
    `sigma = t/(1 - t)`: for an input `x` at level `sigma` this layer forms
    `t = sigma/(1 + sigma)`, `x_t = (1 - t) x`, calls
    `network([x_t, timestep_scale * t(, condition)])` and returns
    `x0_hat = x_t - t v_hat`.

    The "shift" `s` of SD3's schedule (`t' = s t / (1 + (s - 1) t)`) is, in VE
    terms, the scaling `sigma' = s sigma`; it changes which levels are used, not
    the denoiser. SD3's training distribution (logit-normal `t`, mean 0, std 1,
    shifted by `s`) is exactly the log-normal `ln sigma ~ N(ln s, 1)`:
    `sample_training_sigma` draws it truncated above `sigma_n`
    (`AmbientLoss(noise_distribution="denoiser")`).

    Args:
        network: a Keras model called as `network([x_t, timestep(, condition)])`
            that returns the velocity; see `ka.pretrained.SD3Diffuser` for
            keras-hub's MMDiT.
        shift: the schedule shift (SD3: 3.0).
        timestep_scale: the network's timestep for `t = 1` (SD3: 1000).
        logit_std: standard deviation of the logit-normal training law.

    Example:
    ```python
    D = ka.layers.FlowDenoiser(ka.pretrained.SD3Diffuser(backbone.diffuser), shift=3.0)
    x0_hat = D([latents_noisy, keras.ops.full((4,), 0.5), condition])
    ```

    References:
        - Liu, Gong, Liu. "Flow Straight and Fast: Learning to Generate and Transfer Data
          with Rectified Flow". ICLR 2023, arXiv:2209.03003.
        - Esser et al. "Scaling Rectified Flow Transformers for High-Resolution Image
          Synthesis" (Stable Diffusion 3). ICML 2024, arXiv:2403.03206.
        - docs/method.md (in this repository).
    """

    def __init__(self, network, shift=3.0, timestep_scale=1000.0, logit_std=1.0, **kwargs):
        super().__init__(network, **kwargs)
        self.shift = check_scalar("shift", shift, minimum=0, min_inclusive=False)
        self.timestep_scale = check_scalar("timestep_scale", timestep_scale, minimum=0,
                                           min_inclusive=False)
        self.logit_std = check_scalar("logit_std", logit_std, minimum=0, min_inclusive=False)

    def sample_training_sigma(self, uniform, sigma_lower):
        return equations.truncated_log_normal_sigma(
            uniform, sigma_lower, math.log(self.shift), self.logit_std
        )

    def denoise(self, x, sigma, condition, training):
        t = equations.flow_time(sigma)
        x_t = equations.expand_to(1.0 - t, x) * x
        velocity = self._call_network(x_t, self.timestep_scale * t, condition, training)
        return equations.x0_from_velocity(x_t, velocity, t)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"shift": self.shift, "timestep_scale": self.timestep_scale,
             "logit_std": self.logit_std}
        )
        return config
