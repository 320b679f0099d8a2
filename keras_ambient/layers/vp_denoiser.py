import keras
from keras import ops

from keras_ambient import equations
from keras_ambient.layers.denoiser import Denoiser
from keras_ambient.schedules.vp_schedule import VPSchedule
from keras_ambient.utils.validation import check_choice

PREDICTIONS = ("epsilon", "v", "sample")


@keras.saving.register_keras_serializable(package="keras_ambient")
class VPDenoiser(Denoiser):
    """`D(x; sigma)` from a network trained on a VP / DDPM schedule (docs/method.md §6).

    Pretrained latent models such as Stable Diffusion 1.x/2.x/XL predict the
    noise `eps` (or `v`) of `x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps` at an
    integer timestep `n`. This layer exposes such a network in VE coordinates:
    for an input `x` at VE level `sigma` it forms `alpha = 1/sqrt(1 + sigma^2)`,
    `beta = sigma alpha`, the VP input `x_vp = alpha x`, the (continuous)
    timestep `n(sigma)` of the schedule, calls
    `network([x_vp, n(, condition)])` and converts the prediction to
    `x0_hat` (`(x_vp - beta eps_hat)/alpha`, or `alpha x_vp - beta v_hat`).
    The ambient (M3) and consistency (M4) losses and the samplers then apply
    unchanged; fine-tuning with them trains the network in its own
    parameterization.

    Levels outside the schedule (`sigma < schedule.sigma_min` or
    `> schedule.sigma_max`) use the nearest timestep; set the model's
    `sigma_max` to `schedule.sigma_max` when sampling.

    Args:
        network: a Keras model called as `network([x_vp, timestep])` or
            `network([x_vp, timestep, condition])`, `timestep` of shape
            `(batch,)` (float; round it inside an adapter if the network needs
            integers). See `ka.pretrained` for Stable Diffusion adapters.
        schedule: a `ka.schedules.VPSchedule` (default: Stable Diffusion's).
        prediction: what the network predicts: `"epsilon"`, `"v"` or
            `"sample"` (x0 itself).

    Example:
    ```python
    D = ka.layers.VPDenoiser(eps_network, ka.schedules.VPSchedule.stable_diffusion())
    model = ka.AmbientDiffusion(D, sigma_n=0.344, sigma_max=D.schedule.sigma_max,
                                ambient_loss=ka.losses.AmbientLoss(
                                    noise_distribution="denoiser"))
    ```

    References:
        - Ho, Jain, Abbeel. "Denoising Diffusion Probabilistic Models". NeurIPS 2020,
          arXiv:2006.11239.
        - Salimans, Ho. "Progressive Distillation for Fast Sampling of Diffusion Models"
          (v-prediction). ICLR 2022, arXiv:2202.00512.
        - Karras, Aittala, Aila, Laine. "Elucidating the Design Space of Diffusion-Based
          Generative Models" (EDM). NeurIPS 2022, arXiv:2206.00364.
        - docs/method.md (in this repository).
    """

    def __init__(self, network, schedule=None, prediction="epsilon", **kwargs):
        super().__init__(network, **kwargs)
        if schedule is None:
            schedule = VPSchedule.stable_diffusion()
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        if not isinstance(schedule, VPSchedule):
            raise TypeError(
                f"`schedule` must be a ka.schedules.VPSchedule. Received: schedule={schedule!r}"
            )
        self.schedule = schedule
        self.prediction = check_choice("prediction", prediction, PREDICTIONS)

    def sample_training_sigma(self, uniform, sigma_lower):
        return self.schedule.sample_sigma(uniform, sigma_lower)

    def denoise(self, x, sigma, condition, training):
        alpha, beta = equations.vp_coefficients(sigma)
        x_vp = equations.expand_to(alpha, x) * x
        timestep = self.schedule.sigma_to_timestep(sigma)
        out = self._call_network(x_vp, timestep, condition, training)
        if self.prediction == "epsilon":
            return equations.x0_from_epsilon(x_vp, out, alpha, beta)
        if self.prediction == "v":
            return equations.x0_from_v(x_vp, out, alpha, beta)
        return out

    def get_config(self):
        config = super().get_config()
        config["schedule"] = keras.saving.serialize_keras_object(self.schedule)
        config["prediction"] = self.prediction
        return config
