"""The compiled inference paths (utils/backend_fast_paths.py) compute what the
generic eager call computes, follow weight changes, and serve generate/denoise."""

import keras
import numpy as np
import pytest

import keras_ambient as ka
from keras_ambient.utils import backend_fast_paths as fast
from keras_ambient.utils.structures import denoiser_inputs


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

def _ema_run(model, steps=5, seed=4):
    """Perturbs the online weights and runs one EMA step, `steps` times; returns
    the EMA weights after each step."""
    rng = np.random.default_rng(seed)
    model.reset_ema()
    history = []
    for _ in range(steps):
        model.denoiser.set_weights([w + 0.1 * rng.normal(size=w.shape).astype("float32")
                                    for w in model.denoiser.get_weights()])
        model._update_ema()
        history.append((model.denoiser.get_weights(), model.ema_denoiser.get_weights()))
    return history


def test_fused_ema_update_equals_the_generic_update_and_the_formula():
    fused = _ema_run(_model())
    fast.set_enabled(False)
    try:
        generic = _ema_run(_model())
    finally:
        fast.set_enabled(True)
    # The formula, in float64: decay 0 at step 0, then min(0.999, (1 + n) / (10 + n)).
    expected = [np.asarray(w, "float64") for w in fused[0][0]]  # step 0 copies the weights
    for n, ((online, ema_fused), (online_g, ema_generic)) in enumerate(zip(fused, generic)):
        decay = 0.0 if n == 0 else min(0.999, (1.0 + n) / (10.0 + n))
        expected = [decay * e + (1.0 - decay) * np.asarray(w, "float64")
                    for e, w in zip(expected, online)]
        for a, b, e, w, wg in zip(ema_fused, ema_generic, expected, online, online_g):
            np.testing.assert_array_equal(w, wg)  # same online weights on both paths
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    # The step 4 EMA is a real average (not a copy of the online weights).
    assert max(np.abs(a - w).max() for a, w in zip(fused[-1][1], fused[-1][0])) > 1e-3


def test_ema_update_reports_whether_it_ran():
    model = _model()
    targets = model.ema_denoiser.trainable_weights + model.ema_denoiser.non_trainable_weights
    sources = model.denoiser.trainable_weights + model.denoiser.non_trainable_weights
    before = [keras.ops.convert_to_numpy(v) for v in targets]
    decay = keras.ops.convert_to_tensor(0.5, "float32")
    update = fast.ema_updater(model.ema_denoiser.weights, model.denoiser.weights)
    ran = update is not None and update(decay)
    assert ran == (keras.backend.backend() == "torch")
    after = [keras.ops.convert_to_numpy(v) for v in targets]
    for b, a, s in zip(before, after, sources):
        want = 0.5 * b + 0.5 * keras.ops.convert_to_numpy(s) if ran else b
        np.testing.assert_allclose(a, want, rtol=1e-6, atol=1e-7)
    fast.set_enabled(False)
    try:
        assert fast.ema_updater(model.ema_denoiser.weights, model.denoiser.weights) is None
        assert update is None or update(decay) is False  # an updater made before the switch
    finally:
        fast.set_enabled(True)


# ------------------------------------------------------- training forward call
torch_only = pytest.mark.skipif(keras.backend.backend() != "torch",
                                reason="the traced training function is torch's")


def _fit_steps(generic, steps=3):
    fast.set_enabled(not generic)
    try:
        keras.utils.set_random_seed(0)
        net = ka.networks.UNet((8, 8, 1), base_channels=8, channel_multipliers=(1, 2), seed=0)
        model = ka.AmbientDiffusion(network=net, sigma_n=0.2, seed=0, consistency_weight=0.0,
                                    data_shape=(8, 8, 1))
        model.build()
        initial = model.denoiser.get_weights()
        # SGD: the weights' difference is the gradients' rounding difference times the
        # learning rate. Adam divides each gradient by its own running scale, so a weight
        # whose gradient is zero up to rounding moves by about the learning rate in a
        # direction rounding decides (on some CPUs by 1e-3 after these 6 steps).
        model.compile(optimizer=keras.optimizers.SGD(5e-2))
        x = np.clip(np.random.default_rng(5).normal(0, 0.5, (steps * 4, 8, 8, 1)), -1, 1)
        hist = model.fit(x.astype("float32"), batch_size=4, epochs=2, shuffle=False, verbose=0)
        return model, hist.history["ambient_loss"], initial
    finally:
        fast.set_enabled(True)


