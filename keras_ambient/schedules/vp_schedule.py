import math

import keras
import numpy as np
from keras import ops

from keras_ambient import equations
from keras_ambient.utils.validation import check_choice, check_int, check_scalar

BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")


@keras.saving.register_keras_serializable(package="keras_ambient")
class VPSchedule:
    """A discrete VP / DDPM noise schedule and its VE noise levels (docs/method.md §6).

    Timestep `n` of a VP model is the process `x_n = sqrt(abar_n) x0 +
    sqrt(1 - abar_n) eps`, i.e. the VE level `sigma_n = sqrt((1 - abar_n)/abar_n)`.
    This class holds `abar` (`alphas_cumprod`) and converts timesteps to VE
    levels and back. Between integer timesteps `log sigma` is interpolated
    linearly (as k-diffusion does), so the conversions are continuous, monotone
    and exact inverses of each other on `[0, num_timesteps - 1]`.

    Args:
        beta_schedule: `"scaled_linear"` (Stable Diffusion 1.x/2.x/XL:
            `sqrt(beta)` linear from `sqrt(beta_start)` to `sqrt(beta_end)`),
            `"linear"` (DDPM) or `"squaredcos_cap_v2"` (improved DDPM cosine).
        beta_start, beta_end: ends of the linear schedules.
        num_timesteps: number of training timesteps.
        alphas_cumprod: an explicit `abar` array (overrides the three
            arguments above), e.g. from a pretrained model's scheduler.

    Example:
    ```python
    schedule = ka.schedules.VPSchedule.stable_diffusion()
    schedule.timestep_to_sigma([100, 500, 800])   # ~ [0.34, 1.61, 5.13]
    schedule.sigma_to_timestep(0.5)                # continuous timestep
    ```

    References:
        - Ho, Jain, Abbeel. "Denoising Diffusion Probabilistic Models". NeurIPS 2020,
          arXiv:2006.11239.
        - Nichol, Dhariwal. "Improved Denoising Diffusion Probabilistic Models" (cosine
          schedule). ICML 2021, arXiv:2102.09672.
        - Rombach, Blattmann, Lorenz, Esser, Ommer. "High-Resolution Image Synthesis with
          Latent Diffusion Models" (Stable Diffusion). CVPR 2022, arXiv:2112.10752.
        - Karras, Aittala, Aila, Laine. "Elucidating the Design Space of Diffusion-Based
          Generative Models" (EDM). NeurIPS 2022, arXiv:2206.00364.
    """

    def __init__(self, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                 num_timesteps=1000, alphas_cumprod=None):
        if alphas_cumprod is not None:
            abar = np.asarray(alphas_cumprod, dtype="float64").reshape(-1)
            if abar.size < 2 or not np.all(np.isfinite(abar)) or np.any(abar <= 0) or np.any(abar > 1):
                raise ValueError(
                    "`alphas_cumprod` must hold at least 2 values in (0, 1]. "
                    f"Received: alphas_cumprod with {abar.size} values in "
                    f"[{abar.min() if abar.size else None}, {abar.max() if abar.size else None}]"
                )
            if np.any(np.diff(abar) >= 0):
                raise ValueError(
                    "`alphas_cumprod` must be strictly decreasing (more noise at "
                    "later timesteps). Received: a non-decreasing array"
                )
            self.beta_schedule = None
            self.beta_start = self.beta_end = None
            self.num_timesteps = int(abar.size)
        else:
            self.beta_schedule = check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
            self.beta_start = check_scalar("beta_start", beta_start, minimum=0, min_inclusive=False)
            self.beta_end = check_scalar("beta_end", beta_end, minimum=self.beta_start, maximum=1.0,
                                         max_inclusive=False)
            self.num_timesteps = check_int("num_timesteps", num_timesteps, minimum=2)
            abar = _alphas_cumprod(self.beta_schedule, self.beta_start, self.beta_end,
                                   self.num_timesteps)
        self._explicit = alphas_cumprod is not None
        self.alphas_cumprod = abar
        self.sigmas = np.sqrt((1.0 - abar) / abar)  # increasing in the timestep
        self._log_sigmas = np.log(np.maximum(self.sigmas, 1e-30)).astype("float32")

    @classmethod
    def stable_diffusion(cls):
        """The schedule of Stable Diffusion 1.x/2.x/XL (scaled linear, 0.00085 to 0.012)."""
        return cls("scaled_linear", 0.00085, 0.012, 1000)

    @classmethod
    def ddpm(cls):
        """The linear schedule of DDPM (1e-4 to 0.02, 1000 steps)."""
        return cls("linear", 1e-4, 0.02, 1000)

    @property
    def sigma_min(self):
        """VE level of timestep 0."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self):
        """VE level of the last timestep."""
        return float(self.sigmas[-1])

    def timestep_to_sigma(self, timestep):
        """VE level of a (continuous) timestep in `[0, num_timesteps - 1]` (clipped)."""
        t = ops.clip(ops.convert_to_tensor(timestep, dtype="float32"), 0.0, self.num_timesteps - 1.0)
        low = ops.clip(ops.floor(t), 0.0, self.num_timesteps - 2.0)
        w = t - low
        low = ops.cast(low, "int32")
        log_sigmas = ops.convert_to_tensor(self._log_sigmas)
        log_sigma = (1.0 - w) * ops.take(log_sigmas, low) + w * ops.take(log_sigmas, low + 1)
        return ops.exp(log_sigma)

    def sigma_to_timestep(self, sigma):
        """The continuous timestep of a VE level (clipped to the schedule's range)."""
        sigma = ops.convert_to_tensor(sigma, dtype="float32")
        shape = ops.shape(sigma)
        log_sigma = ops.log(ops.maximum(ops.reshape(sigma, (-1,)), 1e-30))
        log_sigmas = ops.convert_to_tensor(self._log_sigmas)
        index = ops.searchsorted(log_sigmas, log_sigma, side="right")
        low = ops.clip(ops.cast(index, "int32") - 1, 0, self.num_timesteps - 2)
        low_value = ops.take(log_sigmas, low)
        high_value = ops.take(log_sigmas, low + 1)
        w = ops.clip((log_sigma - low_value) / (high_value - low_value), 0.0, 1.0)
        return ops.reshape(ops.cast(low, "float32") + w, shape)

    def sample_sigma(self, uniform, sigma_lower):
        """Training levels uniform in the timestep above `sigma_lower` (DDPM's
        training distribution restricted to `sigma > sigma_lower`, as the paper
        fine-tuned SDXL: `t ~ U(t_n, T]`)."""
        uniform = ops.convert_to_tensor(uniform, dtype="float32")
        lower = self.sigma_to_timestep(sigma_lower)
        top = float(self.num_timesteps - 1)
        t = lower + uniform * (top - lower)
        sigma = self.timestep_to_sigma(t)
        sigma_lower = ops.convert_to_tensor(sigma_lower, dtype="float32")
        return ops.maximum(sigma, equations.strict_lower_bound(sigma_lower))

    def get_config(self):
        if self._explicit:
            return {"alphas_cumprod": [float(a) for a in self.alphas_cumprod]}
        return {
            "beta_schedule": self.beta_schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "num_timesteps": self.num_timesteps,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        if self._explicit:
            return f"VPSchedule(alphas_cumprod=<{self.num_timesteps} values>)"
        return (f"VPSchedule(beta_schedule={self.beta_schedule!r}, beta_start={self.beta_start}, "
                f"beta_end={self.beta_end}, num_timesteps={self.num_timesteps})")


def _alphas_cumprod(beta_schedule, beta_start, beta_end, num_timesteps):
    if beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps) ** 2
    elif beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_timesteps)
    else:  # squaredcos_cap_v2 (Nichol & Dhariwal 2021)
        def f(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), 0.999)
                          for i in range(num_timesteps)])
    return np.cumprod(1.0 - betas)
