"""The equations of the method, each in one place (docs/method.md M1-M5).

Every function is written in the variance-exploding (VE) form of EDM,
`x_t = x0 + sigma_t * z`, with `keras.ops` so it runs on JAX, PyTorch and
TensorFlow. Noise levels are per-sample vectors of shape `(batch,)` (or
scalars) and are broadcast against data of any rank.
"""

import math

from keras import ops

# Smallest noise level fed to `log` (c_noise) so that D(x; 0) = x stays finite.
_TINY_SIGMA = 1e-20


def _tensors(*values):
    """Converts arrays to float32 backend tensors (NumPy + torch tensor fails)."""
    return tuple(ops.convert_to_tensor(v, dtype="float32") for v in values)


def expand_to(sigma, x):
    """Reshapes a `(batch,)` (or scalar) noise level to broadcast against `x`."""
    sigma = ops.convert_to_tensor(sigma, dtype="float32")
    if len(sigma.shape) == 0:
        return sigma
    return ops.reshape(sigma, (-1,) + (1,) * (len(x.shape) - 1))


def add_diffusion_noise(y, sigma_n, sigma_t, noise):
    """M1: noise a sample observed at `sigma_n` further, to level `sigma_t`.

    `x_t = y + sqrt(sigma_t^2 - sigma_n^2) * z'`. Requires
    `sigma_t >= sigma_n`; with `sigma_n = 0` this is the usual forward process.
    """
    y, sigma_n, sigma_t, noise = _tensors(y, sigma_n, sigma_t, noise)
    var = ops.maximum(ops.square(sigma_t) - ops.square(sigma_n), 0.0)
    return y + expand_to(ops.sqrt(var), y) * noise


def edm_preconditioning(sigma, sigma_data):
    """M2: EDM's preconditioning coefficients `(c_skip, c_out, c_in, c_noise)`.

    `D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s))` with
    `c_skip = sd^2/(s^2+sd^2)`, `c_out = s sd/sqrt(s^2+sd^2)`,
    `c_in = 1/sqrt(s^2+sd^2)`, `c_noise = ln(s)/4`.
    """
    sigma = ops.convert_to_tensor(sigma, dtype="float32")
    sd2 = float(sigma_data) ** 2
    total = ops.square(sigma) + sd2
    c_skip = sd2 / total
    c_out = sigma * float(sigma_data) / ops.sqrt(total)
    c_in = 1.0 / ops.sqrt(total)
    c_noise = ops.log(ops.maximum(sigma, _TINY_SIGMA)) / 4.0
    return c_skip, c_out, c_in, c_noise


def noisy_data_prediction(denoised, x_t, sigma_t, sigma_n):
    """M3 (double Tweedie): `E[y | x_t]` from an estimate of `E[x0 | x_t]`.

    `y_hat = (1 - sigma_n^2/sigma_t^2) D(x_t; sigma_t) + (sigma_n^2/sigma_t^2) x_t`.
    """
    denoised, x_t, sigma_t, sigma_n = _tensors(denoised, x_t, sigma_t, sigma_n)
    ratio = ops.square(sigma_n) / ops.square(sigma_t)
    ratio = expand_to(ratio, x_t)
    return (1.0 - ratio) * denoised + ratio * x_t


def edm_loss_weight(sigma, sigma_data):
    """EDM's `lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2` (docs/method.md §3)."""
    (sigma,) = _tensors(sigma)
    sd2 = float(sigma_data) ** 2
    return (ops.square(sigma) + sd2) / (ops.square(sigma) * sd2)


def ambient_scale(sigma_t, sigma_n):
    """`a = (sigma_t^2 - sigma_n^2) / sigma_t^2` of docs/method.md §3.

    `||y_hat - y||^2 = a^2 ||D - x0_target||^2`.
    """
    sigma_t, sigma_n = _tensors(sigma_t, sigma_n)
    return 1.0 - ops.square(sigma_n) / ops.square(sigma_t)


def reverse_step(x_t, x0_hat, t, s, noise):
    """M5: one reverse (DDPM posterior) step from level `t` down to `s < t`.

    `x_s = x0_hat + (s^2/t^2)(x_t - x0_hat) + s sqrt(1 - s^2/t^2) z`.
    Exact in law when `x0_hat` is the true `x0`; with `x0_hat = E[x0|x_t]` it
    is exact in its mean.
    """
    x_t, x0_hat, t, s, noise = _tensors(x_t, x0_hat, t, s, noise)
    ratio = expand_to(ops.square(s) / ops.square(t), x_t)
    s_b = expand_to(s, x_t)
    std = s_b * ops.sqrt(ops.maximum(1.0 - ratio, 0.0))
    return x0_hat + ratio * (x_t - x0_hat) + std * noise


