"""The plain-PyTorch reference of the benchmarks (benchmarks/torch_reference.py)
is the same network as the library's: parameter counts and outputs match.

`benchmarks` is not a package (it holds scripts), so the module is imported by
path. Runs under every KERAS_BACKEND: the Keras side runs on the current
backend, the reference always on torch (CPU), and the comparison is on NumPy.
"""

import keras
import numpy as np
import pytest

import keras_ambient as ka
from tests.harness import load_benchmark

torch = pytest.importorskip("torch")

ref = load_benchmark("torch_reference")


def _randomize(keras_net, seed=0):
    """Non-trivial weights everywhere (the output convolutions start at zero)."""
    rng = np.random.default_rng(seed)
    keras_net.set_weights([
        (rng.normal(0.0, 0.2, w.shape) + (1.0 if "gamma" in w.path else 0.0)).astype("float32")
        for w in keras_net.weights
    ])


def _keras_params(net):
    return int(sum(np.prod(w.shape) for w in net.trainable_weights))


UNET_CASES = [
    ("digits8", dict(base_channels=16)),
    ("img32", dict(base_channels=8)),
]


@pytest.mark.parametrize("kind,kw", UNET_CASES, ids=[c[0] for c in UNET_CASES])
def test_unet_reference_matches_the_keras_unet(kind, kw):
    keras_net = ka.networks.UNet(**ref.unet_kwargs(kind, kw["base_channels"]), seed=0)
    torch_net = ref.build_net(kind, **kw)
    assert ref.num_params(torch_net) == _keras_params(keras_net)
    _randomize(keras_net)
    ref.load_keras_weights(torch_net, keras_net)
    rng = np.random.default_rng(1)
    shape = keras_net.image_shape
    x = rng.normal(size=(3,) + shape).astype("float32")
    c = np.array([-1.2, 0.1, 0.9], "float32")
    expected = keras.ops.convert_to_numpy(keras_net([x, c], training=False))
    with torch.no_grad():
        got = torch_net(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(c))
    got = got.permute(0, 2, 3, 1).numpy()
    assert np.abs(expected).max() > 0.1  # a non-trivial output is compared
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_unet_reference_with_attention_matches():
    """Attention at a down/up level too (the benchmarks' presets have it in the middle only)."""
    kw = dict(image_shape=(8, 8, 2), base_channels=8, channel_multipliers=(1, 2),
              attention_resolutions=(4,))
    keras_net = ka.networks.UNet(**kw, seed=0)
    torch_net = ref.UNet(kw["image_shape"], kw["base_channels"], kw["channel_multipliers"],
                         attention_resolutions=(4,))
    assert ref.num_params(torch_net) == _keras_params(keras_net)
    _randomize(keras_net, seed=2)
    ref.load_keras_weights(torch_net, keras_net)
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 2)).astype("float32")
    c = np.array([0.3, -0.4], "float32")
    expected = keras.ops.convert_to_numpy(keras_net([x, c], training=False))
    with torch.no_grad():
        got = torch_net(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(c))
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_mlp_reference_matches_the_keras_mlp():
    keras_net = ka.networks.MLPDenoiser(data_dim=2, hidden_units=32, num_blocks=3, seed=0)
    torch_net = ref.build_net("mlp2d", hidden_units=32)
    assert ref.num_params(torch_net) == _keras_params(keras_net)
    _randomize(keras_net)
    ref.load_keras_weights(torch_net, keras_net)
    x = np.random.default_rng(4).normal(size=(5, 2)).astype("float32")
    c = np.linspace(-1.0, 1.0, 5).astype("float32")
    expected = keras.ops.convert_to_numpy(keras_net([x, c], training=False))
    with torch.no_grad():
        got = torch_net(torch.from_numpy(x), torch.from_numpy(c)).numpy()
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_reference_preconditioning_and_sampler_match_the_library():
    """`denoise` = ka.layers.EDMDenoiser and `sample_heun` = ka.samplers.sample_heun."""
    keras_net = ka.networks.MLPDenoiser(data_dim=2, hidden_units=16, num_blocks=1, seed=0)
    torch_net = ref.MLP(2, 16, num_blocks=1)
    _randomize(keras_net)
    ref.load_keras_weights(torch_net, keras_net)
    den = ka.layers.EDMDenoiser(keras_net, sigma_data=ref.SIGMA_DATA)
    x = np.random.default_rng(5).normal(size=(4, 2)).astype("float32")
    sig = np.array([0.01, 0.3, 2.0, 40.0], "float32")
    expected = keras.ops.convert_to_numpy(den([x, sig]))
    with torch.no_grad():
        got = ref.denoise(torch_net, torch.from_numpy(x), torch.from_numpy(sig)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    sigmas = ref.edm_sigmas(4)
    np.testing.assert_allclose(sigmas, ka.samplers.edm_sigmas(4), rtol=1e-6)
    x0 = (float(sigmas[0]) * x).astype("float32")
    expected = keras.ops.convert_to_numpy(ka.samplers.sample_heun(
        lambda v, s: den([v, keras.ops.full((4,), s)]), x0, sigmas))
    got = ref.sample_heun(torch_net, torch.from_numpy(x0), sigmas).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