def _traces(denoiser):
    return [t for entry in getattr(denoiser, fast._TRAIN_ATTR, {}).values()
            for t in entry._traces.values()]


def test_training_through_the_fast_paths_matches_the_generic_training():
    fast_model, fast_losses, initial = _fit_steps(generic=False)
    generic_model, generic_losses, _ = _fit_steps(generic=True)
    np.testing.assert_allclose(fast_losses, generic_losses, rtol=1e-5)
    # The same weights up to float32 rounding (about 1e-7 here), while training moved
    # them by 2e-2 to 4e-2 (the draws differ between backends): checked below.
    for den in ("denoiser", "ema_denoiser"):
        for a, b in zip(getattr(fast_model, den).get_weights(),
                        getattr(generic_model, den).get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    moved = [np.abs(a - b).max() for a, b in zip(fast_model.denoiser.get_weights(), initial)]
    assert max(moved) > 1e-2
    if keras.backend.backend() == "torch":  # the traced loss and fast draws were used
        traces = _traces(fast_model.denoiser)
        assert traces and all(t is not None for t in traces)
        assert fast_model.seed_generator in fast._TORCH_SEEDS
    assert not _traces(generic_model.denoiser)


def _call_denoiser(denoiser, x, sigma, condition=None, training=True):
    return (denoiser(denoiser_inputs(x, sigma, condition), training=training),)


def _torch_grads(out, weights, seed=0):
    import torch

    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad((out * cot).sum(), weights)


@torch_only
@pytest.mark.parametrize("num_classes", [None, 3])
def test_traced_training_function_matches_the_eager_call_and_its_gradients(num_classes):
    model = _model(num_classes=num_classes)
    den = model.denoiser
    call = fast.training_function(den, _call_denoiser)
    weights = [v.value for v in den.trainable_variables]
    rng = np.random.default_rng(6)
    for sigma in (0.05, 1.0, 30.0):  # traced on the first inputs, reused for the others
        x = keras.ops.convert_to_tensor(rng.normal(size=(4, 8, 8, 1)).astype("float32"))
        s = keras.ops.convert_to_tensor(np.full((4,), sigma, "float32"))
        labels = (keras.ops.convert_to_tensor(np.array([0, 2, 1, 0], "int32"))
                  if num_classes else None)
        (got,) = call(x, s, condition=labels)
        (want,) = _call_denoiser(den, x, s, labels)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got.detach()),
                                   keras.ops.convert_to_numpy(want.detach()), rtol=1e-5, atol=1e-6)
        for a, b in zip(_torch_grads(got, weights), _torch_grads(want, weights)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    traces = _traces(den)
    assert len(traces) == 1 and traces[0] is not None  # one trace, reused


@torch_only
def test_a_denoiser_with_dropout_is_called_eagerly_and_stays_random():
    net = ka.networks.UNet((8, 8, 1), base_channels=8, channel_multipliers=(1, 2), dropout=0.5,
                           seed=0)
    model = ka.AmbientDiffusion(network=net, sigma_n=0.2, seed=0, data_shape=(8, 8, 1))
    model.build()
    rng = np.random.default_rng(0)  # non-zero output convolutions: the dropout shows
    model.denoiser.set_weights([w + 0.05 * rng.normal(size=w.shape).astype("float32")
                                for w in model.denoiser.get_weights()])
    call = fast.training_function(model.denoiser, _call_denoiser)
    x = keras.ops.convert_to_tensor(rng.normal(size=(4, 8, 8, 1)).astype("float32"))
    s = keras.ops.convert_to_tensor(np.full((4,), 0.5, "float32"))
    a, b = (keras.ops.convert_to_numpy(call(x, s)[0].detach()) for _ in range(2))
    assert _traces(model.denoiser) == [None]  # the seed state changes: not traced
    assert np.abs(a - b).max() > 1e-4  # dropout draws new masks on every call


def test_training_function_is_the_eager_function_off_torch_or_when_disabled(generic_path):
    model = _model()
    x = keras.ops.convert_to_tensor(np.ones((2, 8, 8, 1), "float32"))
    s = keras.ops.convert_to_tensor(np.full((2,), 0.5, "float32"))
    (got,) = fast.training_function(model.denoiser, _call_denoiser)(x, s)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got),
                               keras.ops.convert_to_numpy(_call_denoiser(model.denoiser, x, s)[0]),
                               rtol=1e-6, atol=1e-6)
    assert not _traces(model.denoiser)


