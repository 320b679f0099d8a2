"""Samplers: small functions over an explicit `sigmas` array (docs/method.md §5).

In the style of k-diffusion: each sampler takes `denoise_fn(x, sigma) -> x0_hat`
(sigma a Python float; the function broadcasts it), an initial `x` at
`sigmas[0]`, and the decreasing array `sigmas`. The interface, which
`AmbientDiffusion.generate`, `ka.memorization.noise_attack` and user samplers
share, is

    sampler(denoise_fn, x, sigmas, *, seed=None, callback=None, verbose=0, **options)

`seed` (int or `keras.random.SeedGenerator`) drives the injected noise of
stochastic samplers (deterministic ones accept and ignore it), so a wrapped or
user-written sampler receives the caller's seed like the built-in ones (see
`run_sampler`). `callback(info)` is called after every step with a dict
`{"i", "x", "sigma", "sigma_hat", "denoised"}`.

The ODE is `dx/dsigma = (x - D(x; sigma)) / sigma` (VE / EDM form).
"""

import inspect
import math

import keras
import numpy as np
from keras import ops

from keras_ambient import equations
from keras_ambient.utils.validation import check_int, check_scalar


def edm_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0, append_zero=True):
    """EDM's noise-level schedule (docs/method.md §5).

    `sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho` for
    `i = 0..N-1`, followed by `sigma_N = 0` when `append_zero`.

    Args:
        num_steps: N, the number of non-zero levels (>= 1).
        sigma_min, sigma_max: end points (`sigma_max > sigma_min > 0`).
        rho: schedule curvature (7 in EDM).
        append_zero: append a final 0.

    Returns:
        A float32 numpy array of length N (+1).

    Example:
    ```python
    sigmas = ka.samplers.edm_sigmas(18)  # 80.0 ... 0.002, 0.0
    ```
    """
    num_steps = check_int("num_steps", num_steps, minimum=1)
    sigma_min = check_scalar("sigma_min", sigma_min, minimum=0, min_inclusive=False)
    sigma_max = check_scalar("sigma_max", sigma_max, minimum=sigma_min)
    rho = check_scalar("rho", rho, minimum=0, min_inclusive=False)
    if num_steps == 1:
        sig = np.array([sigma_max], dtype="float64")
    else:
        ramp = np.linspace(0.0, 1.0, num_steps)
        lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
        sig = (hi + ramp * (lo - hi)) ** rho
    if append_zero:
        sig = np.append(sig, 0.0)
    return sig.astype("float32")


def _seed_generator(seed):
    if isinstance(seed, keras.random.SeedGenerator):
        return seed
    return keras.random.SeedGenerator(seed)


def _check_sigmas(sigmas):
    sigmas = np.asarray(sigmas, dtype="float32").reshape(-1)
    if sigmas.size < 2:
        raise ValueError(
            f"`sigmas` needs at least 2 levels. Received: sigmas with {sigmas.size} values"
        )
    if not np.all(np.isfinite(sigmas)) or np.any(sigmas < 0) or np.any(np.diff(sigmas) >= 0):
        raise ValueError(
            "`sigmas` must be finite, non-negative and strictly decreasing. "
            f"Received: sigmas={sigmas.tolist()}"
        )
    return sigmas


def _progbar(n, verbose):
    return keras.utils.Progbar(n, verbose=1 if verbose else 0, unit_name="step") if verbose else None


def sample_euler(denoise_fn, x, sigmas, *, seed=None, callback=None, verbose=0):
    """Deterministic Euler steps of the probability-flow ODE (NFE = N).

    `seed` is accepted for the common interface and unused.

    Example:
    ```python
    x = ka.samplers.sample_euler(D, 80.0 * z, ka.samplers.edm_sigmas(50))
    ```
    """
    sigmas = _check_sigmas(sigmas)
    bar = _progbar(len(sigmas) - 1, verbose)
    x = ops.convert_to_tensor(x, dtype="float32")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = ops.convert_to_tensor(denoise_fn(x, sigma), dtype="float32")
        d = (x - denoised) / sigma
        x = x + (sigma_next - sigma) * d
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        if bar:
            bar.update(i + 1)
    return x


