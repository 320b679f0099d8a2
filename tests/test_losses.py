"""AmbientLoss (M1, M3) and ConsistencyLoss (M4, M5) against closed forms."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_ambient as ka
from keras_ambient import equations
from tests.harness import assert_config_round_trip, to_numpy

S2 = 0.6**2  # variance of the Gaussian data x0 ~ N(0, S2 I)


def gaussian_denoiser(scale_below=1.0, threshold=0.0, var=S2):
    """Exact E[x0 | x_sigma] = var/(var + sigma^2) x, optionally scaled below `threshold`."""

    def D(inputs, training=None):
        x, sigma = inputs[0], ops.cast(inputs[1], "float32")
        k = var / (var + ops.square(sigma))
        k = ops.where(sigma < threshold, scale_below * k, k)
        return equations.expand_to(k, x) * x

    return D


def gaussian_batch(n, dim, sigma_n, seed):
    rng = np.random.default_rng(seed)
    x0 = math.sqrt(S2) * rng.standard_normal((n, dim))
    return (x0 + sigma_n * rng.standard_normal((n, dim))).astype("float32")


def test_ambient_loss_value_matches_m3_by_hand():
    loss_fn = ka.losses.AmbientLoss(sigma_data=0.5, weighting="edm")
    y = gaussian_batch(512, 3, 0.3, seed=0)
    sigma_n = np.full((512,), 0.3, "float32")
    out = loss_fn(gaussian_denoiser(), y, sigma_n, seed=keras.random.SeedGenerator(1))
    x_t, sigma_t, denoised = (to_numpy(v) for v in (out.x_t, out.sigma_t, out.denoised))
    assert np.all(sigma_t > 0.3)
    r = (0.3**2 / sigma_t**2)[:, None]
    y_hat = (1 - r) * denoised + r * x_t
    w = (sigma_t**2 + 0.25) / (sigma_t**2 * 0.25)
    np.testing.assert_allclose(to_numpy(out.loss), w * np.mean((y_hat - y) ** 2, axis=1), rtol=2e-4)
    # M1: x_t - y has variance sigma_t^2 - sigma_n^2.
    z = (x_t - y) / np.sqrt(sigma_t**2 - 0.09)[:, None]
    np.testing.assert_allclose(z.std(), 1.0, rtol=0.05)


def test_ambient_loss_with_clean_data_is_the_edm_loss():
    loss_fn = ka.losses.AmbientLoss(sigma_data=0.5)
    y = gaussian_batch(256, 2, 0.0, seed=1)
    out = loss_fn(gaussian_denoiser(), y, np.zeros((256,), "float32"), seed=3)
    s = to_numpy(out.sigma_t)
    edm = (s**2 + 0.25) / (s**2 * 0.25) * np.mean((to_numpy(out.denoised) - y) ** 2, axis=1)
    np.testing.assert_allclose(to_numpy(out.loss), edm, rtol=2e-4)


def _mean_loss(loss_fn, D, y, sigma_n, seed=7):
    return float(np.mean(to_numpy(loss_fn(D, y, sigma_n, seed=keras.random.SeedGenerator(seed)).loss)))


@pytest.mark.parametrize("weighting", ["edm", "unbiased"])
def test_m3_is_minimised_by_the_clean_denoiser_not_the_noisy_one(weighting):
    """Theorem 3.1 by Monte Carlo with common random numbers: among denoisers
    k(sigma) x, the expected M3 loss is smallest for the CLEAN posterior mean;
    the plain loss (sigma_n = 0 on the same noisy data) prefers E[y | x_t]."""
    sn, n = 0.5, 200_000
    y = gaussian_batch(n, 1, sn, seed=2)
    ambient = ka.losses.AmbientLoss(sigma_data=0.6, weighting=weighting)
    sig_n = np.full((n,), sn, "float32")
    clean = gaussian_denoiser(var=S2)
    noisy = gaussian_denoiser(var=S2 + sn**2)  # the posterior mean of y (plain DSM's target)
    too_sharp = gaussian_denoiser(var=S2 - 0.08)
    l_clean = _mean_loss(ambient, clean, y, sig_n)
    assert l_clean < _mean_loss(ambient, noisy, y, sig_n)
    assert l_clean < _mean_loss(ambient, too_sharp, y, sig_n)
    plain = ka.losses.AmbientLoss(sigma_data=0.6, weighting=weighting)
    zeros = np.zeros((n,), "float32")
    assert _mean_loss(plain, noisy, y, zeros) < _mean_loss(plain, clean, y, zeros)


def test_unbiased_weighting_and_cap():
    fn = ka.losses.AmbientLoss(sigma_data=0.5, weighting="unbiased", max_weight_ratio=10.0)
    sigma_t = np.array([0.31, 1.0], "float32")
    sigma_n = np.array([0.3, 0.3], "float32")
    w = to_numpy(fn.weight(sigma_t, sigma_n))
    lam = (sigma_t**2 + 0.25) / (sigma_t**2 * 0.25)
    a = (sigma_t**2 - sigma_n**2) / sigma_t**2
    np.testing.assert_allclose(w, lam * np.minimum(1 / a**2, 10.0), rtol=1e-5)
    assert w[0] == pytest.approx(lam[0] * 10.0, rel=1e-5)  # capped near sigma_n


def test_uniform_noise_distribution_bounds():
    fn = ka.losses.AmbientLoss(noise_distribution="uniform", sigma_max=3.0)
    sn = np.array([0.0, 0.5, 2.0] * 2000, "float32")
    s = to_numpy(fn.sample_sigma(sn, keras.random.SeedGenerator(0)))
    assert np.all(s > sn) and np.all(s <= 3.0)
    np.testing.assert_allclose(s[sn == 2.0].mean(), 2.5, atol=0.03)
    # A Python scalar `sigma_n` draws one level, from the same law.
    one = to_numpy(fn.sample_sigma(2.0, keras.random.SeedGenerator(0)))
    assert one.shape == () and 2.0 < one <= 3.0


def test_training_levels_are_the_inverse_cdf_of_a_uniform_draw():
    """`sigma_from_uniform` is the inverse CDF of the log-normal law truncated above
    sigma_n: u = 0 gives sigma_n, u = 0.5 the law's median (exp(p_mean) untruncated)."""
    fn = ka.losses.AmbientLoss(p_mean=-1.0, p_std=1.5)
    u = np.array([0.0, 0.5, 0.5], "float32")
    sn = np.array([0.3, 0.0, 0.3], "float32")
    s = to_numpy(fn.sigma_from_uniform(u, sn))
    assert s[0] == pytest.approx(0.3, rel=1e-3)
    assert s[1] == pytest.approx(np.exp(-1.0), rel=1e-4)
    from scipy.stats import norm
    a = norm.cdf((np.log(0.3) + 1.0) / 1.5)  # the law's median above 0.3
    assert s[2] == pytest.approx(np.exp(-1.0 + 1.5 * norm.ppf(a + 0.5 * (1 - a))), rel=1e-4)


