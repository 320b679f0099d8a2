"""Samplers driven by the exact Gaussian denoiser reproduce the Gaussian (§5, §8)."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_ambient as ka
from tests.harness import to_numpy

MU = np.array([0.5, -1.0], "float32")
VAR = np.array([0.25, 0.04], "float32")  # x0 ~ N(MU, diag(VAR))
N = 20000


def exact_denoiser(x, sigma):
    gain = ops.convert_to_tensor(VAR / (VAR + np.float32(sigma) ** 2))
    return ops.convert_to_tensor(MU) + gain * (ops.convert_to_tensor(x) - ops.convert_to_tensor(MU))


def initial_noise(sigma_max, seed=0):
    return sigma_max * np.random.default_rng(seed).standard_normal((N, 2)).astype("float32")


def assert_gaussian(x, mean, var, rtol_std=0.03):
    x = to_numpy(x)
    se = np.sqrt(var / len(x))
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se + 1e-3), (x.mean(0), mean)
    np.testing.assert_allclose(x.std(0), np.sqrt(var), rtol=rtol_std)
    assert abs(np.corrcoef(x.T)[0, 1]) < 0.05


def test_edm_sigmas_formula():
    s = ka.samplers.edm_sigmas(5, 0.002, 80.0, 7.0)
    i = np.arange(5)
    expected = (80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s[:-1], expected, rtol=1e-5)
    assert s[-1] == 0 and len(s) == 6
    assert len(ka.samplers.edm_sigmas(5, append_zero=False)) == 5


def test_heun_reproduces_the_gaussian_and_counts_evaluations():
    sigmas = ka.samplers.edm_sigmas(32)
    calls = []

    def D(x, sigma):
        calls.append(sigma)
        return exact_denoiser(x, sigma)

    steps = []
    x = ka.samplers.sample_heun(D, initial_noise(80.0), sigmas, callback=steps.append)
    assert_gaussian(x, MU, VAR)
    assert len(calls) == 2 * 32 - 1  # NFE = 2N - 1: Euler on the last step to 0
    assert len(steps) == 32 and steps[-1]["i"] == 31


def test_heun_with_churn_reproduces_the_gaussian():
    # Churn adds an O(1/N) discretisation error (std +15% at N=16, +4.6% at 32,
    # +1.2% at 64, +0.1% at 128 measured): use enough steps to test the algorithm.
    sigmas = ka.samplers.edm_sigmas(128)
    x = ka.samplers.sample_heun(exact_denoiser, initial_noise(80.0), sigmas, s_churn=10.0,
                                s_tmin=0.05, s_tmax=50.0, seed=0)
    assert_gaussian(x, MU, VAR)


def test_euler_reproduces_the_gaussian():
    x = ka.samplers.sample_euler(exact_denoiser, initial_noise(80.0), ka.samplers.edm_sigmas(200))
    assert_gaussian(x, MU, VAR, rtol_std=0.04)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ancestral_reproduces_the_gaussian(eta):
    x = ka.samplers.sample_euler_ancestral(exact_denoiser, initial_noise(80.0),
                                           ka.samplers.edm_sigmas(200), eta=eta, seed=1)
    assert_gaussian(x, MU, VAR, rtol_std=0.04)


def test_ancestral_is_reproducible_with_a_seed():
    sigmas = ka.samplers.edm_sigmas(10)
    x0 = initial_noise(80.0)[:16]
    a = to_numpy(ka.samplers.sample_euler_ancestral(exact_denoiser, x0, sigmas, seed=3))
    b = to_numpy(ka.samplers.sample_euler_ancestral(exact_denoiser, x0, sigmas, seed=3))
    c = to_numpy(ka.samplers.sample_euler_ancestral(exact_denoiser, x0, sigmas, seed=4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_truncated_sampling_has_the_posterior_mean_variance():
    """Run to sigma_n, return D(x; sigma_n): variance v^2/(v + sigma_n^2) (§8)."""
    sn = 0.3
    sigmas = ka.samplers.edm_sigmas(32, sn, 80.0, append_zero=False)
    x = ka.samplers.sample_heun(exact_denoiser, initial_noise(80.0), sigmas)
    assert_gaussian(x, MU, VAR + sn**2)  # the sample at sigma_n is the noisy law
    x0 = exact_denoiser(x, sn)
    assert_gaussian(x0, MU, VAR**2 / (VAR + sn**2))


def test_sampler_errors():
    with pytest.raises(ValueError, match="Received: sampler='dpm'"):
        ka.samplers.get_sampler("dpm")
    assert ka.samplers.get_sampler("heun") is ka.samplers.sample_heun
    with pytest.raises(ValueError, match="strictly decreasing"):
        ka.samplers.sample_euler(exact_denoiser, np.zeros((2, 2), "float32"), [0.0, 1.0])
    with pytest.raises(ValueError, match="num_steps"):
        ka.samplers.edm_sigmas(0)
    with pytest.raises(ValueError, match="eta"):
        ka.samplers.sample_euler_ancestral(exact_denoiser, np.zeros((2, 2), "float32"),
                                           [1.0, 0.0], eta=2.0)