def reverse_sde_step(x, denoised, a, b, noise):
    """§4: one Euler–Maruyama step of the VE reverse SDE from level `a` down to `b < a`.

    `x_b = x + 2 (b - a)(x - D(x; a)) / a + sqrt(2 (a - b) a) z`, with
    `denoised = D(x; a)`. Unlike M5 it is exact in neither mean nor law for a
    finite step; its error vanishes as the steps shrink.
    """
    x, denoised, a, b, noise = _tensors(x, denoised, a, b, noise)
    a_b, b_b = expand_to(a, x), expand_to(b, x)
    drift = 2.0 * (b_b - a_b) * (x - denoised) / ops.maximum(a_b, _TINY_SIGMA)
    std = ops.sqrt(ops.maximum(2.0 * (a_b - b_b) * a_b, 0.0))
    return x + drift + std * noise


def chain_levels(t, s, num_steps, spacing="edm", rho=7.0):
    """§4: the levels `t = l_0 > l_1 > ... > l_K = s` of a `K = num_steps` reverse chain.

    `spacing="edm"`: `l_k = (t^(1/rho) + k/K (s^(1/rho) - t^(1/rho)))^rho`
    (EDM's schedule between `t` and `s`: short steps near `s`);
    `"geometric"`: `l_k = t (s/t)^(k/K)`; `"linear"`: `l_k = t + k/K (s - t)`.
    `t` and `s` are per-sample vectors; returns a list of `K + 1` of them.
    """
    t, s = _tensors(t, s)
    levels = [t]
    for k in range(1, num_steps):
        f = k / num_steps
        if spacing == "linear":
            level = t + f * (s - t)
        elif spacing == "geometric":
            level = t * ops.power(s / t, f)
        else:
            ti, si = ops.power(t, 1.0 / rho), ops.power(s, 1.0 / rho)
            level = ops.power(ti + f * (si - ti), rho)
        levels.append(level)
    levels.append(s)
    return levels


def consistency_product(denoised_1, denoised_2, target):
    """M4 for one sample: `(D(x_s^1; s) - D(x_t; t)) . (D(x_s^2; s) - D(x_t; t))`.

    The dot product is averaged over the data dimensions, giving one value per
    sample. With independent draws its expectation is
    `||E[D(x_s; s) | x_t] - D(x_t; t)||^2 / dim` (unbiased, unlike the
    one-draw square, which adds the variance).
    """
    denoised_1, denoised_2, target = _tensors(denoised_1, denoised_2, target)
    prod = (denoised_1 - target) * (denoised_2 - target)
    axes = tuple(range(1, len(prod.shape)))
    return ops.mean(prod, axis=axes) if axes else prod


def consistency_u_statistic(draws, target):
    """M4 with `K >= 2` independent draws: the U-statistic of all pairs.

    `(1 / (K (K - 1))) sum_{i != j} (D_i - T) . (D_j - T)`
    `= (||sum_i e_i||^2 - sum_i ||e_i||^2) / (K (K - 1))` with `e_i = D_i - T`,
    averaged over the data dimensions. Unbiased for `||E[D] - T||^2 / dim`
    like `consistency_product` (which it equals for `K = 2`), with a gradient
    variance that falls roughly like `1/K` per start point.
    """
    draws = [ops.convert_to_tensor(d, dtype="float32") for d in draws]
    (target,) = _tensors(target)
    k = len(draws)
    if k < 2:
        raise ValueError(f"The U-statistic needs at least 2 draws. Received: {k} draw(s)")
    errors = [d - target for d in draws]
    total = errors[0]
    sum_sq = ops.square(errors[0])
    for e in errors[1:]:
        total = total + e
        sum_sq = sum_sq + ops.square(e)
    pairs = (ops.square(total) - sum_sq) / float(k * (k - 1))
    axes = tuple(range(1, len(pairs.shape)))
    return ops.mean(pairs, axis=axes) if axes else pairs


def consistency_plug_in(draws, target):
    """The plug-in consistency estimate `||mean_i D_i - T||^2` (mean over dimensions).

    Biased: its expectation is `||E[D] - T||^2 + Var[D] / K` per dimension,
    so it also shrinks the spread of `D(x_s; s)` along the chain (towards the
    posterior mean). The authors' pixel-space code uses it with `K = 6`.
    """
    draws = [ops.convert_to_tensor(d, dtype="float32") for d in draws]
    (target,) = _tensors(target)
    mean = draws[0]
    for d in draws[1:]:
        mean = mean + d
    err = ops.square(mean / float(len(draws)) - target)
    axes = tuple(range(1, len(err.shape)))
    return ops.mean(err, axis=axes) if axes else err