@pytest.mark.parametrize("start, num_steps", [("ambient", 1), ("ambient", 3), ("data", 1), ("data", 2)])
def test_consistency_loss_vanishes_for_the_exact_denoiser(start, num_steps):
    """For Gaussian data the exact denoiser is a martingale under M5 moves (their
    mean is exact and D is linear), so the unbiased M4 estimator averages to zero."""
    sn, n = 0.4, 100_000
    y = gaussian_batch(n, 2, sn, seed=4)
    sig_n = np.full((n,), sn, "float32")
    D = gaussian_denoiser()
    seed = keras.random.SeedGenerator(5)
    amb = ka.losses.AmbientLoss(sigma_data=0.6)(D, y, sig_n, seed=seed)
    loss = to_numpy(ka.losses.ConsistencyLoss(start=start, num_steps=num_steps, chain="ddpm",
                                              batch_fraction=1.0)(
        D, y, sig_n, ambient_output=amb, seed=seed))
    assert loss.shape == (n,)
    assert abs(loss.mean()) < 4 * loss.std() / math.sqrt(n)


def test_consistency_loss_matches_closed_form_for_a_wrong_denoiser():
    """D scaled by c below sigma_n, start at the data (t = sigma_n, all s < t),
    one reverse step from the correct D(y; sigma_n):
    E[loss | y] = (c - 1)^2 k(sigma_n)^2 mean(y^2)."""
    sn, n, c = 0.4, 100_000, 1.3
    y = gaussian_batch(n, 2, sn, seed=6)
    sig_n = np.full((n,), sn, "float32")
    D = gaussian_denoiser(scale_below=c, threshold=sn - 1e-4)
    cons = ka.losses.ConsistencyLoss(start="data", num_steps=1, chain="ddpm", batch_fraction=1.0)
    loss = to_numpy(cons(D, y, sig_n, seed=keras.random.SeedGenerator(8)))
    k = S2 / (S2 + sn**2)
    expected = (c - 1) ** 2 * k**2 * np.mean(y**2, axis=1)
    assert abs(loss.mean() - expected.mean()) < 4 * loss.std() / math.sqrt(n)
    assert expected.mean() > 10 * loss.std() / math.sqrt(n)  # the test can tell


