"""Trained models against closed forms (docs/method.md §3, §8).

On Gaussian data x0 ~ N(0, s^2 I) noised at sigma_n, a denoiser trained with
the ambient loss must learn the CLEAN posterior mean s^2/(s^2+t^2) x at
sigma_t > sigma_n, while the plain loss on the same noisy data (which treats y
as clean and noises it further, x = y + t z) learns the posterior mean of y,
(s^2+sigma_n^2)/(s^2+sigma_n^2+t^2) x. The test measures the learned slopes.
"""

import keras
import numpy as np
import pytest

import keras_ambient as ka

S, SIGMA_N, LEVELS = 0.6, 0.5, (0.8, 1.2)


def train(sigma_n_given, y):
    keras.utils.set_random_seed(0)
    net = ka.networks.MLPDenoiser(2, hidden_units=64, num_blocks=2, embedding_dim=16, seed=0)
    # sigma_data is the std of what each model believes is clean data.
    sigma_data = S if sigma_n_given else float(np.sqrt(S**2 + SIGMA_N**2))
    model = ka.AmbientDiffusion(net, sigma_n=sigma_n_given, sigma_data=sigma_data,
                                consistency_weight=0.0, ema_decay=0.99, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit(y, batch_size=512, epochs=12, verbose=0)
    return model


def slope(model, sigma):
    x = np.linspace(-2.0, 2.0, 41, dtype="float32")
    grid = np.stack([x, -x], axis=1)
    d = model.denoise(grid, sigma)
    return float(np.sum(d * grid) / np.sum(grid * grid))


@pytest.mark.slow
def test_ambient_loss_learns_the_clean_denoiser_and_plain_loss_does_not():
    rng = np.random.default_rng(0)
    x0 = S * rng.standard_normal((24576, 2)).astype("float32")
    y = ka.data.add_noise(x0, SIGMA_N, seed=1)
    ambient, plain = train(SIGMA_N, y), train(0.0, y)
    for t in LEVELS:
        clean = S**2 / (S**2 + t**2)
        noisy = (S**2 + SIGMA_N**2) / (S**2 + SIGMA_N**2 + t**2)
        gap = noisy - clean  # 0.128 at t=0.8, 0.098 at t=1.2
        k_amb, k_plain = slope(ambient, t), slope(plain, t)
        # Measured (JAX): both within 0.001 of their closed forms.
        assert abs(k_amb - clean) < 0.15 * gap, (t, k_amb, clean, noisy)
        assert abs(k_plain - noisy) < 0.15 * gap, (t, k_plain, clean, noisy)
