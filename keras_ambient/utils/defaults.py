"""Data-dependent defaults (see docs/choosing_defaults.md for the reasoning)."""

import numpy as np


def suggest_sigma_data(y, sigma_n=0.0):
    """Suggests `sigma_data` (the std of the CLEAN data) from noisy samples.

    EDM's preconditioning (docs/method.md M2) wants `sigma_data` = the standard
    deviation of the clean data `x0`, pooled over all values. Only
    `y = x0 + sigma_n z` is observed; the noise is independent of `x0`, so
    `var(y) = var(x0) + mean(sigma_n^2)` and

    `sigma_data = sqrt(var(y) - mean(sigma_n^2))`.

    The variance is pooled over every value of every sample (one scalar, as in
    EDM). When the noise accounts for (almost) all the variance the estimate
    is clipped at `0.05 * std(y)` so that it stays positive.

    Args:
        y: noisy samples `(num_samples, ...)`.
        sigma_n: their noise level: a scalar or one level per sample (0 for
            clean samples).

    Returns:
        A positive float.

    Example:
    ```python
    x = ka.data.load_digits()
    y = ka.data.add_noise(x, 0.2, seed=0)
    ka.utils.defaults.suggest_sigma_data(y, 0.2)  # ~ x.std() = 0.63
    ```
    """
    try:
        y = np.asarray(y, dtype="float64")
    except (TypeError, ValueError) as e:
        raise TypeError(f"`y` must be a numeric array. Received: y of type {type(y).__name__}") from e
    if y.ndim < 1 or y.shape[0] < 2:
        raise ValueError(f"`y` must hold at least 2 samples. Received: y with shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("`y` must be finite. Received: y with NaN or Inf values")
    s = np.asarray(sigma_n, dtype="float64")
    if s.ndim > 1 or (s.ndim == 1 and s.shape[0] != y.shape[0]):
        raise ValueError(
            "`sigma_n` must be a scalar or one level per sample "
            f"({y.shape[0]}). Received: sigma_n with shape {s.shape}"
        )
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"`sigma_n` must be finite and >= 0. Received: sigma_n={sigma_n}")
    var_y = float(y.var())
    noise_var = float(np.mean(s**2))
    floor = 0.05 * np.sqrt(var_y)
    return float(max(np.sqrt(max(var_y - noise_var, 0.0)), floor, 1e-6))