# ------------------------------------------------------- group normalisation
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "mixed_bfloat16"])
def test_channels_first_group_norm_equals_keras_layer_and_its_gradients(dtype):
    """The U-Net's GroupNormalization over axis 1 (torch: one `group_norm` kernel) computes
    Keras's layer: outputs, and on torch the gradients of the input, gamma and beta."""
    from keras_ambient.networks.unet import GroupNormalization

    rng = np.random.default_rng(0)
    x = (1.5 + 2.0 * rng.normal(size=(3, 8, 4, 4))).astype("float32")
    ours = GroupNormalization(4, axis=1, epsilon=1e-6, dtype=dtype)
    ref = keras.layers.GroupNormalization(4, axis=1, epsilon=1e-6, dtype=dtype)
    ours.build(x.shape)
    ref.build(x.shape)
    weights = [1.0 + 0.3 * rng.normal(size=(8,)).astype("float32"), 0.3 * rng.normal(size=(8,)).astype("float32")]
    ours.set_weights(weights)
    ref.set_weights(weights)
    compute = ref.compute_dtype  # "bfloat16" for both bfloat16 policies
    xin = keras.ops.cast(x, compute)
    got, want = ours(xin), ref(xin)
    assert keras.ops.dtype(got) == keras.ops.dtype(want) == compute
    tol = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(got, "float32")),
                               keras.ops.convert_to_numpy(keras.ops.cast(want, "float32")),
                               rtol=tol, atol=tol)
    # The closed form, in float64: per sample and group of 2 channels, standardised.
    g = x.astype("float64").reshape(3, 4, 2 * 16)
    norm = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-6)).reshape(x.shape)
    expected = norm * weights[0][None, :, None, None] + weights[1][None, :, None, None]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(got, "float32")), expected,
                               rtol=tol, atol=tol)
    if keras.backend.backend() != "torch" or dtype != "float32":
        return
    import torch

    cot = torch.as_tensor(rng.normal(size=x.shape).astype("float32"))
    grads = []
    for layer in (ours, ref):
        xt = torch.as_tensor(x).requires_grad_(True)
        (layer(xt) * cot).sum().backward()
        grads.append([xt.grad.numpy(), layer.gamma.value.grad.numpy(), layer.beta.value.grad.numpy()])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_group_norm_fast_path_off_returns_none(generic_path):
    x = keras.ops.ones((2, 4, 3, 3))
    assert fast.group_norm(x, 2, keras.ops.ones((4,)), keras.ops.zeros((4,)), 1e-6) is None


def test_group_norm_fast_path_applies_on_torch():
    x = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(2, 4, 3, 3)).astype("float32"))
    out = fast.group_norm(x, 2, keras.ops.ones((4,)), keras.ops.zeros((4,)), 1e-6)
    assert (out is not None) == (keras.backend.backend() == "torch")


