import collections
import weakref

import keras
from keras import ops

from keras_ambient import equations
from keras_ambient.utils import backend_fast_paths
from keras_ambient.utils.structures import denoiser_inputs
from keras_ambient.utils.validation import check_choice, check_scalar

AmbientLossOutput = collections.namedtuple(
    "AmbientLossOutput", ["loss", "x_t", "sigma_t", "denoised"]
)
AmbientLossOutput.__doc__ = """Per-sample ambient loss and the forward pass it used.

`loss` has shape `(batch,)`; `x_t`, `sigma_t` and `denoised = D(x_t; sigma_t)`
are returned so that the consistency loss can reuse the same forward pass.
"""

WEIGHTINGS = ("edm", "unbiased")
NOISE_DISTRIBUTIONS = ("log_normal", "uniform", "denoiser")


@keras.saving.register_keras_serializable(package="keras_ambient")
class AmbientLoss:
    """Ambient denoising score matching, "double Tweedie" (docs/method.md M1, M3).

    For each sample `y` observed at noise level `sigma_n`, draws
    `sigma_t > sigma_n`, forms `x_t = y + sqrt(sigma_t^2 - sigma_n^2) z'` (M1),
    predicts `y_hat = (1 - sigma_n^2/sigma_t^2) D(x_t; sigma_t) +
    (sigma_n^2/sigma_t^2) x_t` and returns `w * mean(||y_hat - y||^2)` (M3).
    Its minimiser is the CLEAN denoiser `E[x0 | x_t]` for every
    `sigma_t > sigma_n`; with `sigma_n = 0` it is exactly EDM's loss.

    Args:
        sigma_data: standard deviation of the clean data (EDM weighting).
        weighting: `"unbiased"` (default): `w = lambda_EDM(sigma_t) / a^2` with
            `a = (sigma_t^2 - sigma_n^2)/sigma_t^2`, i.e. the EDM weight on the
            denoiser error itself, capped at `max_weight_ratio` times the EDM
            weight because its variance diverges as `sigma_t -> sigma_n`;
            `"edm"`: `w = lambda_EDM(sigma_t)` (bounded gradient noise, but the
            denoiser error is down-weighted by `a^2`, so `D` is learned poorly
            just above `sigma_n`). The default follows the 2-D mixture
            measurements of `benchmarks/mixture_2d.py` (README, docs/consistency.md).
        max_weight_ratio: cap of `1/a^2` for `weighting="unbiased"` (chosen on
            the 2-D mixture, `benchmarks/mixture_2d.py --sweep`).
        noise_distribution: `"log_normal"`: EDM's `ln sigma_t ~ N(p_mean, p_std)`
            truncated to `sigma_t > sigma_n` per sample (inverse-CDF sampling);
            `"uniform"`: `sigma_t ~ U(sigma_n, sigma_max)`;
            `"denoiser"`: the pretrained model's own training law truncated
            above `sigma_n`, from the denoiser's `sample_training_sigma`
            (`VPDenoiser`: timesteps uniform above `t(sigma_n)`, as the paper
            fine-tuned SDXL; `FlowDenoiser`: SD3's shifted logit-normal).
        p_mean, p_std: log-normal parameters (EDM: -1.2, 1.2).
        sigma_max: largest training noise level (both distributions are
            clipped to it).

    Example:
    ```python
    loss_fn = ka.losses.AmbientLoss(sigma_data=0.5)
    out = loss_fn(denoiser, y, sigma_n=keras.ops.full((64,), 0.2),
                  seed=keras.random.SeedGenerator(0))
    loss = keras.ops.mean(out.loss)
    ```

    References:
        - Daras, Dimakis, Daskalakis. "Consistent Diffusion Meets Tweedie:
          Training Exact Ambient Diffusion Models with Noisy Data". ICML 2024,
          arXiv:2404.10177.
        - Karras, Aittala, Aila, Laine. "Elucidating the Design Space of
          Diffusion-Based Generative Models" (EDM). NeurIPS 2022,
          arXiv:2206.00364.
        - docs/method.md (M1-M5, in this repository).
    """

    def __init__(self, sigma_data=0.5, weighting="unbiased", max_weight_ratio=100.0,
                 noise_distribution="log_normal", p_mean=-1.2, p_std=1.2,
                 sigma_max=80.0):
        self.sigma_data = check_scalar("sigma_data", sigma_data, minimum=0, min_inclusive=False)
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        self.max_weight_ratio = check_scalar("max_weight_ratio", max_weight_ratio, minimum=1.0)
        self.noise_distribution = check_choice(
            "noise_distribution", noise_distribution, NOISE_DISTRIBUTIONS
        )
        self.p_mean = check_scalar("p_mean", p_mean)
        self.p_std = check_scalar("p_std", p_std, minimum=0, min_inclusive=False)
        self.sigma_max = check_scalar("sigma_max", sigma_max, minimum=0, min_inclusive=False)
        self._laws_checked = weakref.WeakSet()  # denoisers whose training law was checked

    def sample_sigma(self, sigma_n, seed, denoiser=None):
        """Draws one training level `sigma_t > sigma_n` per sample: a U[0, 1) draw
        mapped by `sigma_from_uniform` (training draws the uniform and maps it in two
        steps, so a subclass changes the law by overriding `sigma_from_uniform`)."""
        sigma_n = ops.cast(sigma_n, "float32")
        u = backend_fast_paths.random_uniform(ops.shape(sigma_n), seed=seed)
        return self.sigma_from_uniform(u, sigma_n, denoiser=denoiser)

    def sigma_from_uniform(self, uniform, sigma_n, denoiser=None):
        """The training level of each U[0, 1) draw in `uniform`: the law's inverse CDF above `sigma_n`."""
        sigma_n = ops.cast(sigma_n, "float32")
        if self.noise_distribution == "denoiser":
            sampler = getattr(denoiser, "sample_training_sigma", None)
            sigma = None if sampler is None else sampler(uniform, sigma_n)
            if sigma is None:
                raise ValueError(
                    "AmbientLoss(noise_distribution='denoiser') needs a denoiser that "
                    "defines its training law (ka.layers.VPDenoiser, FlowDenoiser). "
                    f"Received: denoiser of type {type(denoiser).__name__}"
                )
            return ops.minimum(sigma, self.sigma_max)
        if self.noise_distribution == "log_normal":
            return equations.truncated_log_normal_sigma(
                uniform, sigma_n, self.p_mean, self.p_std, sigma_upper=self.sigma_max
            )
        low = equations.strict_lower_bound(sigma_n)
        return low + uniform * ops.maximum(self.sigma_max - low, 0.0)

    def weight(self, sigma_t, sigma_n):
        """The per-sample weight `w(sigma_t, sigma_n)` of M3."""
        w = equations.edm_loss_weight(sigma_t, self.sigma_data)
        if self.weighting == "unbiased":
            a = equations.ambient_scale(sigma_t, sigma_n)
            w = w * ops.minimum(1.0 / ops.square(a), self.max_weight_ratio)
        return w

    def __call__(self, denoiser, y, sigma_n, condition=None, seed=None, training=True):
        """Computes the per-sample loss.

        Args:
            denoiser: a callable `D([x, sigma(, condition)])`, e.g.
                `ka.layers.EDMDenoiser`.
            y: batch of noisy training samples.
            sigma_n: their noise levels, shape `(batch,)`.
            condition: optional class/text condition passed to the denoiser.
            seed: a `keras.random.SeedGenerator` (or int) for `sigma_t` and `z'`.
            training: forwarded to the denoiser.

        Returns:
            An `AmbientLossOutput(loss, x_t, sigma_t, denoised)`.
        """
        y = ops.cast(y, "float32")
        sigma_n = ops.reshape(ops.cast(sigma_n, "float32"), (-1,))
        uniform, noise = self._draws(y, sigma_n, seed)
        if not isinstance(denoiser, keras.layers.Layer):
            return AmbientLossOutput(*self._loss_at(denoiser, y, sigma_n, uniform, noise,
                                                    condition=condition, training=training))
        if self.noise_distribution == "denoiser" and denoiser not in self._laws_checked:
            # Its error before a trace, not inside it; once per denoiser.
            self.sigma_from_uniform(ops.zeros((1,)), ops.zeros((1,)), denoiser=denoiser)
            self._laws_checked.add(denoiser)
        # The deterministic rest (the training level from its draw, M1, the network,
        # M3), compiled where the backend allows it (utils/backend_fast_paths.py;
        # torch: a checked trace in training).
        static = tuple(sorted(self.get_config().items()))
        loss_at = backend_fast_paths.training_function(denoiser, self._loss_at, owner=self,
                                                       static_key=static, training=training)
        return AmbientLossOutput(*loss_at(y, sigma_n, uniform, noise, condition=condition))

    def noised_inputs(self, y, sigma_n, seed=None, denoiser=None):
        """The network's inputs `(x_t, sigma_t)`: `sigma_t > sigma_n` drawn, `x_t` by M1.

        The first half of `__call__` (the same draws); with `loss_from_denoised`
        it lets a caller evaluate `D(x_t; sigma_t)` in one network call together
        with other inputs (`ka.AmbientDiffusion` batches it with the consistency
        loss's `D(x_s; s)`).
        """
        y = ops.cast(y, "float32")
        sigma_n = ops.reshape(ops.cast(sigma_n, "float32"), (-1,))
        uniform, noise = self._draws(y, sigma_n, seed)
        sigma_t = self.sigma_from_uniform(uniform, sigma_n, denoiser=denoiser)
        return self._noised(y, sigma_n, sigma_t, noise), sigma_t

    def loss_from_denoised(self, denoised, y, sigma_n, x_t, sigma_t):
        """The per-sample loss (M3) given `denoised = D(x_t; sigma_t)`: an `AmbientLossOutput`."""
        y = ops.cast(y, "float32")
        sigma_n = ops.reshape(ops.cast(sigma_n, "float32"), (-1,))
        y_hat = equations.noisy_data_prediction(denoised, x_t, sigma_t, sigma_n)
        axes = tuple(range(1, len(y.shape)))
        sq_err = ops.mean(ops.square(y_hat - y), axis=axes)
        loss = self.weight(sigma_t, sigma_n) * sq_err
        return AmbientLossOutput(loss, x_t, sigma_t, denoised)

    def _draws(self, y, sigma_n, seed):
        """The random part: a U[0, 1) draw per sample (its training level), then the noise `z'`."""
        uniform = backend_fast_paths.random_uniform(ops.shape(sigma_n), seed=seed)
        return uniform, backend_fast_paths.random_normal(ops.shape(y), seed=seed)

    @staticmethod
    def _noised(y, sigma_n, sigma_t, noise):
        return equations.add_diffusion_noise(y, equations.expand_to(sigma_n, y),
                                             equations.expand_to(sigma_t, y), noise)

    def _loss_at(self, denoiser, y, sigma_n, uniform, noise, condition=None, training=True):
        """The loss given the draws `uniform` (the training levels') and `noise` (no
        randomness here): a tuple."""
        sigma_t = self.sigma_from_uniform(uniform, sigma_n, denoiser=denoiser)
        x_t = self._noised(y, sigma_n, sigma_t, noise)
        denoised = denoiser(denoiser_inputs(x_t, sigma_t, condition), training=training)
        return tuple(self.loss_from_denoised(denoised, y, sigma_n, x_t, sigma_t))

    def get_config(self):
        return {
            "sigma_data": self.sigma_data,
            "weighting": self.weighting,
            "max_weight_ratio": self.max_weight_ratio,
            "noise_distribution": self.noise_distribution,
            "p_mean": self.p_mean,
            "p_std": self.p_std,
            "sigma_max": self.sigma_max,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"AmbientLoss({args})"
