import keras
import numpy as np
import pytest

import keras_ambient as ka
from tests.harness import assert_config_round_trip, assert_saving_round_trip, to_numpy


@pytest.mark.parametrize("cls", [ka.layers.FourierEmbedding, ka.layers.PositionalEmbedding])
def test_noise_embeddings(cls, tmp_path):
    layer = cls(16)
    c = np.array([-1.0, 0.0, 0.5], "float32")
    out = to_numpy(layer(c))
    assert out.shape == (3, 16)
    # cos^2 + sin^2 = 1 per frequency: a property that holds only for correct features.
    np.testing.assert_allclose(out[:, :8] ** 2 + out[:, 8:] ** 2, 1.0, atol=1e-5)
    clone = assert_config_round_trip(layer)
    clone(c)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(clone(c)), out, atol=1e-6)
    inp = keras.Input(shape=())
    model = keras.Model(inp, cls(16)(inp))
    assert_saving_round_trip(model, c, tmp_path)


@pytest.mark.parametrize("cls", [ka.layers.FourierEmbedding, ka.layers.PositionalEmbedding])
@pytest.mark.parametrize("policy, half_ulp", [("mixed_bfloat16", 2.0 ** -9), ("mixed_float16", 2.0 ** -12)])
def test_noise_embeddings_keep_float32_angles_under_mixed_policies(cls, policy, half_ulp):
    # EDM's c_noise = ln(sigma)/4 over sigma in [0.002, 80], standalone and inside a
    # network: the angles (up to hundreds of radians for Fourier features) are
    # computed in float32, so the only error is the rounding of the output (values in
    # [-1, 1]: at most half a unit in the last place at 1). Computed in bfloat16, the
    # Fourier features were off by up to 0.9.
    c = keras.ops.convert_to_tensor((np.log(np.geomspace(0.002, 80.0, 500)) / 4).astype("float32"))
    seed = {"seed": 0} if cls is ka.layers.FourierEmbedding else {}  # the same frequencies
    reference = to_numpy(cls(16, dtype="float32", **seed)(c))
    layer = cls(16, dtype=policy, **seed)
    inp = keras.Input(shape=())
    network = keras.Model(inp, keras.layers.Identity(dtype=policy)(layer(inp)))
    for out in (layer(c), network(c)):
        assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
        # (+1e-6: float32 rounding of the two computations of the angles)
        np.testing.assert_allclose(to_numpy(keras.ops.cast(out, "float32")), reference,
                                   atol=half_ulp + 1e-6, rtol=0)


def test_positional_embedding_values():
    out = to_numpy(ka.layers.PositionalEmbedding(4, max_period=100.0)(np.array([2.0], "float32")))
    freqs = np.array([1.0, 0.01])  # endpoint=True: 1 ... 1/max_period
    np.testing.assert_allclose(out[0], np.concatenate([np.cos(2 * freqs), np.sin(2 * freqs)]), atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"dim": 7}, {"dim": 0}, {"dim": 8, "scale": -1.0}])
def test_embedding_bad_arguments(kwargs):
    with pytest.raises((ValueError, TypeError), match="Received"):
        ka.layers.FourierEmbedding(**kwargs)


def _linear_network(scale):
    """F(x_in, c) = scale * x_in: makes D(x; s) computable by hand."""
    x_in = keras.Input((2,))
    c_in = keras.Input(())
    out = keras.layers.Lambda(lambda t: t * scale)(x_in)
    return keras.Model([x_in, c_in], out)


def test_edm_denoiser_matches_m2():
    sd, scale = 0.5, 0.7
    D = ka.layers.EDMDenoiser(_linear_network(scale), sigma_data=sd)
    x = np.array([[1.0, -2.0], [0.5, 0.0]], "float32")
    sigma = np.array([0.3, 2.0], "float32")
    out = to_numpy(D([x, sigma]))
    s = sigma[:, None]
    c_skip = sd**2 / (s**2 + sd**2)
    c_out = s * sd / np.sqrt(s**2 + sd**2)
    c_in = 1 / np.sqrt(s**2 + sd**2)
    np.testing.assert_allclose(out, c_skip * x + c_out * scale * c_in * x, rtol=1e-5)
    # A scalar sigma broadcasts; sigma = 0 returns x exactly (c_skip = 1, c_out = 0).
    np.testing.assert_allclose(to_numpy(D([x, np.float32(0.0)])), x, atol=1e-6)


def test_edm_denoiser_rejects_wrong_output_shape():
    x_in, c_in = keras.Input((2,)), keras.Input(())
    net = keras.Model([x_in, c_in], keras.layers.Dense(3)(x_in))
    D = ka.layers.EDMDenoiser(net)
    with pytest.raises(ValueError, match="shape of its input"):
        D([np.zeros((2, 2), "float32"), np.ones((2,), "float32")])


def test_edm_denoiser_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sigma_data"):
        ka.layers.EDMDenoiser(_linear_network(1.0), sigma_data=0.0)
    with pytest.raises(TypeError, match="network"):
        ka.layers.EDMDenoiser("not a network")


def test_edm_denoiser_saving(tmp_path):
    net = ka.networks.MLPDenoiser(2, hidden_units=8, num_blocks=1, embedding_dim=8, seed=1)
    D = ka.layers.EDMDenoiser(net, sigma_data=0.7)
    x = np.random.default_rng(0).normal(size=(3, 2)).astype("float32")
    sigma = np.array([0.1, 1.0, 5.0], "float32")
    D([x, sigma])
    assert_config_round_trip(D)
    assert_saving_round_trip(D, [x, sigma], tmp_path)


def test_edm_denoiser_keeps_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    net = ka.networks.MLPDenoiser(2, hidden_units=8, num_blocks=1, embedding_dim=8)
    D = ka.layers.EDMDenoiser(net)
    out = D([np.ones((2, 2), "float32"), np.ones((2,), "float32")])
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert net.layers[-1].compute_dtype == "bfloat16"