# ------------------------------------------------------------------ random draws
def _draw_sequence(normal, uniform, seed_generator):
    """Draws of several shapes and dtypes in a fixed order, as NumPy arrays."""
    draws = [normal((5, 3), seed=seed_generator), uniform((7,), seed=seed_generator),
             normal((2, 4, 4, 1), seed=seed_generator, dtype="float16"),
             uniform((), seed=seed_generator), normal((3,), seed=seed_generator, dtype="bfloat16")]
    return [keras.ops.convert_to_numpy(keras.ops.cast(d, "float32")) for d in draws]


@pytest.mark.parametrize("make_seed", [
    lambda: keras.random.SeedGenerator(123),
    lambda: ka.utils.seeding.SavedSeedGenerator(2**31 - 1),  # the sum wraps past 2**31 (int32)
])
def test_draws_equal_keras_random_draws_and_leave_the_same_state(make_seed):
    ours, theirs = make_seed(), make_seed()
    for _ in range(2):  # the second round starts from an advanced state
        got = _draw_sequence(fast.random_normal, fast.random_uniform, ours)
        expected = _draw_sequence(keras.random.normal, keras.random.uniform, theirs)
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            np.testing.assert_array_equal(g, e)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours.state.value),
                                      keras.ops.convert_to_numpy(theirs.state.value))
    if keras.backend.backend() == "torch":  # drawn by the fast path, not by Keras
        assert ours in fast._TORCH_SEEDS
    # The draws are uniform on [0, 1) and standard normal, not constants.
    u = keras.ops.convert_to_numpy(fast.random_uniform((4000,), seed=ours))
    z = keras.ops.convert_to_numpy(fast.random_normal((4000,), seed=ours))
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.03
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1.0) < 0.05


def test_draws_follow_a_state_set_by_assign_and_int_seeds_draw_with_keras():
    ours, theirs = keras.random.SeedGenerator(0), keras.random.SeedGenerator(0)
    fast.random_normal((2,), seed=ours)  # the state's tensor is cached here
    for gen in (ours, theirs):
        gen.state.assign(keras.ops.convert_to_tensor(np.array([9, 4]), dtype=gen.state.dtype))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fast.random_normal((3,), seed=ours)),
                                  keras.ops.convert_to_numpy(keras.random.normal((3,), seed=theirs)))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fast.random_uniform((3,), seed=5)),
                                  keras.ops.convert_to_numpy(keras.random.uniform((3,), seed=5)))


@pytest.mark.parametrize("mapped", [True, False])
def test_draws_inside_a_stateless_scope_leave_the_variable_alone(mapped):
    """With the state mapped by the scope (the draw starts from the mapped state) or not
    (from the variable's): the scope's state advances, the variable does not."""
    gen = keras.random.SeedGenerator(1)
    fast.random_normal((2,), seed=gen)  # cached outside the scope
    before = keras.ops.convert_to_numpy(gen.state.value).copy()
    start = np.array([1, 7]) if mapped else before
    mapping = [(gen.state, keras.ops.convert_to_tensor(start, dtype=gen.state.dtype))] if mapped else None
    with keras.StatelessScope(state_mapping=mapping) as scope:
        got = fast.random_normal((3,), seed=gen)
        advanced = keras.ops.convert_to_numpy(scope.get_current_value(gen.state))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(gen.state.value), before)
    np.testing.assert_array_equal(advanced, start + [0, 1])
    reference = keras.random.SeedGenerator(0)  # the scope's starting state, outside a scope
    reference.state.assign(keras.ops.convert_to_tensor(start, dtype=reference.state.dtype))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(got),
                                  keras.ops.convert_to_numpy(keras.random.normal((3,), seed=reference)))


def test_draws_use_keras_when_disabled(generic_path):
    gen = keras.random.SeedGenerator(2)
    fast.random_normal((2,), seed=gen)
    assert gen not in fast._TORCH_SEEDS