def mixture_denoiser(gm):
    """The exact E[x0 | x_sigma] of a Gaussian mixture (closed form, §8), eager."""

    def D(inputs, training=None):
        x = np.asarray(to_numpy(inputs[0]), "float64")
        sigma = np.asarray(to_numpy(inputs[1]), "float64").reshape(-1)
        return ops.convert_to_tensor(gm.posterior_mean(x, sigma), dtype="float32")

    return D


def _chain_z_score(cons, n=60_000, sigma_n=0.2):
    """M4 mean / standard error for the exact denoiser of 8 Gaussians (std 0.05),
    starting at y, t = sigma_n: ~N(0, 1) for an honest chain, large for a biased one."""
    gm = ka.data.GaussianMixture.circle(8, 1.0, 0.05)
    y = ka.data.add_noise(gm.sample(n, seed=11), sigma_n, seed=12)
    loss = to_numpy(cons(mixture_denoiser(gm), y, np.full((n,), sigma_n, "float32"),
                         seed=keras.random.SeedGenerator(13)))
    assert loss.shape == (n,)
    return loss.mean() / (loss.std() / math.sqrt(n))


def test_default_consistency_chain_is_honest_for_the_exact_mixture_denoiser():
    """The exact denoiser is a martingale along the true reverse process: with an
    honest chain (the default: Euler–Maruyama, 7 EDM-spaced steps) the M4 average
    is within the Monte-Carlo error of zero."""
    z = _chain_z_score(ka.losses.ConsistencyLoss(batch_fraction=1.0))
    assert abs(z) < 3.5, z


def test_more_draws_keep_the_chain_honest_and_lower_the_variance():
    """K = 4 draws per start point (all-pairs M4): still unbiased for the exact
    denoiser, with a lower per-sample variance than the 2-draw product."""
    gm = ka.data.GaussianMixture.circle(8, 1.0, 0.05)
    n, sigma_n = 40_000, 0.2
    y = ka.data.add_noise(gm.sample(n, seed=11), sigma_n, seed=12)
    levels = np.full((n,), sigma_n, "float32")
    losses = {}
    for k in (2, 4):
        cons = ka.losses.ConsistencyLoss(batch_fraction=1.0, num_draws=k)
        losses[k] = to_numpy(cons(mixture_denoiser(gm), y, levels, seed=keras.random.SeedGenerator(13)))
        assert losses[k].shape == (n,)
        assert abs(losses[k].mean()) < 3.5 * losses[k].std() / math.sqrt(n), k
    assert losses[4].var() < 0.6 * losses[2].var()


def test_plug_in_estimator_is_biased_by_the_spread_of_the_draws():
    """The plug-in estimate ||mean_K D(x_s; s) - D(x_t; t)||^2 of the exact denoiser
    is positive (its bias Var/K), while the unbiased estimator of the same draws is ~0."""
    gm = ka.data.GaussianMixture.circle(8, 1.0, 0.05)
    n, sigma_n = 20_000, 0.2
    y = ka.data.add_noise(gm.sample(n, seed=11), sigma_n, seed=12)
    levels = np.full((n,), sigma_n, "float32")
    plug = to_numpy(ka.losses.ConsistencyLoss(batch_fraction=1.0, num_draws=4, estimator="plug_in")(
        mixture_denoiser(gm), y, levels, seed=keras.random.SeedGenerator(13)))
    assert plug.min() >= 0
    assert plug.mean() > 10 * plug.std() / math.sqrt(n)


def test_two_linear_m5_moves_are_a_biased_chain():
    """The old default (2 linearly spaced M5 moves) is exact in mean but not in
    law: the same test tells it apart from an honest chain."""
    z = _chain_z_score(ka.losses.ConsistencyLoss(chain="ddpm", spacing="linear", num_steps=2,
                                                 batch_fraction=1.0))
    assert z > 6, z


