import os

import keras
import numpy as np
import pytest

import keras_ambient as ka
from tests.harness import BACKENDS, run_in_backend, run_network_test, to_numpy


def test_mlp_denoiser(tmp_path):
    net = ka.networks.MLPDenoiser(3, hidden_units=16, num_blocks=2, embedding_dim=8, seed=0)
    run_network_test(net, tmp_path=tmp_path)


@pytest.mark.parametrize("embedding", ["fourier", "positional"])
def test_mlp_denoiser_embeddings(embedding):
    net = ka.networks.MLPDenoiser(2, hidden_units=8, num_blocks=1, embedding=embedding,
                                  embedding_dim=8, dropout=0.1)
    run_network_test(net)


def test_mlp_denoiser_class_conditioning():
    net = ka.networks.MLPDenoiser(2, hidden_units=8, num_blocks=1, embedding_dim=8, num_classes=3)
    run_network_test(net, condition=np.array([0, 2, 1], "int32"))


@pytest.mark.slow
def test_unet(tmp_path):
    net = ka.networks.UNet(image_shape=(8, 8, 1), base_channels=8, channel_multipliers=(1, 2),
                           num_res_blocks=1, attention_resolutions=(4,), num_heads=2, seed=0)
    run_network_test(net, batch=2, tmp_path=tmp_path)


@pytest.mark.slow
def test_unet_vector_conditioning():
    net = ka.networks.UNet(image_shape=(4, 4, 3), base_channels=8, channel_multipliers=(1,),
                           num_res_blocks=1, condition_dim=5, embedding="fourier")
    run_network_test(net, batch=2, condition=np.ones((2, 5), "float32"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_shape": (8, 8)}, "image_shape"),
        ({"image_shape": (6, 6, 1), "channel_multipliers": (1, 2, 2)}, "divisible"),
        ({"image_shape": (8, 8, 1), "channel_multipliers": ()}, "channel_multipliers"),
        ({"image_shape": (8, 8, 1), "embedding": "bogus"}, "embedding"),
        ({"image_shape": (8, 8, 1), "num_classes": 3, "condition_dim": 4}, "not both"),
        ({"image_shape": (8, 8, 1), "dropout": 1.5}, "dropout"),
        ({"image_shape": (8, 8, 1), "data_format": "NCHW"}, "Received: data_format='NCHW'"),
    ],
)
def test_unet_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ka.networks.UNet(**kwargs)


def test_mlp_bad_arguments():
    with pytest.raises(ValueError, match="Received: data_dim=0"):
        ka.networks.MLPDenoiser(0)
    with pytest.raises(TypeError, match="hidden_units"):
        ka.networks.MLPDenoiser(2, hidden_units=2.5)


def _unet_with_random_weights(data_format, seed=0):
    """A small U-Net whose zero-initialised output convolutions are replaced by random
    weights (so the output depends on every layer)."""
    net = ka.networks.UNet(image_shape=(8, 8, 2), base_channels=8, channel_multipliers=(1, 2),
                           num_res_blocks=1, attention_resolutions=(4,), num_heads=2,
                           data_format=data_format, seed=0)
    rng = np.random.default_rng(seed)
    net.set_weights([rng.normal(scale=0.2, size=w.shape).astype("float32") for w in net.get_weights()])
    return net


def _unet_inputs(batch=3):
    rng = np.random.default_rng(1)
    return [rng.normal(size=(batch, 8, 8, 2)).astype("float32"),
            np.linspace(-1.0, 1.0, batch).astype("float32")]