def sample_heun(denoise_fn, x, sigmas, *, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                s_noise=1.0, seed=None, callback=None, verbose=0):
    """EDM's Heun sampler (Algorithm 2): 2nd order, Euler on a final step to 0.

    With `s_churn = 0` it is deterministic (NFE = 2N - 1 when the schedule ends
    at 0). With churn, noise is added at levels in `[s_tmin, s_tmax]`:
    `gamma = min(s_churn / N, sqrt(2) - 1)`, `sigma_hat = sigma (1 + gamma)`.

    Example:
    ```python
    sigmas = ka.samplers.edm_sigmas(18)
    x = ka.samplers.sample_heun(D, sigmas[0] * z, sigmas)
    ```
    """
    sigmas = _check_sigmas(sigmas)
    s_churn = check_scalar("s_churn", s_churn, minimum=0.0)
    s_noise = check_scalar("s_noise", s_noise, minimum=0.0)
    seed = _seed_generator(seed) if s_churn > 0 else None
    n = len(sigmas) - 1
    bar = _progbar(n, verbose)
    x = ops.convert_to_tensor(x, dtype="float32")
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1.0 + gamma)
        if gamma > 0:
            eps = keras.random.normal(ops.shape(x), seed=seed) * s_noise
            x = x + eps * math.sqrt(sigma_hat ** 2 - sigma ** 2)
        denoised = ops.convert_to_tensor(denoise_fn(x, sigma_hat), dtype="float32")
        d = (x - denoised) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next > 0:
            denoised_next = ops.convert_to_tensor(denoise_fn(x_next, sigma_next), dtype="float32")
            d_next = (x_next - denoised_next) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
        x = x_next
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
        if bar:
            bar.update(i + 1)
    return x


def sample_euler_ancestral(denoise_fn, x, sigmas, *, eta=1.0, s_noise=1.0, seed=None,
                           callback=None, verbose=0):
    """Stochastic (ancestral / Euler-Maruyama) sampler.

    With `eta = 1` each step is exactly the DDPM posterior move M5,
    `x_s = x0_hat + (s^2/t^2)(x_t - x0_hat) + s sqrt(1 - s^2/t^2) z`; `eta = 0`
    is the deterministic Euler sampler; values in between interpolate.

    Example:
    ```python
    x = ka.samplers.sample_euler_ancestral(D, 80.0 * z, ka.samplers.edm_sigmas(100), seed=0)
    ```
    """
    sigmas = _check_sigmas(sigmas)
    eta = check_scalar("eta", eta, minimum=0.0, maximum=1.0)
    seed = _seed_generator(seed)
    bar = _progbar(len(sigmas) - 1, verbose)
    x = ops.convert_to_tensor(x, dtype="float32")
    for i in range(len(sigmas) - 1):
        t, s = float(sigmas[i]), float(sigmas[i + 1])
        denoised = ops.convert_to_tensor(denoise_fn(x, t), dtype="float32")
        if s == 0.0:
            x = denoised
        elif eta == 1.0:
            noise = keras.random.normal(ops.shape(x), seed=seed) * s_noise
            x = equations.reverse_step(x, denoised, t, s, noise)
        else:
            sigma_up = min(s, eta * math.sqrt(max(s ** 2 * (t ** 2 - s ** 2) / t ** 2, 0.0)))
            sigma_down = math.sqrt(s ** 2 - sigma_up ** 2)
            x = denoised + (sigma_down / t) * (x - denoised)
            if sigma_up > 0:
                x = x + keras.random.normal(ops.shape(x), seed=seed) * s_noise * sigma_up
        if callback is not None:
            callback({"i": i, "x": x, "sigma": t, "sigma_hat": t, "denoised": denoised})
        if bar:
            bar.update(i + 1)
    return x


SAMPLERS = {
    "heun": sample_heun,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
}


def get_sampler(name):
    """Returns the sampler function registered under `name` (or `name` if callable).

    A callable must follow the interface of this module: it is called with the
    keywords `seed` and `verbose` (and any options); a function whose signature
    cannot take them is refused here, before any sampling.
    """
    if callable(name):
        _check_interface(name)
        return name
    if name not in SAMPLERS:
        raise ValueError(
            f"Unknown sampler. Expected one of {sorted(SAMPLERS)} or a callable. "
            f"Received: sampler={name!r}"
        )
    return SAMPLERS[name]


def _check_interface(fn):
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins, some C callables: trust them
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    names = {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    missing = [k for k in ("seed", "verbose") if k not in names]
    if missing:
        raise TypeError(
            "A sampler must accept the keywords `seed` and `verbose` "
            "(`sampler(denoise_fn, x, sigmas, *, seed=None, callback=None, verbose=0, "
            "**options)`; a deterministic one may ignore `seed`), so that the caller's "
            f"seed reaches it. Received: {getattr(fn, '__name__', fn)!r} without "
            f"{', '.join(missing)}"
        )


def run_sampler(sampler, denoise_fn, x, sigmas, *, seed=None, verbose=0, **options):
    """Runs `sampler` (a name or a callable) with the common interface.

    Args:
        sampler: `"heun"`, `"euler"`, `"euler_ancestral"` or a callable.
        denoise_fn: `fn(x, sigma) -> D(x; sigma)`.
        x: the initial state at `sigmas[0]`.
        sigmas: the decreasing levels.
        seed: int or `keras.random.SeedGenerator`, passed to every sampler.
        verbose: show a progress bar.
        **options: sampler options (e.g. `s_churn`, `eta`).

    Returns:
        The final state.

    Example:
    ```python
    x = ka.samplers.run_sampler("euler_ancestral", D, 80.0 * z,
                                ka.samplers.edm_sigmas(40), seed=0)
    ```
    """
    fn = get_sampler(sampler)
    return fn(denoise_fn, x, sigmas, seed=seed, verbose=verbose, **options)