def test_reverse_sde_step_matches_the_equation():
    rng = np.random.default_rng(0)
    x, d, z = (rng.standard_normal((5, 3)).astype("float32") for _ in range(3))
    a, b = np.full((5,), 0.3, "float32"), np.linspace(0.05, 0.25, 5).astype("float32")
    got = to_numpy(equations.reverse_sde_step(x, d, a, b, z))
    want = x + 2 * (b - a)[:, None] * (x - d) / a[:, None] + np.sqrt(2 * (a - b) * a)[:, None] * z
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spacing", ["edm", "geometric", "linear"])
def test_chain_levels_run_from_t_to_s_and_decrease(spacing):
    t = np.array([0.2, 1.0], "float32")
    s = np.array([0.01, 0.5], "float32")
    levels = np.stack([to_numpy(v) for v in equations.chain_levels(t, s, 5, spacing, 7.0)])
    np.testing.assert_allclose(levels[0], t)
    np.testing.assert_allclose(levels[-1], s)
    assert np.all(np.diff(levels, axis=0) < 0)
    if spacing == "edm":  # EDM's schedule between the two ends
        ramp = np.arange(6)[:, None] / 5
        want = (t ** (1 / 7) + ramp * (s ** (1 / 7) - t ** (1 / 7))) ** 7
        np.testing.assert_allclose(levels, want, rtol=1e-5)
    if spacing == "geometric":
        np.testing.assert_allclose(levels[1] / levels[0], (s / t) ** 0.2, rtol=1e-5)


def test_consistency_sub_batch():
    cons = ka.losses.ConsistencyLoss(batch_fraction=0.25)
    assert cons.subbatch_size(32) == 8 and cons.subbatch_size(3) == 1 and cons.subbatch_size(1) == 1
    y = gaussian_batch(10, 2, 0.3, seed=3)
    loss = to_numpy(cons(gaussian_denoiser(scale_below=2.0, threshold=0.29), y,
                         np.full((10,), 0.3, "float32"), seed=1))
    assert loss.shape == (3,) and np.all(loss != 0)
    full = ka.losses.ConsistencyLoss(batch_fraction=1.0)
    assert full.subbatch_size(10) == 10


def test_consistency_target_denoiser_drives_the_chain():
    """With a target denoiser T (e.g. the EMA network), the target is T(y; t) and
    one M5 move uses T's x0_hat; D(x_s; s) is the trained denoiser. At a fixed s:
    E[loss | y] = (k_s (k_T + r (1 - k_T)) - k_T)^2 mean(y^2), r = s^2/t^2."""
    sn, n, s_level = 0.4, 100_000, 0.1
    y = gaussian_batch(n, 2, sn, seed=4)
    sig_n = np.full((n,), sn, "float32")
    cons = ka.losses.ConsistencyLoss(chain="ddpm", num_steps=1, batch_fraction=1.0)
    cons.sample_lower_level = lambda t, seed: ops.full(ops.shape(t), s_level)
    exact = gaussian_denoiser()
    ok = to_numpy(cons(exact, y, sig_n, seed=2, target_denoiser=exact))
    assert abs(ok.mean()) < 4 * ok.std() / math.sqrt(n)
    teacher_var = 0.05  # a much smoother teacher
    loss = to_numpy(cons(exact, y, sig_n, seed=2, target_denoiser=gaussian_denoiser(var=teacher_var)))
    k_t, k_s, r = teacher_var / (teacher_var + sn**2), S2 / (S2 + s_level**2), s_level**2 / sn**2
    expected = (k_s * (k_t + r * (1 - k_t)) - k_t) ** 2 * np.mean(y**2)
    se = loss.std() / math.sqrt(n)
    assert abs(loss.mean() - expected) < 4 * se and expected > 10 * se


def test_consistency_loss_loads_old_configs_as_they_were_trained():
    old = {"start": "data", "num_steps": 2, "s_distribution": "uniform", "sigma_min": 0.002,
           "max_gap": None, "stop_gradient_target": True, "backprop_through_chain": False}
    cons = ka.losses.ConsistencyLoss.from_config(old)
    assert (cons.chain, cons.spacing, cons.batch_fraction) == ("ddpm", "linear", 1.0)


def test_consistency_loss_skips_clean_samples_when_starting_at_the_data():
    y = gaussian_batch(8, 2, 0.0, seed=9)
    D = gaussian_denoiser(scale_below=2.0, threshold=10.0)
    loss = to_numpy(ka.losses.ConsistencyLoss(start="data", batch_fraction=1.0)(
        D, y, np.zeros((8,), "float32"), seed=1))
    np.testing.assert_array_equal(loss, 0.0)


def test_lower_level_sampling():
    cons = ka.losses.ConsistencyLoss(max_gap=0.05, s_distribution="log_uniform")
    t = np.array([0.001, 0.3, 2.0] * 3000, "float32")
    s = to_numpy(cons.sample_lower_level(t, keras.random.SeedGenerator(0)))
    assert np.all(s < t + 1e-7) and np.all(s > 0) and np.all(s >= t - 0.05 - 1e-6)