def test_unet_layouts_compute_the_same_function():
    """Channels-first and channels-last U-Nets hold the same weights (same names, shapes and
    seeded values) and compute the same function on channels-last images."""
    first, last = (ka.networks.UNet(image_shape=(8, 8, 1), base_channels=8, channel_multipliers=(1, 2),
                                    num_res_blocks=1, data_format=f, seed=3)
                   for f in ("channels_first", "channels_last"))
    assert [w.path for w in first.weights] == [w.path for w in last.weights]
    for a, b in zip(first.get_weights(), last.get_weights()):
        np.testing.assert_array_equal(a, b)
    nets = {f: _unet_with_random_weights(f) for f in ("channels_first", "channels_last", "auto")}
    inputs = _unet_inputs()
    out = {f: to_numpy(n(inputs)) for f, n in nets.items()}
    assert out["channels_last"].shape == (3, 8, 8, 2)
    assert np.abs(out["channels_last"]).max() > 0.1  # not a trivial (zero) output
    np.testing.assert_allclose(out["channels_first"], out["channels_last"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["auto"], out["channels_last"], rtol=1e-5, atol=1e-5)
    # "auto" resolves by backend: channels first (a leading transpose) on torch only;
    # TensorFlow runs channels last whatever the setting.
    def is_first(net):
        return any(layer.name == "to_channels_first" for layer in net.layers)

    assert is_first(nets["auto"]) == (keras.backend.backend() == "torch")
    assert is_first(nets["channels_first"]) == (keras.backend.backend() != "tensorflow")
    assert nets["auto"].get_config()["data_format"] == "auto"


@pytest.mark.slow
def test_unet_saved_on_one_backend_loads_in_the_others_layout(tmp_path):
    """An "auto" U-Net saved here loads on every backend (channels first on torch, channels
    last elsewhere) with the same outputs; a "channels_first" one loads in its own layout."""
    inputs = _unet_inputs()
    for data_format in ("auto", "channels_first"):
        net = _unet_with_random_weights(data_format)
        path = os.path.join(str(tmp_path), f"unet_{data_format}.keras")
        net.save(path)
        expected = to_numpy(net(inputs))
        np.testing.assert_allclose(to_numpy(keras.models.load_model(path)(inputs)), expected, atol=1e-5)
        code = (
            "import json, numpy as np, keras, keras_ambient as ka\n"
            f"net = keras.models.load_model({path!r})\n"
            "rng = np.random.default_rng(1)\n"
            "inputs = [rng.normal(size=(3, 8, 8, 2)).astype('float32'),\n"
            "          np.linspace(-1.0, 1.0, 3).astype('float32')]\n"
            "first = any(l.name == 'to_channels_first' for l in net.layers)\n"
            "print(json.dumps({'out': keras.ops.convert_to_numpy(net(inputs)).tolist(),\n"
            "                  'first': first, 'b': keras.backend.backend()}))\n"
        )
        for backend in BACKENDS:
            if backend == keras.backend.backend():
                continue
            result = run_in_backend(backend, code)
            assert result["b"] == backend
            # TensorFlow runs channels last whatever the setting (networks/unet.py).
            assert result["first"] == (backend == "torch" or (data_format == "channels_first"
                                                              and backend == "jax"))
            np.testing.assert_allclose(np.array(result["out"]), expected, rtol=1e-4, atol=1e-5)


def test_unet_weights_move_between_layouts(tmp_path):
    """Weights saved from a channels-last U-Net (the layout of U-Nets saved before
    `data_format` existed, whose group normalisations were Keras's class) load into a
    channels-first one, and back: the same function."""
    import warnings

    from keras_ambient.networks.unet import GroupNormalization

    # Keras names saved weights after class names: ours must keep Keras's.
    assert GroupNormalization.__name__ == keras.layers.GroupNormalization.__name__
    inputs = _unet_inputs()
    for src_format, dst_format in (("channels_last", "channels_first"),
                                   ("channels_first", "channels_last")):
        src = _unet_with_random_weights(src_format, seed=5)
        path = os.path.join(str(tmp_path), f"{src_format}.weights.h5")
        src.save_weights(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TensorFlow: channels first runs channels last
            dst = ka.networks.UNet(image_shape=(8, 8, 2), base_channels=8, channel_multipliers=(1, 2),
                                   num_res_blocks=1, attention_resolutions=(4,), num_heads=2,
                                   data_format=dst_format, seed=1)
        dst.load_weights(path)
        np.testing.assert_allclose(to_numpy(dst(inputs)), to_numpy(src(inputs)), rtol=1e-5, atol=1e-5)


def test_unet_channels_first_on_tensorflow_warns():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow runs channels last whatever the setting")
    with pytest.warns(UserWarning, match="channels last on the TensorFlow backend"):
        ka.networks.UNet(image_shape=(4, 4, 1), base_channels=8, channel_multipliers=(1,),
                         num_res_blocks=1, data_format="channels_first")


def test_unet_trains_in_either_layout():
    if keras.backend.backend() == "tensorflow":
        pytest.skip("TensorFlow runs channels last whatever the setting (trained by the tests above)")
    for data_format in ("channels_first", "channels_last"):
        net = ka.networks.UNet(image_shape=(4, 4, 1), base_channels=8, channel_multipliers=(1, 2),
                               num_res_blocks=1, data_format=data_format, seed=0)
        run_network_test(net, batch=2)
