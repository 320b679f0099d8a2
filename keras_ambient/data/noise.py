import numpy as np

from keras_ambient.utils.validation import check_noise_levels


def add_noise(x, sigma, seed=None):
    """Noises data once, as a noisy dataset is observed: `y = x + sigma z` (docs/method.md §1).

    The noise is drawn with NumPy from `seed`, so the same seed gives the same
    noisy dataset on every Keras backend (each sample keeps ONE fixed noise
    realisation, as in the paper).

    Args:
        x: clean data, a NumPy-compatible array `(num_samples, ...)`.
        sigma: a scalar noise level or one level per sample (`>= 0`); per-sample
            levels let a dataset mix clean (`0`) and noisy samples.
        seed: int seed (or `None` for fresh entropy).

    Returns:
        The noisy data, float32, same shape as `x`.

    Example:
    ```python
    x = ka.data.load_digits()
    y = ka.data.add_noise(x, sigma=0.2, seed=0)
    ```
    """
    x = np.asarray(x, dtype="float32")
    if x.ndim == 0:
        raise ValueError(f"`x` must hold at least one sample. Received: x with shape {x.shape}")
    sigma = check_noise_levels("sigma", sigma, length=x.shape[0])
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(x.shape).astype("float32")
    sigma = sigma.reshape((-1,) + (1,) * (x.ndim - 1)) if sigma.ndim == 1 else sigma
    return x + sigma * z


def mixed_noise_levels(num_samples, sigma_n, clean_fraction, seed=None):
    """Per-sample noise levels for a dataset that mixes clean and noisy samples.

    Args:
        num_samples: dataset size.
        sigma_n: noise level of the noisy samples.
        clean_fraction: fraction of samples with `sigma_n = 0`.
        seed: int seed choosing which samples are clean.

    Returns:
        A float32 array `(num_samples,)` of 0 and `sigma_n`.

    Example:
    ```python
    levels = ka.data.mixed_noise_levels(len(x), 0.2, clean_fraction=0.1, seed=0)
    y = ka.data.add_noise(x, levels, seed=1)
    model.fit((y, levels), epochs=10)
    ```
    """
    if not 0.0 <= clean_fraction <= 1.0:
        raise ValueError(
            f"`clean_fraction` must be in [0, 1]. Received: clean_fraction={clean_fraction}"
        )
    check_noise_levels("sigma_n", sigma_n)
    rng = np.random.default_rng(seed)
    levels = np.full((int(num_samples),), float(sigma_n), dtype="float32")
    clean = rng.permutation(int(num_samples))[: int(round(clean_fraction * num_samples))]
    levels[clean] = 0.0
    return levels
