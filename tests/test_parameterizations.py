"""docs/method.md §6: VP / flow parameterizations against closed forms."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_ambient as ka
from keras_ambient import equations
from tests.harness import assert_config_round_trip, to_numpy

SD = ka.schedules.VPSchedule.stable_diffusion()


def test_vp_schedule_reproduces_the_papers_noise_levels():
    # The paper noised SDXL latents at VP timesteps 100/500/800, i.e. sqrt(1 - abar)
    # = 0.325 / 0.850 / 0.981 (SDXL shares SD's scaled-linear schedule).
    sigma = to_numpy(SD.timestep_to_sigma(np.array([100.0, 500.0, 800.0], "float32")))
    _, beta = equations.vp_coefficients(sigma)
    np.testing.assert_allclose(to_numpy(beta), [0.325, 0.850, 0.981], atol=1.5e-3)
    # Independent closed form of the schedule at the integer steps.
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(sigma, np.sqrt((1 - abar) / abar)[[100, 500, 800]], rtol=1e-5)
    assert SD.sigma_min == pytest.approx(np.sqrt((1 - abar[0]) / abar[0]))
    assert SD.sigma_max == pytest.approx(np.sqrt((1 - abar[-1]) / abar[-1]))


@pytest.mark.parametrize("schedule", [SD, ka.schedules.VPSchedule.ddpm(),
                                      ka.schedules.VPSchedule("squaredcos_cap_v2")])
def test_vp_timestep_sigma_round_trip(schedule):
    t = np.random.default_rng(0).uniform(0, schedule.num_timesteps - 1, size=64).astype("float32")
    t = np.concatenate([t, [0.0, schedule.num_timesteps - 1.0, 1.0, 17.5]]).astype("float32")
    sigma = to_numpy(schedule.timestep_to_sigma(t))
    assert np.all(np.diff(sigma[np.argsort(t)]) > 0), "sigma increases with the timestep"
    np.testing.assert_allclose(to_numpy(schedule.sigma_to_timestep(sigma)), t, atol=2e-3)
    back = to_numpy(schedule.timestep_to_sigma(schedule.sigma_to_timestep(sigma)))
    np.testing.assert_allclose(back, sigma, rtol=1e-4)
    # Outside the schedule the timestep is clipped to its ends.
    ends = to_numpy(schedule.sigma_to_timestep(np.array([1e-6, 1e6], "float32")))
    np.testing.assert_allclose(ends, [0.0, schedule.num_timesteps - 1], atol=1e-4)


def test_flow_conversions_and_shift():
    t = np.linspace(0.01, 0.99, 50).astype("float32")
    sigma = to_numpy(equations.flow_sigma(t))
    np.testing.assert_allclose(sigma, t / (1 - t), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(equations.flow_time(sigma)), t, rtol=1e-5)
    # SD3's shift t' = s t / (1 + (s - 1) t) is the VE scaling sigma' = s sigma.
    s = 3.0
    shifted = s * t / (1 + (s - 1) * t)
    np.testing.assert_allclose(to_numpy(equations.flow_sigma(shifted)), s * sigma, rtol=1e-4)


def test_vp_schedule_validation_and_config():
    with pytest.raises(ValueError, match="beta_schedule"):
        ka.schedules.VPSchedule("quadratic")
    with pytest.raises(ValueError, match="strictly decreasing"):
        ka.schedules.VPSchedule(alphas_cumprod=[0.5, 0.9])
    with pytest.raises(ValueError, match="alphas_cumprod"):
        ka.schedules.VPSchedule(alphas_cumprod=[0.9, 0.0])
    explicit = ka.schedules.VPSchedule(alphas_cumprod=SD.alphas_cumprod)
    np.testing.assert_allclose(explicit.sigmas, SD.sigmas)
    for schedule in (SD, explicit):
        clone = assert_config_round_trip(schedule)
        np.testing.assert_allclose(clone.sigmas, schedule.sigmas)


# ----------------------------------------------------------------------------
# Oracle networks for Gaussian data x0 ~ N(0, v I): their exact predictions in
# each parameterization. Every denoiser must then return the VE posterior mean
# E[x0 | x_sigma = x] = v / (v + sigma^2) x.

V = 0.36


class _VPOracle(keras.layers.Layer):
    def __init__(self, prediction, **kwargs):
        super().__init__(**kwargs)
        self.prediction = prediction

    def call(self, inputs):
        x_vp, timestep = inputs
        sigma = SD.timestep_to_sigma(timestep)
        alpha, beta = equations.vp_coefficients(sigma)
        alpha = ops.reshape(alpha, (-1, 1))
        beta = ops.reshape(beta, (-1, 1))
        total = ops.square(alpha) * V + ops.square(beta)
        eps = beta / total * x_vp
        x0 = alpha * V / total * x_vp
        if self.prediction == "epsilon":
            return eps
        if self.prediction == "v":
            return alpha * eps - beta * x0
        return x0


class _FlowOracle(keras.layers.Layer):
    def call(self, inputs):
        x_t, timestep = inputs
        t = ops.reshape(timestep / 1000.0, (-1, 1))
        total = ops.square(1 - t) * V + ops.square(t)
        return (t / total - (1 - t) * V / total) * x_t  # E[eps - x0 | x_t]


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_vp_denoiser_is_the_ve_posterior_mean(prediction):
    D = ka.layers.VPDenoiser(_VPOracle(prediction), SD, prediction=prediction)
    x = np.random.default_rng(1).normal(size=(6, 3)).astype("float32") * 3
    sigma = np.array([0.05, 0.3, 0.9, 2.0, 5.0, 12.0], "float32")
    out = to_numpy(D([x, sigma]))
    np.testing.assert_allclose(out, V / (V + sigma[:, None] ** 2) * x, rtol=2e-4, atol=1e-5)


def test_flow_denoiser_is_the_ve_posterior_mean():
    D = ka.layers.FlowDenoiser(_FlowOracle(), shift=3.0)
    x = np.random.default_rng(2).normal(size=(5, 3)).astype("float32") * 3
    sigma = np.array([0.01, 0.3, 1.0, 4.0, 50.0], "float32")
    np.testing.assert_allclose(to_numpy(D([x, sigma])), V / (V + sigma[:, None] ** 2) * x,
                               rtol=1e-4, atol=1e-5)


def test_ambient_loss_in_vp_form_equals_the_ve_computation():
    # Paper Theorem A.5: in VP coordinates the ambient target E[x_{t_n} | x_t] is the
    # DDPM posterior mean with x0_hat in place of x0; its squared error equals
    # abar_n times the VE one (M3) on the same batch.
    rng = np.random.default_rng(3)
    n, dim = 8, 5
    x0 = rng.normal(size=(n, dim)).astype("float32")
    t_n = np.full((n,), 100.0, "float32")
    t_t = rng.uniform(150, 900, size=n).astype("float32")
    abar_n = 1 / (1 + to_numpy(SD.timestep_to_sigma(t_n)) ** 2)
    abar_t = 1 / (1 + to_numpy(SD.timestep_to_sigma(t_t)) ** 2)
    z, z2 = rng.normal(size=(2, n, dim)).astype("float32")
    x0_hat = x0 + 0.3 * rng.normal(size=(n, dim)).astype("float32")  # an imperfect denoiser

    # VP form.
    y_vp = np.sqrt(abar_n)[:, None] * x0 + np.sqrt(1 - abar_n)[:, None] * z
    a_tn = abar_t / abar_n
    x_vp = np.sqrt(a_tn)[:, None] * y_vp + np.sqrt(1 - a_tn)[:, None] * z2
    mean_vp = ((np.sqrt(abar_n) * (1 - a_tn) / (1 - abar_t))[:, None] * x0_hat
               + (np.sqrt(a_tn) * (1 - abar_n) / (1 - abar_t))[:, None] * x_vp)
    vp_err = np.mean((mean_vp - y_vp) ** 2, axis=1)

    # VE form with the library's M1 / M3.
    sigma_n = np.sqrt((1 - abar_n) / abar_n)
    sigma_t = np.sqrt((1 - abar_t) / abar_t)
    y_ve = y_vp / np.sqrt(abar_n)[:, None]
    x_ve = to_numpy(equations.add_diffusion_noise(
        y_ve, sigma_n, sigma_t, z2 * (np.sqrt(1 - a_tn) / np.sqrt(abar_t) / np.sqrt(sigma_t ** 2 - sigma_n ** 2))[:, None]))
    np.testing.assert_allclose(x_ve, x_vp / np.sqrt(abar_t)[:, None], rtol=1e-4, atol=1e-5)
    y_hat = to_numpy(equations.noisy_data_prediction(x0_hat, x_ve, sigma_t, sigma_n))
    ve_err = np.mean((y_hat - y_ve) ** 2, axis=1)
    np.testing.assert_allclose(vp_err, abar_n * ve_err, rtol=1e-3)


def test_denoiser_training_distributions():
    u = keras.random.uniform((20000,), seed=0)
    sigma_n = ops.full((20000,), 0.5)
    # VP: timesteps uniform on (t(sigma_n), 999].
    vp = ka.layers.VPDenoiser(_VPOracle("epsilon"), SD)
    sigma = to_numpy(vp.sample_training_sigma(u, sigma_n))
    assert np.all(sigma > 0.5)
    t = to_numpy(SD.sigma_to_timestep(sigma))
    t_n = float(to_numpy(SD.sigma_to_timestep(np.array([0.5], "float32")))[0])
    assert np.mean(t) == pytest.approx((t_n + 999) / 2, abs=3.0)
    assert np.var(t) == pytest.approx((999 - t_n) ** 2 / 12, rel=0.05)
    # Flow: ln sigma ~ N(ln shift, 1) truncated to sigma > sigma_n (SD3's shifted logit-normal).
    flow = ka.layers.FlowDenoiser(_FlowOracle(), shift=3.0)
    log_sigma = np.log(to_numpy(flow.sample_training_sigma(u, sigma_n)))
    a = math.log(0.5) - math.log(3.0)
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    mean = math.log(3.0) + phi / (1 - 0.5 * (1 + math.erf(a / math.sqrt(2))))
    assert np.all(log_sigma > math.log(0.5))
    assert np.mean(log_sigma) == pytest.approx(mean, abs=0.03)
    # The ambient loss draws from the denoiser's law and refuses denoisers without one.
    loss = ka.losses.AmbientLoss(noise_distribution="denoiser")
    drawn = to_numpy(loss.sample_sigma(sigma_n, keras.random.SeedGenerator(0), denoiser=vp))
    assert np.all(drawn > 0.5) and np.all(drawn <= SD.sigma_max + 1e-3)
    edm = ka.layers.EDMDenoiser(ka.networks.MLPDenoiser(data_dim=2, hidden_units=8, num_blocks=1))
    with pytest.raises(ValueError, match="noise_distribution='denoiser'"):
        loss.sample_sigma(sigma_n, keras.random.SeedGenerator(0), denoiser=edm)


def test_denoiser_errors():
    with pytest.raises(TypeError, match="schedule"):
        ka.layers.VPDenoiser(_VPOracle("epsilon"), schedule="sd")
    with pytest.raises(ValueError, match="prediction"):
        ka.layers.VPDenoiser(_VPOracle("epsilon"), prediction="noise")
    with pytest.raises(ValueError, match="shift"):
        ka.layers.FlowDenoiser(_FlowOracle(), shift=0.0)
    D = ka.layers.FlowDenoiser(_FlowOracle())
    with pytest.raises(ValueError, match="expects"):
        D(np.zeros((2, 3), "float32"))