def strict_lower_bound(sigma_lower):
    """The smallest training level used above `sigma_lower`: `sigma_lower (1 + 1e-4) + 1e-6`.

    Float32 rounding of a draw conditioned on `sigma_t > sigma_n` can land
    exactly on `sigma_n`, where the ambient scale `a` of M3 is 0; every
    training-level sampler clamps its draws to this bound instead.
    """
    return sigma_lower * (1.0 + 1e-4) + 1e-6


def truncated_log_normal_sigma(uniform, sigma_lower, p_mean, p_std, sigma_upper=None):
    """Inverse-CDF draw of `ln sigma ~ N(p_mean, p_std)` restricted to `sigma > sigma_lower`.

    `uniform` holds U[0, 1) draws (one per sample). The draw is jit-friendly
    (`erf` / `erfinv`) and handles `sigma_lower = 0` (the plain log-normal).
    """
    uniform, sigma_lower = _tensors(uniform, sigma_lower)
    lower = ops.log(ops.maximum(sigma_lower, _TINY_SIGMA))
    a = (lower - p_mean) / p_std
    cdf_a = 0.5 * (1.0 + ops.erf(a / math.sqrt(2.0)))
    p = cdf_a + uniform * (1.0 - cdf_a)
    p = ops.clip(p, 1e-7, 1.0 - 1e-7)
    z = math.sqrt(2.0) * ops.erfinv(2.0 * p - 1.0)
    sigma = ops.exp(p_mean + p_std * z)
    # Float32 rounding of the CDF can land exactly on the bound: keep sigma_t > sigma_n.
    sigma = ops.maximum(sigma, strict_lower_bound(sigma_lower))
    if sigma_upper is not None:
        sigma = ops.minimum(sigma, sigma_upper)
    return sigma


# --------------------------------------------------------------------------
# docs/method.md §6: other parameterizations. A process x_t = alpha x0 + beta eps
# maps to VE by x_ve = x_t / alpha and sigma = beta / alpha, so M1-M5 above are
# computed once, in VE coordinates, for every parameterization.


def vp_sigma(alpha_bar):
    """§6, VP / DDPM: `sigma = sqrt((1 - abar) / abar)` (`alpha = sqrt(abar)`, `beta = sqrt(1 - abar)`)."""
    (alpha_bar,) = _tensors(alpha_bar)
    return ops.sqrt((1.0 - alpha_bar) / alpha_bar)


def vp_coefficients(sigma):
    """§6, VP: `(alpha, beta) = (1, sigma) / sqrt(1 + sigma^2)` for a VE level `sigma`."""
    (sigma,) = _tensors(sigma)
    alpha = 1.0 / ops.sqrt(1.0 + ops.square(sigma))
    return alpha, sigma * alpha


def flow_sigma(t):
    """§6, rectified flow: `sigma = t / (1 - t)` (`alpha = 1 - t`, `beta = t`)."""
    (t,) = _tensors(t)
    return t / (1.0 - t)


def flow_time(sigma):
    """§6, rectified flow: `t = sigma / (1 + sigma)`, the inverse of `flow_sigma`."""
    (sigma,) = _tensors(sigma)
    return sigma / (1.0 + sigma)


def x0_from_epsilon(x_t, eps_hat, alpha, beta):
    """§6, epsilon-prediction: `x0_hat = (x_t - beta eps_hat) / alpha`."""
    x_t, eps_hat, alpha, beta = _tensors(x_t, eps_hat, alpha, beta)
    return (x_t - expand_to(beta, x_t) * eps_hat) / expand_to(alpha, x_t)


def x0_from_v(x_t, v_hat, alpha, beta):
    """§6, v-prediction (`v = alpha eps - beta x0`, alpha^2 + beta^2 = 1): `x0_hat = alpha x_t - beta v_hat`."""
    x_t, v_hat, alpha, beta = _tensors(x_t, v_hat, alpha, beta)
    return expand_to(alpha, x_t) * x_t - expand_to(beta, x_t) * v_hat


def x0_from_velocity(x_t, velocity_hat, t):
    """§6, rectified flow (`v = eps - x0`): `x0_hat = x_t - t v_hat`."""
    x_t, velocity_hat, t = _tensors(x_t, velocity_hat, t)
    return x_t - expand_to(t, x_t) * velocity_hat