def test_consistency_requires_the_ambient_output_for_ambient_start():
    with pytest.raises(ValueError, match="ambient_output"):
        ka.losses.ConsistencyLoss(start="ambient")(gaussian_denoiser(), np.zeros((2, 2), "float32"),
                                    np.zeros((2,), "float32"))


@pytest.mark.parametrize("obj", [ka.losses.AmbientLoss(weighting="unbiased", p_mean=-1.0),
                                 ka.losses.ConsistencyLoss(start="data", num_steps=3, max_gap=0.1,
                                                           chain="ddpm", spacing="geometric",
                                                           batch_fraction=0.5, num_draws=3,
                                                           estimator="plug_in")])
def test_loss_config_round_trip(obj):
    clone = assert_config_round_trip(obj)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert restored.get_config() == obj.get_config() == clone.get_config()


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (ka.losses.AmbientLoss, {"weighting": "l2"}, "weighting"),
        (ka.losses.AmbientLoss, {"noise_distribution": "cosine"}, "noise_distribution"),
        (ka.losses.AmbientLoss, {"p_std": 0.0}, "p_std"),
        (ka.losses.AmbientLoss, {"sigma_data": -1.0}, "sigma_data"),
        (ka.losses.ConsistencyLoss, {"start": "middle"}, "start"),
        (ka.losses.ConsistencyLoss, {"num_steps": 0}, "num_steps"),
        (ka.losses.ConsistencyLoss, {"s_distribution": "beta"}, "s_distribution"),
        (ka.losses.ConsistencyLoss, {"max_gap": -0.1}, "max_gap"),
        (ka.losses.ConsistencyLoss, {"chain": "heun"}, "chain"),
        (ka.losses.ConsistencyLoss, {"spacing": "cosine"}, "spacing"),
        (ka.losses.ConsistencyLoss, {"rho": 0.0}, "rho"),
        (ka.losses.ConsistencyLoss, {"batch_fraction": 0.0}, "batch_fraction"),
        (ka.losses.ConsistencyLoss, {"batch_fraction": 1.5}, "batch_fraction"),
        (ka.losses.ConsistencyLoss, {"num_draws": 1}, "num_draws"),
        (ka.losses.ConsistencyLoss, {"estimator": "mean"}, "estimator"),
    ],
)
def test_loss_bad_arguments(cls, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=f"Received: {match}"):
        cls(**kwargs)


@pytest.mark.parametrize("num_classes", [None, 3])
def test_model_shares_one_network_call_between_the_two_losses(num_classes):
    # AmbientDiffusion evaluates D(x_t; sigma_t) and the consistency loss's D(x_s; s)
    # in one call; with the same seed it must give the losses of separate calls.
    net = ka.networks.UNet((8, 8, 1), base_channels=8, channel_multipliers=(1, 2), seed=0,
                           num_classes=num_classes)
    model = ka.AmbientDiffusion(network=net, sigma_n=0.2, seed=0, data_shape=(8, 8, 1))
    model.build()
    rng = np.random.default_rng(0)  # non-zero output convolutions: a non-trivial D
    model.denoiser.set_weights([w + 0.05 * rng.normal(size=w.shape).astype("float32")
                                for w in model.denoiser.get_weights()])
    y = rng.normal(scale=0.5, size=(8, 8, 8, 1)).astype("float32")
    sigma_n = ops.convert_to_tensor(np.full((8,), 0.2, "float32"))
    labels = None if num_classes is None else ops.convert_to_tensor(np.arange(8) % 3)
    amb, cons = model._loss_terms(ops.convert_to_tensor(y), sigma_n, labels, True,
                                  seed=keras.random.SeedGenerator(11))
    seed = keras.random.SeedGenerator(11)
    amb_ref = model.ambient_loss(model.denoiser, y, sigma_n, condition=labels, seed=seed)
    cons_ref = model.consistency_loss(model.denoiser, y, sigma_n, ambient_output=amb_ref,
                                      condition=labels, seed=seed)
    assert to_numpy(cons).shape == (2,)  # a quarter of the batch
    np.testing.assert_allclose(to_numpy(amb.loss), to_numpy(amb_ref.loss), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(to_numpy(cons), to_numpy(cons_ref), rtol=1e-3, atol=1e-7)
    assert np.all(np.abs(to_numpy(cons)) > 0)
