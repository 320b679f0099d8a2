import collections
import math

import keras
from keras import ops

from keras_ambient import equations
from keras_ambient.utils import backend_fast_paths
from keras_ambient.utils.structures import denoiser_inputs, repeat_condition
from keras_ambient.utils.validation import check_bool, check_choice, check_int, check_scalar

STARTS = ("ambient", "data")
S_DISTRIBUTIONS = ("uniform", "log_uniform")
CHAINS = ("euler_maruyama", "ddpm")
SPACINGS = ("edm", "geometric", "linear")
ESTIMATORS = ("unbiased", "plug_in")


ConsistencyChain = collections.namedtuple(
    "ConsistencyChain", ["x_s", "s", "condition", "target", "mask", "num_draws"]
)
ConsistencyChain.__doc__ = """The reverse chains of one sub-batch, ready for the final `D(x_s; s)`.

`x_s` (`num_draws` chains stacked along axis 0), its levels `s` and the
repeated `condition` are the inputs of the one network call with gradient;
`target = D(x_t; t)` (sub-batch size) and `mask` (1 where the sample has a
level below it, or None) enter the loss (`ConsistencyLoss.loss_from_denoised`).
"""


@keras.saving.register_keras_serializable(package="keras_ambient")
class ConsistencyLoss:
    """Consistency loss that extends the denoiser below `sigma_n` (docs/method.md §4, M4).

    The true denoiser is a martingale along the reverse process:
    `D(x_t; t) = E[D(x_s; s) | x_t]` for `s < t`. From a start point `(x_t, t)`
    this loss draws a lower level `s`, runs the reverse process from `t` to `s`
    `num_draws` times independently (`num_steps` moves of `chain` on
    `spacing`-spaced levels, driven by the denoiser itself) to get
    `x_s^1, ..., x_s^K`, and returns the unbiased estimator (M4)
    `(D(x_s^1; s) - D(x_t; t)) . (D(x_s^2; s) - D(x_t; t))` (for `K > 2` its
    average over all pairs, `equations.consistency_u_statistic`), averaged
    over dimensions, one value per sample of the sub-batch. The `K` calls
    `D(x_s; s)` are batched into one network evaluation (`ka.AmbientDiffusion`
    also puts the ambient loss's `D(x_t; sigma_t)` into it, through
    `reverse_chain` and `loss_from_denoised`); the chain's calls without
    gradient go through `utils.backend_fast_paths.no_gradient_call` (on torch
    a traced call, free of Keras's per-layer eager overhead).

    The chain must be honest: driven by the exact denoiser, `E[D(x_s; s) | x_t]`
    must equal `D(x_t; t)`, or the loss trains `D` away from the truth. One M5
    move is exact in its mean but not in its law; an Euler–Maruyama chain on
    EDM-spaced levels converges to the true reverse process as `num_steps`
    grows. `benchmarks/consistency_chain.py` measures each chain's bias with
    the exact denoiser of a 2-D Gaussian mixture (results: docs/consistency.md).

    Args:
        start: `"data"` (default): start from the training sample `y` at
            `t = sigma_n`, so every `s` lies below the noise level where M3
            gives no information (clean samples, `sigma_n = 0`, are skipped;
            one extra evaluation of `D(y; sigma_n)` without gradient);
            `"ambient"`: start from the ambient loss's `x_t` at
            `sigma_t > sigma_n` ("everywhere") and reuse its `D(x_t; t)`.
        start_scale: with `start="data"`, the chain starts at
            `t = start_scale * sigma_n` from `y` noised further to that level
            (M1), where the ambient loss pins `D` better than at `sigma_n`
            itself; the chain then runs through `sigma_n` to `s < t`. 1 starts
            at `y`.
        chain: the reverse move: `"euler_maruyama"` (default): Euler–Maruyama
            steps of the VE reverse SDE (`equations.reverse_sde_step`);
            `"ddpm"`: repeated M5 posterior moves (`equations.reverse_step`).
        num_steps: moves of the chain from `t` to `s` (each after the first
            costs one network evaluation without gradient, on twice the
            sub-batch).
        spacing: levels of the chain between `t` and `s` (`equations.chain_levels`):
            `"edm"` (rho-spaced, short steps near `s`), `"geometric"` or
            `"linear"`.
        rho: curvature of `spacing="edm"`.
        s_distribution: how `s` is drawn below `t`: `"uniform"` on
            `(s_low, t)` or `"log_uniform"`.
        sigma_min: lowest `s` (`s_low = min(sigma_min, t/2)`).
        max_gap: if set, `s >= t - max_gap` (CDM used 0.05).
        stop_gradient_target: stop gradients through the target `D(x_t; t)`;
            gradients always flow through both `D(x_s; s)`.
        backprop_through_chain: let gradients flow through the reverse chain
            (`x_s` depends on `D(x_t; t)` and intermediate evaluations).
        batch_fraction: the loss is computed on the first
            `ceil(batch_fraction * batch)` samples of each batch (batches are
            shuffled by `fit`), which bounds its cost; 1 uses the whole batch.
            Smaller fractions (the authors use 1/16) are cheaper and noisier;
            docs/consistency.md §2 measures the trade-off.
        num_draws: independent reverse chains per start point (`K >= 2`).
            More draws lower the variance of the loss and of its gradient
            at a proportional cost (one chain on `K` times the sub-batch).
        estimator: `"unbiased"` (default): M4, the product of two draws' errors
            (averaged over all pairs for `K > 2`); `"plug_in"`: the squared
            error of the mean of the `K` draws (`equations.consistency_plug_in`,
            as in the authors' pixel-space code), biased by `Var[D]/K`
            towards the posterior mean.

    Example:
    ```python
    cons = ka.losses.ConsistencyLoss(num_steps=7, batch_fraction=1.0)
    loss = keras.ops.mean(cons(denoiser, y, sigma_n, seed=seed))
    ```

    References:
        - Daras, Dimakis, Daskalakis. "Consistent Diffusion Meets Tweedie:
          Training Exact Ambient Diffusion Models with Noisy Data". ICML 2024,
          arXiv:2404.10177.
        - Daras et al. "Consistent Diffusion Models: Mitigating Sampling Drift
          by Learning to be Consistent". NeurIPS 2023, arXiv:2302.09057.
    """

    def __init__(self, start="data", start_scale=1.0, chain="euler_maruyama", num_steps=7, spacing="edm",
                 rho=7.0, s_distribution="uniform", sigma_min=0.002, max_gap=None,
                 stop_gradient_target=True, backprop_through_chain=False, batch_fraction=0.25,
                 num_draws=2, estimator="unbiased"):
        self.start = check_choice("start", start, STARTS)
        self.start_scale = check_scalar("start_scale", start_scale, minimum=1.0)
        self.chain = check_choice("chain", chain, CHAINS)
        self.num_steps = check_int("num_steps", num_steps, minimum=1)
        self.spacing = check_choice("spacing", spacing, SPACINGS)
        self.rho = check_scalar("rho", rho, minimum=0, min_inclusive=False)
        self.s_distribution = check_choice("s_distribution", s_distribution, S_DISTRIBUTIONS)
        self.sigma_min = check_scalar("sigma_min", sigma_min, minimum=0, min_inclusive=False)
        self.max_gap = check_scalar("max_gap", max_gap, minimum=0, min_inclusive=False, allow_none=True)
        self.stop_gradient_target = check_bool("stop_gradient_target", stop_gradient_target)
        self.backprop_through_chain = check_bool("backprop_through_chain", backprop_through_chain)
        self.batch_fraction = check_scalar("batch_fraction", batch_fraction, minimum=0,
                                           maximum=1, min_inclusive=False)
        self.num_draws = check_int("num_draws", num_draws, minimum=2)
        self.estimator = check_choice("estimator", estimator, ESTIMATORS)

    def sample_lower_level(self, t, seed):
        """Draws `s < t` per sample."""
        low = ops.minimum(self.sigma_min, 0.5 * t)
        if self.max_gap is not None:
            low = ops.maximum(low, t - self.max_gap)
        u = backend_fast_paths.random_uniform(ops.shape(t), seed=seed)
        if self.s_distribution == "uniform":
            return low + u * (t - low)
        return ops.exp(ops.log(low) + u * (ops.log(t) - ops.log(low)))

    def subbatch_size(self, batch):
        """Samples of a batch of `batch` that enter the loss: `ceil(batch_fraction * batch)`."""
        if self.batch_fraction >= 1.0:
            return batch
        if isinstance(batch, int):
            return max(1, math.ceil(self.batch_fraction * batch))
        # A dynamic batch size (TensorFlow traces with an unknown batch dimension).
        k = ops.ceil(self.batch_fraction * ops.cast(batch, "float32"))
        return ops.cast(ops.maximum(k, 1.0), "int32")

    def move(self, x, denoised, a, b, noise):
        """One move of the chain from level `a` to `b < a` given `denoised = D(x; a)`."""
        if self.chain == "ddpm":
            return equations.reverse_step(x, denoised, a, b, noise)
        return equations.reverse_sde_step(x, denoised, a, b, noise)

    def _denoise(self, denoiser, x, sigma, condition, training, grad):
        if grad:
            return denoiser(denoiser_inputs(x, sigma, condition), training=training)
        return backend_fast_paths.no_gradient_call(denoiser, x, sigma, condition, training)

    def __call__(self, denoiser, y, sigma_n, ambient_output=None, condition=None,
                 seed=None, training=True, target_denoiser=None):
        """Computes the per-sample consistency loss (M4) on the sub-batch.

        Args:
            denoiser: a callable `D([x, sigma(, condition)])`, trained through
                both `D(x_s; s)` calls.
            y: batch of noisy training samples.
            sigma_n: their noise levels, shape `(batch,)`.
            ambient_output: the `AmbientLossOutput` of the same batch; required
                for `start="ambient"` (its forward pass is reused).
            condition: optional condition passed to the denoiser.
            seed: a `keras.random.SeedGenerator` (or int).
            training: forwarded to the denoiser.
            target_denoiser: if given (e.g. the EMA network), it computes the
                target `D(x_t; t)` and drives the reverse chain, without
                gradient; default: `denoiser`.

        Returns:
            A tensor of shape `(k,)`, `k = subbatch_size(batch)`: the loss of
            the first `k` samples of the batch.
        """
        chain = self.reverse_chain(denoiser, y, sigma_n, ambient_output=ambient_output,
                                   condition=condition, seed=seed, training=training,
                                   target_denoiser=target_denoiser)
        denoised_s = self._denoise(denoiser, chain.x_s, chain.s, chain.condition, training, grad=True)
        return self.loss_from_denoised(denoised_s, chain)

    def reverse_chain(self, denoiser, y, sigma_n, ambient_output=None, condition=None,
                      seed=None, training=True, target_denoiser=None):
        """Everything of `__call__` before the final `D(x_s; s)`: a `ConsistencyChain`.

        The target `D(x_t; t)` and the `num_draws` reverse chains from `t` to
        `s`, without gradient (unless `stop_gradient_target=False` or
        `backprop_through_chain=True`). Arguments as in `__call__`; with
        `loss_from_denoised` it lets a caller evaluate `D(x_s; s)` in one
        network call with other inputs.
        """
        y = ops.cast(y, "float32")
        sigma_n = ops.reshape(ops.cast(sigma_n, "float32"), (-1,))
        batch = y.shape[0] if y.shape[0] is not None else ops.shape(y)[0]
        k = self.subbatch_size(batch)
        y, sigma_n = y[:k], sigma_n[:k]
        condition = _take(condition, k)
        driver = denoiser if target_denoiser is None else target_denoiser
        own_target = target_denoiser is None and not self.stop_gradient_target
        mask = None
        if self.start == "ambient":
            if ambient_output is None:
                raise ValueError(
                    "ConsistencyLoss(start='ambient') reuses the ambient forward pass: "
                    "pass `ambient_output` (the AmbientLoss output for this batch). "
                    "Received: ambient_output=None"
                )
            x_t, t = ambient_output.x_t[:k], ambient_output.sigma_t[:k]
            if target_denoiser is None:
                denoised_t = ambient_output.denoised[:k]
            else:
                denoised_t = self._denoise(driver, x_t, t, condition, training, grad=False)
        else:
            # Start at the data: t = sigma_n; clean samples have nothing below them.
            mask = ops.cast(sigma_n > self.sigma_min, "float32")
            t = ops.maximum(self.start_scale * sigma_n, self.sigma_min)
            x_t = y
            if self.start_scale > 1.0:
                noise = backend_fast_paths.random_normal(ops.shape(y), seed=seed)
                x_t = equations.add_diffusion_noise(y, equations.expand_to(sigma_n, y),
                                                    equations.expand_to(t, y), noise)
            denoised_t = self._denoise(driver, x_t, t, condition, training, grad=own_target)

        target = denoised_t if own_target else ops.stop_gradient(denoised_t)
        s = self.sample_lower_level(t, seed)

        # K independent reverse chains, batched: [draw 1; ...; draw K].
        draws = self.num_draws
        x = ops.concatenate([x_t] * draws, axis=0)
        x0_hat = ops.concatenate([denoised_t] * draws, axis=0)
        grad_chain = self.backprop_through_chain
        if not grad_chain:
            x0_hat = ops.stop_gradient(x0_hat)
        levels = equations.chain_levels(ops.concatenate([t] * draws, axis=0),
                                        ops.concatenate([s] * draws, axis=0),
                                        self.num_steps, self.spacing, self.rho)
        cond_k = repeat_condition(condition, draws)
        for i in range(self.num_steps):
            if i > 0:
                x0_hat = self._denoise(driver, x, levels[i], cond_k, training,
                                       grad=grad_chain and target_denoiser is None)
            noise = backend_fast_paths.random_normal(ops.shape(x), seed=seed)
            x = self.move(x, x0_hat, levels[i], levels[i + 1], noise)
        if not grad_chain:
            x = ops.stop_gradient(x)
        return ConsistencyChain(x, levels[-1], cond_k, target, mask, draws)

    def loss_from_denoised(self, denoised_s, chain):
        """The per-sample loss (M4) given `denoised_s = D(chain.x_s; chain.s)`."""
        denoised_draws = ops.split(denoised_s, chain.num_draws, axis=0)
        if self.estimator == "plug_in":
            loss = equations.consistency_plug_in(denoised_draws, chain.target)
        elif chain.num_draws == 2:
            loss = equations.consistency_product(denoised_draws[0], denoised_draws[1], chain.target)
        else:
            loss = equations.consistency_u_statistic(denoised_draws, chain.target)
        if chain.mask is not None:
            loss = loss * chain.mask
        return loss

    def get_config(self):
        return {
            "start": self.start,
            "start_scale": self.start_scale,
            "chain": self.chain,
            "num_steps": self.num_steps,
            "spacing": self.spacing,
            "rho": self.rho,
            "s_distribution": self.s_distribution,
            "sigma_min": self.sigma_min,
            "max_gap": self.max_gap,
            "stop_gradient_target": self.stop_gradient_target,
            "backprop_through_chain": self.backprop_through_chain,
            "batch_fraction": self.batch_fraction,
            "num_draws": self.num_draws,
            "estimator": self.estimator,
        }

    @classmethod
    def from_config(cls, config):
        if "chain" not in config:
            # Saved before chains were configurable (keras_ambient 0.1.0): linearly
            # spaced M5 moves on the whole batch, as those models were trained.
            config = dict(config, chain="ddpm", spacing="linear", batch_fraction=1.0)
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"ConsistencyLoss({args})"


def _take(condition, k):
    """The first `k` entries of every array of a (possibly nested) condition."""
    if condition is None:
        return None
    return keras.tree.map_structure(lambda a: a[:k], condition)
