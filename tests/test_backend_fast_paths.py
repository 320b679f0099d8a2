"""The compiled inference paths (utils/backend_fast_paths.py) compute what the
generic eager call computes, follow weight changes, and serve generate/denoise."""

import keras
import numpy as np
import pytest

import keras_ambient as ka
from keras_ambient.utils import backend_fast_paths as fast


@pytest.fixture
def generic_path():
    fast.set_enabled(False)
    yield
    fast.set_enabled(True)


def _model(**kw):
    net = ka.networks.UNet((8, 8, 1), base_channels=8, channel_multipliers=(1, 2), seed=0, **kw)
    model = ka.AmbientDiffusion(network=net, sigma_n=0.2, seed=0, data_shape=(8, 8, 1))
    model.build()
    rng = np.random.default_rng(0)  # non-zero output convolutions: a non-trivial D
    for den in (model.denoiser, model.ema_denoiser):
        den.set_weights([w + 0.05 * rng.normal(size=w.shape).astype("float32")
                         for w in den.get_weights()])
    return model


def _eager(net, x, sigma, condition=None):
    out = fast._generic(net)(keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(sigma),
                             condition)
    return keras.ops.convert_to_numpy(out)


def test_compiled_call_matches_the_eager_call_and_follows_weight_updates():
    model = _model()
    net = model.ema_denoiser
    call = fast.inference_call(net)
    assert fast.inference_call(net) is call  # cached per network
    rng = np.random.default_rng(1)
    for sigma in (0.01, 0.5, 20.0):  # compiled once, then other values
        x = rng.normal(size=(4, 8, 8, 1)).astype("float32")
        s = np.full((4,), sigma, "float32")
        got = keras.ops.convert_to_numpy(call(keras.ops.convert_to_tensor(x),
                                              keras.ops.convert_to_tensor(s)))
        np.testing.assert_allclose(got, _eager(net, x, s), rtol=1e-5, atol=1e-5)
    # New weights are used without rebuilding the call.
    net.set_weights([w * 0.5 for w in net.get_weights()])
    got = keras.ops.convert_to_numpy(call(keras.ops.convert_to_tensor(x),
                                          keras.ops.convert_to_tensor(s)))
    np.testing.assert_allclose(got, _eager(net, x, s), rtol=1e-5, atol=1e-5)


def test_compiled_call_with_a_class_condition():
    model = _model(num_classes=3)
    net = model.ema_denoiser
    x = np.random.default_rng(2).normal(size=(3, 8, 8, 1)).astype("float32")
    s = np.array([0.1, 1.0, 5.0], "float32")
    labels = keras.ops.convert_to_tensor(np.array([0, 2, 1], "int32"))
    got = keras.ops.convert_to_numpy(fast.inference_call(net)(
        keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(s), labels))
    np.testing.assert_allclose(got, _eager(net, x, s, labels), rtol=1e-5, atol=1e-5)


def _generate_and_denoise(model):
    y = np.random.default_rng(3).normal(size=(5, 8, 8, 1)).astype("float32")
    return (model.generate(5, num_steps=4, seed=7, batch_size=3),
            model.generate(5, num_steps=4, seed=7, mode="truncated", clip_denoised=(-1, 1)),
            model.denoise(y, 0.3, batch_size=2))


def test_generate_and_denoise_match_the_generic_path():
    model = _model()
    fast_out = _generate_and_denoise(model)
    fast.set_enabled(False)
    try:
        generic_out = _generate_and_denoise(model)
    finally:
        fast.set_enabled(True)
    for a, b in zip(fast_out, generic_out):
        # Sampling from sigma=80 amplifies float32 rounding differences a little.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_generate_is_reproducible_on_the_generic_path(generic_path):
    model = _model()
    a = model.generate(3, num_steps=3, seed=1)
    np.testing.assert_array_equal(a, model.generate(3, num_steps=3, seed=1))


def test_set_enabled_needs_a_bool():
    with pytest.raises(TypeError, match="Received: enabled=1"):
        fast.set_enabled(1)


@pytest.mark.parametrize("training", [True, False])
def test_no_gradient_call_matches_the_plain_call_without_gradient(training):
    model = _model()
    net = model.denoiser
    rng = np.random.default_rng(4)
    for sigma in (0.05, 0.2, 3.0):  # torch: traced once, then reused
        x = keras.ops.convert_to_tensor(rng.normal(size=(6, 8, 8, 1)).astype("float32"))
        s = keras.ops.convert_to_tensor(np.full((6,), sigma, "float32"))
        got = fast.no_gradient_call(net, x, s, training=training)
        want = net([x, s], training=training)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want),
                                   rtol=1e-5, atol=1e-5)
        if keras.backend.backend() == "torch":
            assert not got.requires_grad


def test_no_gradient_call_keeps_dropout_random_in_training():
    # A traced call would freeze one dropout mask; the checked trace must refuse it.
    model = _model(dropout=0.5)
    x = keras.ops.convert_to_tensor(np.random.default_rng(5).normal(size=(4, 8, 8, 1)).astype("float32"))
    s = keras.ops.convert_to_tensor(np.full((4,), 0.3, "float32"))
    outs = [keras.ops.convert_to_numpy(fast.no_gradient_call(model.denoiser, x, s, training=True))
            for _ in range(3)]
    assert not np.allclose(outs[1], outs[2])
    inference = keras.ops.convert_to_numpy(fast.no_gradient_call(model.denoiser, x, s, training=False))
    np.testing.assert_allclose(inference, keras.ops.convert_to_numpy(
        model.denoiser([x, s], training=False)), rtol=1e-5, atol=1e-5)


def test_consistency_loss_is_the_same_on_the_generic_path():
    model = _model()
    y = np.random.default_rng(6).normal(scale=0.5, size=(8, 8, 8, 1)).astype("float32")
    sigma_n = np.full((8,), 0.2, "float32")
    loss = ka.losses.ConsistencyLoss(batch_fraction=0.5)
    fast_value = keras.ops.convert_to_numpy(loss(model.denoiser, y, sigma_n, seed=3))
    fast.set_enabled(False)
    try:
        generic_value = keras.ops.convert_to_numpy(loss(model.denoiser, y, sigma_n, seed=3))
    finally:
        fast.set_enabled(True)
    assert fast_value.shape == (4,) and np.all(np.abs(fast_value) > 0)
    np.testing.assert_allclose(fast_value, generic_value, rtol=1e-4, atol=1e-7)
