"""M1-M5 against NumPy and closed forms (docs/method.md §8)."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_ambient import equations
from tests.harness import to_numpy


def test_edm_preconditioning_matches_formula():
    sigma = np.array([0.002, 0.2, 1.0, 80.0], "float32")
    sd = 0.5
    c_skip, c_out, c_in, c_noise = (to_numpy(c) for c in equations.edm_preconditioning(sigma, sd))
    np.testing.assert_allclose(c_skip, sd**2 / (sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_out, sigma * sd / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_noise, np.log(sigma) / 4, rtol=1e-6)
    # Unit variance of the network's input and target (EDM's design rule).
    np.testing.assert_allclose(c_in**2 * (sd**2 + sigma**2), 1.0, rtol=1e-5)


def test_add_diffusion_noise_has_the_right_variance():
    rng = np.random.default_rng(0)
    y = np.zeros((20000, 2), "float32")
    z = rng.standard_normal(y.shape).astype("float32")
    x_t = to_numpy(equations.add_diffusion_noise(y, 0.3, 0.5, z))
    np.testing.assert_allclose(x_t.var(), 0.5**2 - 0.3**2, rtol=0.03)


def test_noisy_data_prediction_is_double_tweedie_for_gaussians():
    # Gaussian x0 ~ N(0, s^2): E[x0|x_t] = s^2/(s^2+t^2) x, E[y|x_t] = (s^2+sn^2)/(s^2+t^2) x.
    s, sn, t = 0.7, 0.3, 0.9
    x = np.linspace(-2, 2, 9).astype("float32")[:, None]
    clean = s**2 / (s**2 + t**2) * x
    y_hat = to_numpy(equations.noisy_data_prediction(clean, x, np.full((9,), t, "float32"),
                                                     np.full((9,), sn, "float32")))
    np.testing.assert_allclose(y_hat, (s**2 + sn**2) / (s**2 + t**2) * x, rtol=1e-5, atol=1e-7)


def test_edm_weight_and_ambient_scale():
    sigma = np.array([0.1, 1.0], "float32")
    np.testing.assert_allclose(to_numpy(equations.edm_loss_weight(sigma, 0.5)),
                               (sigma**2 + 0.25) / (sigma * 0.5) ** 2, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(equations.ambient_scale(np.float32(0.5), np.float32(0.3))),
                               (0.25 - 0.09) / 0.25, rtol=1e-6)


def test_reverse_step_mean_and_variance():
    """M5 with fixed x_t and x0_hat: mean x0 + s^2/t^2 (x_t - x0), var s^2 (1 - s^2/t^2)."""
    n, t, s = 40000, 1.0, 0.4
    x_t = np.full((n, 1), 1.5, "float32")
    x0_hat = np.full((n, 1), -0.5, "float32")
    noise = np.random.default_rng(1).standard_normal((n, 1)).astype("float32")
    x_s = to_numpy(equations.reverse_step(x_t, x0_hat, np.full((n,), t, "float32"),
                                          np.full((n,), s, "float32"), noise))
    mean = -0.5 + s**2 / t**2 * 2.0
    std = s * math.sqrt(1 - s**2 / t**2)
    assert abs(x_s.mean() - mean) < 4 * std / math.sqrt(n)
    np.testing.assert_allclose(x_s.std(), std, rtol=0.02)


def test_reverse_step_is_exact_in_law_given_x0():
    """x_t = x0 + t z and x_s = M5(x_t, x0) gives x_s - x0 ~ N(0, s^2)."""
    rng = np.random.default_rng(2)
    n, t, s = 40000, 2.0, 0.5
    x0 = rng.uniform(-1, 1, size=(n, 2)).astype("float32")
    x_t = x0 + t * rng.standard_normal((n, 2)).astype("float32")
    x_s = to_numpy(equations.reverse_step(x_t, x0, np.float32(t), np.float32(s),
                                          rng.standard_normal((n, 2)).astype("float32")))
    np.testing.assert_allclose((x_s - x0).std(axis=0), [s, s], rtol=0.02)
    np.testing.assert_allclose(np.corrcoef((x_s - x0)[:, 0], (x_t - x0)[:, 0])[0, 1], s / t, atol=0.02)


def test_consistency_product_is_unbiased_and_one_draw_square_is_not():
    """E[(a1 - c).(a2 - c)] = ||E a - c||^2 for independent draws (docs/method.md §8)."""
    rng = np.random.default_rng(3)
    n, dim = 50000, 4
    mu, c, std = np.array([0.3, -0.2, 0.1, 0.0]), np.zeros(4), 0.5
    a1 = (mu + std * rng.standard_normal((n, dim))).astype("float32")
    a2 = (mu + std * rng.standard_normal((n, dim))).astype("float32")
    target = np.broadcast_to(c, (n, dim)).astype("float32")
    est = to_numpy(equations.consistency_product(a1, a2, target))
    truth = np.mean((mu - c) ** 2)
    se = est.std() / math.sqrt(n)
    assert abs(est.mean() - truth) < 4 * se
    one_draw = np.mean((a1 - target) ** 2, axis=1)
    assert one_draw.mean() - truth > 0.9 * std**2  # biased by the variance


def test_u_statistic_is_unbiased_and_equals_the_product_for_two_draws():
    """All-pairs M4 with K draws: E = ||E a - c||^2 (§8), like the 2-draw product,
    with a smaller variance per start point; K = 2 is the product itself."""
    rng = np.random.default_rng(5)
    n, dim, std = 40000, 4, 0.5
    mu, c = np.array([0.3, -0.2, 0.1, 0.0]), np.array([0.1, 0.0, 0.0, 0.2])
    draws = [(mu + std * rng.standard_normal((n, dim))).astype("float32") for _ in range(6)]
    target = np.broadcast_to(c, (n, dim)).astype("float32")
    truth = np.mean((mu - c) ** 2)
    two = to_numpy(equations.consistency_u_statistic(draws[:2], target))
    np.testing.assert_allclose(two, to_numpy(equations.consistency_product(draws[0], draws[1], target)),
                               rtol=1e-5, atol=1e-6)
    six = to_numpy(equations.consistency_u_statistic(draws, target))
    assert abs(six.mean() - truth) < 4 * six.std() / math.sqrt(n)
    # Variance of the pair average: 2 v^2/(K(K-1)) + 4 v b/K per dimension (v = std^2,
    # b = squared bias), averaged over dimensions: K = 6 is far below K = 2.
    assert six.var() < 0.5 * two.var()
    with pytest.raises(ValueError, match="Received: 1 draw"):
        equations.consistency_u_statistic(draws[:1], target)


def test_plug_in_estimate_is_biased_by_the_variance_over_k():
    """||mean of K draws - c||^2 has expectation ||E a - c||^2 + std^2 / K per dimension."""
    rng = np.random.default_rng(6)
    n, dim, std, k = 40000, 3, 0.4, 6
    mu, c = np.array([0.2, 0.0, -0.1]), np.zeros(3)
    draws = [(mu + std * rng.standard_normal((n, dim))).astype("float32") for _ in range(k)]
    est = to_numpy(equations.consistency_plug_in(draws, np.zeros((n, dim), "float32")))
    expected = np.mean((mu - c) ** 2) + std**2 / k
    assert abs(est.mean() - expected) < 4 * est.std() / math.sqrt(n)


def test_truncated_log_normal_respects_bound_and_law():
    rng = np.random.default_rng(4)
    n = 50000
    u = rng.uniform(size=(n,)).astype("float32")
    # sigma_n = 0: the plain log-normal.
    sig = to_numpy(equations.truncated_log_normal_sigma(u, np.zeros((n,), "float32"), -1.2, 1.2))
    np.testing.assert_allclose(np.log(sig).mean(), -1.2, atol=0.03)
    np.testing.assert_allclose(np.log(sig).std(), 1.2, rtol=0.02)
    # sigma_n = 0.3: conditional law of the log-normal above 0.3.
    sn = np.full((n,), 0.3, "float32")
    sig = to_numpy(equations.truncated_log_normal_sigma(u, sn, -1.2, 1.2))
    assert np.all(sig > 0.3)
    ref = np.exp(-1.2 + 1.2 * rng.standard_normal(2_000_000))
    ref = ref[ref > 0.3]
    np.testing.assert_allclose(np.median(sig), np.median(ref), rtol=0.03)
    np.testing.assert_allclose(np.quantile(sig, 0.9), np.quantile(ref, 0.9), rtol=0.05)
    # Per-sample bounds, including a high one and a clean sample.
    sn = np.array([0.0, 0.05, 2.0, 20.0] * 1000, "float32")
    sig = to_numpy(equations.truncated_log_normal_sigma(u[:4000], sn, -1.2, 1.2, sigma_upper=80.0))
    assert np.all(sig > sn) and np.all(np.isfinite(sig)) and np.all(sig <= 80.0)


def test_expand_to_broadcasts_per_sample_levels():
    x = ops.zeros((3, 4, 4, 1))
    assert tuple(equations.expand_to(np.ones((3,), "float32"), x).shape) == (3, 1, 1, 1)
