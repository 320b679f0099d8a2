import numpy as np

from keras_ambient.utils.validation import check_int, check_scalar


class GaussianMixture:
    """An isotropic Gaussian mixture with exact denoisers (docs/method.md §8).

    `p0 = sum_k w_k N(mu_k, s_k^2 I)`. Gives samples and the closed forms
    `E[x0 | x_sigma]` (the clean denoiser) and `E[y | x_sigma]` for data noised
    at `sigma_n` (what plain denoising score matching on noisy data learns),
    so tests and benchmarks can compare a trained model with the truth.

    Args:
        means: `(K, dim)` component means.
        stds: scalar or `(K,)` component standard deviations.
        weights: `(K,)` mixture weights (default uniform).

    Example:
    ```python
    gm = ka.data.GaussianMixture.circle(num_components=8, radius=1.0, std=0.05)
    x = gm.sample(1000, seed=0)
    x0_hat = gm.posterior_mean(x + 0.5 * np.random.randn(*x.shape), sigma=0.5)
    ```

    References:
        - Daras, Dimakis, Daskalakis. "Consistent Diffusion Meets Tweedie: Training Exact
          Ambient Diffusion Models with Noisy Data". ICML 2024, arXiv:2404.10177.
        - docs/method.md (in this repository).
    """

    def __init__(self, means, stds, weights=None):
        self.means = _float_array("means", means)
        if self.means.ndim != 2 or not np.all(np.isfinite(self.means)):
            raise ValueError(
                "`means` must be a (K, dim) array of finite numbers. "
                f"Received: means with shape {self.means.shape}: {self.means.tolist()}"
            )
        k = self.means.shape[0]
        stds = _float_array("stds", stds)
        if stds.ndim > 1 or stds.size not in (1, k) or not np.all(np.isfinite(stds)) \
                or np.any(stds < 0):
            raise ValueError(
                f"`stds` must be one finite number >= 0 or one per component ({k}). "
                f"Received: stds={stds.tolist()}"
            )
        self.stds = np.broadcast_to(stds, (k,)).copy()
        w = np.full((k,), 1.0 / k) if weights is None else _float_array("weights", weights)
        if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) \
                or not np.isclose(w.sum(), 1.0):
            raise ValueError(
                f"`weights` must be K={k} non-negative numbers summing to 1. "
                f"Received: weights={w.tolist()}"
            )
        self.weights = w

    @classmethod
    def circle(cls, num_components=8, radius=1.0, std=0.05):
        """`num_components` equal Gaussians evenly spaced on a circle (2-D)."""
        num_components = check_int("num_components", num_components, minimum=1)
        radius = check_scalar("radius", radius, minimum=0.0)
        std = check_scalar("std", std, minimum=0.0)
        angles = 2 * np.pi * np.arange(num_components) / num_components
        means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return cls(means, std)

    @property
    def dim(self):
        return self.means.shape[1]

    def sample(self, num_samples, seed=None, return_components=False):
        """Draws `num_samples` clean samples (float32)."""
        rng = np.random.default_rng(seed)
        comp = rng.choice(len(self.weights), size=int(num_samples), p=self.weights)
        x = self.means[comp] + self.stds[comp, None] * rng.standard_normal((int(num_samples), self.dim))
        x = x.astype("float32")
        return (x, comp) if return_components else x

    def _responsibilities(self, x, var):
        # log N(x; mu_k, var_k I) up to a shared constant; var is (K,) or (N, K).
        var = np.broadcast_to(var, (len(x), len(self.weights)))
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        logp = np.log(self.weights)[None] - 0.5 * d2 / var - 0.5 * self.dim * np.log(var)
        logp -= logp.max(axis=1, keepdims=True)
        r = np.exp(logp)
        return r / r.sum(axis=1, keepdims=True)

    def posterior_mean(self, x, sigma):
        """Exact `E[x0 | x_sigma = x]` (scalar or per-sample sigma)."""
        return self._posterior(x, sigma, 0.0)

    def noisy_posterior_mean(self, x, sigma, sigma_n):
        """Exact `E[y | x_sigma = x]` for `y = x0 + sigma_n z`, `sigma >= sigma_n`."""
        return self._posterior(x, sigma, sigma_n)

    def _posterior(self, x, sigma, sigma_n):
        x = np.asarray(x, dtype="float64")
        sigma = np.asarray(sigma, dtype="float64").reshape(-1, 1)  # (1|N, 1)
        s2 = self.stds[None, :] ** 2  # (1, K)
        var = s2 + sigma ** 2  # (1|N, K)
        r = self._responsibilities(x, var)
        gain = (s2 + float(sigma_n) ** 2) / var  # (1|N, K)
        comp = self.means[None] + gain[..., None] * (x[:, None, :] - self.means[None])
        return (r[..., None] * comp).sum(axis=1).astype("float32")


def _float_array(name, value):
    try:
        return np.asarray(value, dtype="float64")
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"`{name}` must be numbers. Received: {name}={value!r}"
        ) from e
