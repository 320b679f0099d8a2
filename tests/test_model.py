"""AmbientDiffusion: training through fit, EMA, sampling modes, saving, errors."""

import os
import warnings

import keras
import numpy as np
import pytest

import keras_ambient as ka
from tests.harness import BACKENDS, run_in_backend, to_numpy

SIGMA_N = 0.2


def small_model(**kwargs):
    net = ka.networks.MLPDenoiser(2, hidden_units=16, num_blocks=1, embedding_dim=8, seed=0)
    kwargs.setdefault("sigma_n", SIGMA_N)
    kwargs.setdefault("seed", 0)
    model = ka.AmbientDiffusion(net, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def mixture_data(n=256, sigma=SIGMA_N, seed=0):
    x = ka.data.GaussianMixture.circle().sample(n, seed=seed)
    return ka.data.add_noise(x, sigma, seed=seed + 1)


def test_fit_logs_losses_and_counts_ema_steps():
    model = small_model(consistency_weight=0.5, consistency_interval=1)
    history = model.fit(mixture_data(), batch_size=64, epochs=2, verbose=0)
    logs = history.history
    assert {"loss", "ambient_loss", "consistency_loss"} <= set(logs)
    total = logs["ambient_loss"][-1] + 0.5 * logs["consistency_loss"][-1]
    assert logs["loss"][-1] == pytest.approx(total, rel=1e-4, abs=1e-5)
    assert int(to_numpy(model.ema_step)) == 8  # 2 epochs x 4 batches


class _PerStepLogs(keras.callbacks.Callback):
    """The logs of each training step. Keras logs running means over the epoch,
    so fit one batch per epoch to read per-step values."""

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs))


def test_consistency_starts_after_the_ambient_only_phase():
    """Before `consistency_start_step` the total loss is the ambient loss alone and
    the consistency loss is not computed (a train function without its chains);
    after it, ambient + weight x consistency."""
    model = small_model(consistency_weight=0.5, consistency_start_step=4, consistency_interval=1)
    log = _PerStepLogs()
    model.fit(mixture_data(64), batch_size=64, epochs=6, verbose=0, callbacks=[log])
    for i, logs in enumerate(log.logs):
        assert (logs["consistency_loss"] != 0.0) == (i >= 4), i  # a Mean of no values reads 0
        expected = logs["ambient_loss"] + (0.5 * logs["consistency_loss"] if i >= 4 else 0.0)
        assert logs["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-6), i


def test_the_step_count_is_read_after_callbacks_restore_the_weights():
    """A resumed run (BackupAndRestore restores `ema_step` in `on_train_begin`)
    past `consistency_start_step` runs the consistency loss from its first step,
    and `consistency_interval` keeps its phase."""
    model = small_model(consistency_weight=0.5, consistency_start_step=4, consistency_interval=1)

    class Restore(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.model.ema_step.assign(5)

    log = _PerStepLogs()
    model.fit(mixture_data(64), batch_size=64, epochs=2, verbose=0, callbacks=[Restore(), log])
    assert [logs["consistency_loss"] != 0.0 for logs in log.logs] == [True, True]
    assert int(to_numpy(model.ema_step)) == 7

    # One step in three, counted from the restored step 5: step 6 runs it (not step 5+1=0+1).
    model = small_model(consistency_weight=0.5, consistency_interval=3)
    log = _PerStepLogs()
    model.fit(mixture_data(64), batch_size=64, epochs=3, verbose=0, callbacks=[Restore(), log])
    assert [logs["consistency_loss"] != 0.0 for logs in log.logs] == [False, True, False]


def test_consistency_interval_runs_the_loss_on_one_step_in_k_with_k_times_the_weight(tmp_path):
    """`consistency_interval=3` from `consistency_start_step=2`: steps 2, 5, 8, ...
    run the consistency loss with weight 3 x 0.5, the others the ambient loss
    alone; a second `fit` continues the count (read from `ema_step`), and the
    setting survives saving."""
    model = small_model(consistency_weight=0.5, consistency_start_step=2, consistency_interval=3)
    log = _PerStepLogs()
    model.fit(mixture_data(64), batch_size=64, epochs=4, verbose=0, callbacks=[log])
    model.fit(mixture_data(64), batch_size=64, epochs=5, verbose=0, callbacks=[log])
    assert len(log.logs) == 9
    for i, logs in enumerate(log.logs):
        runs = i in (2, 5, 8)
        assert (logs["consistency_loss"] != 0.0) == runs, i
        expected = logs["ambient_loss"] + (1.5 * logs["consistency_loss"] if runs else 0.0)
        assert logs["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-6), i

    # Within one epoch of 9 steps (steps 9..17): 11, 14 and 17 run it.
    model.fit(mixture_data(9 * 64), batch_size=64, epochs=1, verbose=0)
    assert float(to_numpy(model.consistency_loss_tracker.count)) == 3.0
    assert int(to_numpy(model.ema_step)) == 18

    path = os.path.join(str(tmp_path), "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.consistency_interval == 3
    assert restored.get_config()["consistency_interval"] == 3


def test_consistency_interval_with_train_on_batch_and_configs_from_before_it():
    """`train_on_batch` follows `ema_step` (steps 0 and 3 of four run the loss, also
    after `ema_step` is set back); a config without the key (saved before 0.3.0)
    loads with the loss on every step, as it was trained."""
    model = small_model(consistency_weight=0.5, consistency_interval=3)
    y = mixture_data(64)
    runs = [model.train_on_batch(y, return_dict=True)["consistency_loss"] != 0.0 for _ in range(4)]
    assert runs == [True, False, False, True]
    model.ema_step.assign(2)
    runs = [model.train_on_batch(y, return_dict=True)["consistency_loss"] != 0.0 for _ in range(2)]
    assert runs == [False, True]

    config = model.get_config()
    assert config["consistency_interval"] == 3
    del config["consistency_interval"]
    assert ka.AmbientDiffusion.from_config(config).consistency_interval == 1


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="torch trains one step per call")
def test_consistency_interval_counts_calls_of_steps_per_execution_steps():
    """With `steps_per_execution=2` and `consistency_interval=2`, the calls of steps
    (0, 1) and (4, 5) run the consistency loss, (2, 3) does not: 4 of 6 steps
    (one step in two would give 3)."""
    model = small_model(consistency_weight=0.5, consistency_interval=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=2)
    model.fit(mixture_data(6 * 64), batch_size=64, epochs=1, verbose=0)
    assert float(to_numpy(model.consistency_loss_tracker.count)) == 4.0
    assert int(to_numpy(model.ema_step)) == 6


def test_ema_consistency_target_trains_and_round_trips(tmp_path):
    model = small_model(consistency_weight=0.5, consistency_target="ema", ema_decay=0.9)
    history = model.fit(mixture_data(128), batch_size=64, epochs=2, verbose=0)
    assert np.isfinite(history.history["consistency_loss"][-1])
    path = os.path.join(str(tmp_path), "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.consistency_target == "ema"
    assert restored.get_config()["consistency_start_step"] == 0
    with pytest.raises(ValueError, match="ema_decay"):
        small_model(consistency_target="ema", ema_decay=None)


def test_training_approaches_the_exact_denoiser():
    """Against the closed-form posterior mean of the mixture (docs/method.md §8)."""
    gm = ka.data.GaussianMixture.circle()
    x = gm.sample(2048, seed=0)
    model = small_model(sigma_n=0.0, consistency_weight=0.0, ema_decay=None)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    probe = gm.sample(512, seed=9) + 0.5 * np.random.default_rng(1).standard_normal((512, 2)).astype("float32")
    exact = gm.posterior_mean(probe, 0.5)

    def error():
        return float(np.mean((model.denoise(probe, 0.5) - exact) ** 2))

    before = error()
    model.fit(x, batch_size=128, epochs=10, verbose=0)
    assert error() < 0.3 * before


# The input types and batch formats are tested in tests/test_batches.py.


def test_per_sample_noise_levels_mix_clean_and_noisy():
    x = ka.data.GaussianMixture.circle().sample(128, seed=0)
    levels = ka.data.mixed_noise_levels(128, 0.3, clean_fraction=0.25, seed=0)
    assert (levels == 0).sum() == 32
    y = ka.data.add_noise(x, levels, seed=1)
    np.testing.assert_array_equal(y[levels == 0], x[levels == 0])
    history = small_model().fit((y, levels), batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_validation_reports_the_ambient_loss():
    model = small_model(consistency_weight=0.1)
    history = model.fit(mixture_data(128), batch_size=64, epochs=1, verbose=0,
                        validation_data=(mixture_data(64, seed=5),))
    assert np.isfinite(history.history["val_ambient_loss"][-1])


def test_ema_update_follows_its_formula():
    model = small_model(ema_decay=0.9)
    w = model.denoiser.trainable_weights[0]
    e = model.ema_denoiser.weights[next(i for i, v in enumerate(model.denoiser.weights) if v is w)]
    # Step 0: the EMA is a copy.
    w.assign(np.full(w.shape, 2.0, "float32"))
    e.assign(np.zeros(e.shape, "float32"))
    model._update_ema()
    np.testing.assert_allclose(to_numpy(e), 2.0)
    # Step 5: decay = min(0.9, 6/15) = 0.4 (warm-up).
    model.ema_step.assign(5)
    w.assign(np.full(w.shape, 1.0, "float32"))
    model._update_ema()
    np.testing.assert_allclose(to_numpy(e), 0.4 * 2.0 + 0.6 * 1.0, rtol=1e-6)
    # Late steps: the decay itself.
    model.ema_step.assign(1000)
    w.assign(np.zeros(w.shape, "float32"))
    model._update_ema()
    np.testing.assert_allclose(to_numpy(e), 0.9 * 1.4, rtol=1e-6)
    assert int(to_numpy(model.ema_step)) == 1001


def test_ema_reads_trainable_flags_at_each_fit():
    """The EMA's weight pairs are collected once per `fit` call: a layer frozen between two
    calls is copied (not averaged) from the next call on, on every backend."""
    model = small_model(ema_decay=0.999)
    y = mixture_data(128)
    model.fit(y, batch_size=64, epochs=1, verbose=0)
    layer = next(l for l in model.network.layers if l.trainable_weights)
    idx = [i for i, v in enumerate(model.denoiser.weights)
           if any(v is w for w in layer.trainable_weights)]
    layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(y, batch_size=64, epochs=1, verbose=0)
    src, ema = model.denoiser.weights, model.ema_denoiser.weights
    for i in idx:  # frozen: the EMA holds a copy of the (unchanged) weight
        np.testing.assert_array_equal(to_numpy(ema[i]), to_numpy(src[i]))
    moving = [i for i, v in enumerate(src) if v.trainable]
    assert moving and any(not np.array_equal(to_numpy(ema[i]), to_numpy(src[i])) for i in moving)


def test_ema_starts_as_a_copy_and_is_used_for_sampling():
    model = small_model(ema_decay=0.99)
    x = mixture_data(8)
    np.testing.assert_allclose(model.denoise(x, 0.5), model.denoise(x, 0.5, use_ema=False), atol=1e-6)
    model.fit(mixture_data(256), batch_size=32, epochs=2, verbose=0)
    assert not np.allclose(model.denoise(x, 0.5), model.denoise(x, 0.5, use_ema=False), atol=1e-4)
    ema_out = to_numpy(model.ema_denoiser([x, np.full((8,), 0.5, "float32")]))
    np.testing.assert_allclose(model.denoise(x, 0.5), ema_out, atol=1e-5)


def test_call_and_predict_return_the_posterior_mean_at_sigma_n():
    model = small_model()
    model.fit(mixture_data(64), batch_size=32, epochs=1, verbose=0)
    y = mixture_data(8)
    expected = model.denoise(y, SIGMA_N)
    np.testing.assert_allclose(model.predict(y, verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(to_numpy(model(y)), expected, atol=1e-5)
    levels = np.linspace(0.1, 0.5, 8).astype("float32")
    np.testing.assert_allclose(model.predict({"data": y, "sigma_n": levels}, verbose=0),
                               model.denoise(y, levels), atol=1e-5)
    # Inside fit (training=True) the call is skipped: the losses call D themselves.
    np.testing.assert_array_equal(to_numpy(model(y, training=True)), y)


def test_ema_is_updated_after_the_optimizer_step():
    # Step 0 (decay 0): the EMA equals the weights *after* the first update; step 1:
    # decay = min(0.9, 2/11), EMA = d w1 + (1 - d) w2 with w2 the weights after step 2.
    model = small_model(ema_decay=0.9, consistency_weight=0.5)
    y = mixture_data(32)
    before = [to_numpy(w) for w in model.denoiser.trainable_weights]
    model.fit(y, batch_size=32, epochs=1, verbose=0)
    w1 = [to_numpy(w) for w in model.denoiser.trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, w1))
    index = [next(i for i, v in enumerate(model.denoiser.weights) if v is w)
             for w in model.denoiser.trainable_weights]
    ema = lambda: [to_numpy(model.ema_denoiser.weights[i]) for i in index]  # noqa: E731
    for a, b in zip(ema(), w1):
        np.testing.assert_allclose(a, b, atol=1e-7)
    model.fit(y, batch_size=32, epochs=1, verbose=0)
    w2 = [to_numpy(w) for w in model.denoiser.trainable_weights]
    d = 2.0 / 11.0
    for a, b, c in zip(ema(), w1, w2):
        np.testing.assert_allclose(a, d * b + (1 - d) * c, rtol=1e-5, atol=1e-7)
    # compute_loss alone (no optimizer step) leaves the EMA and its counter alone.
    step, snapshot = int(to_numpy(model.ema_step)), ema()
    model.compute_loss(x=y, training=True)
    assert int(to_numpy(model.ema_step)) == step
    for a, b in zip(ema(), snapshot):
        np.testing.assert_array_equal(a, b)


def test_a_wrapped_sampler_gets_the_seed():
    model = small_model()

    def churned_heun(denoise_fn, x, sigmas, **kwargs):
        return ka.samplers.sample_heun(denoise_fn, x, sigmas, s_churn=20.0, **kwargs)

    a = model.generate(4, sampler=churned_heun, num_steps=4, seed=3)
    b = model.generate(4, sampler=churned_heun, num_steps=4, seed=3)
    c = model.generate(4, sampler=churned_heun, num_steps=4, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)

    def no_seed(denoise_fn, x, sigmas, verbose=0):
        return x

    with pytest.raises(TypeError, match="must accept the keywords `seed`.*no_seed"):
        model.generate(4, sampler=no_seed, num_steps=4, seed=0)


def test_equal_network_seeds_give_equal_models():
    a, b = small_model(), small_model()
    for u, v in zip(a.weights, b.weights):
        np.testing.assert_array_equal(to_numpy(u), to_numpy(v))
    other = ka.networks.MLPDenoiser(2, hidden_units=16, num_blocks=1, embedding_dim=8, seed=1)
    kernel = lambda net: next(to_numpy(w) for w in net.weights if w.path == "input_dense/kernel")  # noqa: E731
    assert not np.allclose(kernel(other), kernel(a.network))


def test_generate_modes_shapes_and_seeds():
    model = small_model()
    model.fit(mixture_data(128), batch_size=64, epochs=1, verbose=0)
    a = model.generate(10, num_steps=6, seed=1, batch_size=4)
    b = model.generate(10, num_steps=6, seed=1, batch_size=4)
    c = model.generate(10, num_steps=6, seed=2, batch_size=4)
    assert a.shape == (10, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    t = model.generate(10, num_steps=6, seed=1, mode="truncated")
    assert t.shape == (10, 2) and np.all(np.isfinite(t))
    for sampler in ("euler", "euler_ancestral"):
        assert model.generate(5, num_steps=4, seed=0, sampler=sampler).shape == (5, 2)


def test_generate_from_input():
    model = small_model()
    x = mixture_data(6)
    out = model.generate(x_start=x, sigma_start=1.0, mode="from_input", num_steps=5, seed=0)
    assert out.shape == x.shape
    # Starting below sigma_min without added noise is one denoiser call at that level.
    tiny = model.generate(x_start=x, sigma_start=0.001, mode="from_input", add_noise=False)
    np.testing.assert_allclose(tiny, model.denoise(x, 0.001), atol=1e-6)


def test_clip_denoised_keeps_every_mode_in_range_and_is_the_identity_when_wide():
    model = small_model()
    model.fit(mixture_data(128), batch_size=64, epochs=1, verbose=0)
    # A range the data (a circle of radius 1) overflows: every output lies in it.
    for mode in ("full", "truncated"):
        x = model.generate(64, num_steps=6, seed=1, mode=mode, clip_denoised=(-0.3, 0.3))
        assert x.min() >= -0.3 - 1e-6 and x.max() <= 0.3 + 1e-6, mode
        assert np.abs(x).max() > 0.29  # the clip was reached: the test can tell
    # A range wide enough to clip nothing leaves the samples as they were.
    np.testing.assert_array_equal(model.generate(16, num_steps=6, seed=1, clip_denoised=(-1e6, 1e6)),
                                  model.generate(16, num_steps=6, seed=1))


def test_generate_with_progress_bar(capsys):
    small_model().generate(3, num_steps=3, seed=0, verbose=1)
    assert "3/3" in capsys.readouterr().out


def test_save_and_load_round_trip(tmp_path):
    model = small_model(consistency_weight=0.3, ema_decay=0.95,
                        consistency_loss=ka.losses.ConsistencyLoss(num_steps=2))
    y = mixture_data(128)
    model.fit(y, batch_size=64, epochs=1, verbose=0)
    path = os.path.join(str(tmp_path), "ambient.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.get_config() == model.get_config()
    assert restored.consistency_loss.num_steps == 2
    assert int(to_numpy(restored.ema_step)) == int(to_numpy(model.ema_step))
    for use_ema in (True, False):
        np.testing.assert_allclose(restored.denoise(y[:8], 0.4, use_ema=use_ema),
                                   model.denoise(y[:8], 0.4, use_ema=use_ema), atol=1e-6)
    # The optimizer comes back with its state (Keras skips it, with a warning, for a
    # model that overrides `compile`), and training goes on from it.
    assert isinstance(restored.optimizer, keras.optimizers.Adam)
    assert int(to_numpy(restored.optimizer.iterations)) == int(to_numpy(model.optimizer.iterations)) == 2
    assert len(restored.optimizer.variables) == len(model.optimizer.variables)
    for got, want in zip(restored.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
    assert np.isfinite(restored.fit(y, batch_size=64, epochs=1, verbose=0).history["loss"][-1])
    assert int(to_numpy(restored.optimizer.iterations)) == 4


def test_loading_a_compiled_model_warns_of_nothing(tmp_path):
    model = small_model()
    model.fit(mixture_data(64), batch_size=64, epochs=1, verbose=0)
    path = os.path.join(str(tmp_path), "ambient.keras")
    model.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras.models.load_model(path)
    assert not [w for w in caught if "compile" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.slow
@pytest.mark.parametrize("loss_scale", [False, True])
def test_saved_model_loads_in_the_other_backends(tmp_path, loss_scale):
    model = small_model()
    if loss_scale:  # the wrapper `mixed_float16` compiles: torch saves its inner optimizer torch-only
        model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3)))
    y = mixture_data(128)
    model.fit(y, batch_size=64, epochs=1, verbose=0)
    path = os.path.join(str(tmp_path), "ambient.keras")
    model.save(path)
    np.save(os.path.join(str(tmp_path), "x.npy"), y[:8])
    expected = model.denoise(y[:8], 0.3)
    code = (
        "import json, numpy as np, keras, keras_ambient as ka\n"
        f"m = keras.models.load_model({path!r})\n"
        f"x = np.load({os.path.join(str(tmp_path), 'x.npy')!r})\n"
        "out = m.denoise(x, 0.3).tolist()\n"
        "steps = int(keras.ops.convert_to_numpy(m.optimizer.iterations))\n"
        # Training goes on with the saved optimizer state (torch saves its optimizer
        # under a torch-only class, which the model maps back to the public one).
        "loss = m.fit(np.concatenate([x] * 8), batch_size=32, epochs=1, verbose=0).history['loss'][-1]\n"
        "after = int(keras.ops.convert_to_numpy(m.optimizer.iterations))\n"
        "print(json.dumps({'out': out, 'b': keras.backend.backend(), 'steps': steps, 'after': after,\n"
        "                  'loss': float(loss), 'optimizer': type(m.optimizer).__name__}))\n"
    )
    for backend in BACKENDS:
        if backend == keras.backend.backend() or (loss_scale and backend == "tensorflow"):
            continue  # (the wrapped optimizer on one other backend: it costs a subprocess)
        result = run_in_backend(backend, code)
        assert result["b"] == backend
        assert result["optimizer"] == ("LossScaleOptimizer" if loss_scale else "Adam")
        np.testing.assert_allclose(np.array(result["out"]), expected, atol=1e-5)
        assert (result["steps"], result["after"]) == (2, 4) and np.isfinite(result["loss"]), result


@pytest.mark.parametrize("embedding", ["fourier", "positional"])
def test_float16_training_and_sampling_in_compiled_functions(embedding):
    # mixed_float16 compiles the loss scaling and, on TensorFlow, the step into a graph,
    # where a float16 `arange` (the positional embedding's, before) has no kernel.
    keras.config.set_dtype_policy("mixed_float16")
    net = ka.networks.MLPDenoiser(2, hidden_units=16, num_blocks=1, embedding=embedding,
                                  embedding_dim=8, seed=0)
    model = ka.AmbientDiffusion(net, sigma_n=SIGMA_N, consistency_weight=0.0, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(mixture_data(64), batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    out = model.denoise(mixture_data(4), 0.5)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_saved_model_keeps_its_dtype_policy(tmp_path, policy):
    # Loaded where the global policy is float32 (a fresh process): the model, its
    # network and EMA copy come back in the policy they were built with, and under
    # mixed_float16 the optimizer as the LossScaleOptimizer holding its saved state.
    keras.config.set_dtype_policy(policy)
    model = small_model()
    model.fit(mixture_data(128), batch_size=64, epochs=1, verbose=0)
    path = os.path.join(str(tmp_path), "ambient.keras")
    model.save(path)
    expected = model.denoise(mixture_data(8), 0.3)
    keras.config.set_dtype_policy("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = keras.models.load_model(path)
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone
    assert restored.dtype_policy.name == policy
    compute = policy.split("_")[1]
    for den in (restored.denoiser, restored.ema_denoiser):
        assert den.network.layers[-1].compute_dtype == compute
    assert type(restored.optimizer) is type(model.optimizer)
    assert int(to_numpy(restored.optimizer.iterations)) == 2
    for a, b in zip(model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_array_equal(restored.denoise(mixture_data(8), 0.3), expected)
    network = ka.networks.MLPDenoiser.from_config(model.network.get_config())
    assert network.layers[-1].compute_dtype == compute


def test_mixed_precision_keeps_losses_in_float32():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = small_model(consistency_weight=0.1)
    assert model.network.layers[-1].compute_dtype == "bfloat16"
    history = model.fit(mixture_data(64), batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    out = model.denoise(mixture_data(4), 0.5)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "sigma_n, error, match",
    [
        (-0.1, ValueError, "Received: sigma_n=-0.1"),
        (float("nan"), ValueError, "sigma_n must be finite|`sigma_n` must be finite"),
        (float("inf"), ValueError, "finite"),
        (80.0, ValueError, "sigma_max"),
        ("0.2", TypeError, "sigma_n"),
        (np.array([0.1, 0.2]), ValueError, "per-sample"),
    ],
)
def test_bad_sigma_n(sigma_n, error, match):
    with pytest.raises(error, match=match):
        small_model(sigma_n=sigma_n)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"sigma_data": 0.0}, "sigma_data"), ({"consistency_weight": -1.0}, "consistency_weight"),
     ({"ema_decay": 1.0}, "ema_decay"), ({"ambient_loss": "edm"}, "ambient_loss"),
     ({"consistency_loss": 3}, "consistency_loss"),
     ({"consistency_target": "teacher"}, "consistency_target"),
     ({"consistency_start_step": -1}, "consistency_start_step")],
)
def test_bad_model_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        small_model(**kwargs)


def test_nan_in_numpy_data_is_rejected_before_training():
    y = mixture_data(64)
    y[5, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value.*index \(5, 1\)"):
        small_model().fit(y, batch_size=32, epochs=1, verbose=0)


def test_nan_in_a_dataset_stops_training_and_leaves_weights_intact():
    y = mixture_data(64)
    y[40] = np.inf

    class Noisy(keras.utils.PyDataset):  # not checkable before training
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return y[32 * i:32 * (i + 1)]

    model = small_model()
    with pytest.raises(ValueError, match="epoch 1, batch 2.*NaN/Inf"):
        model.fit(Noisy(), epochs=1, verbose=0, shuffle=False)
    assert all(np.all(np.isfinite(to_numpy(w))) for w in model.weights)


def test_divergence_message():
    cb = ka.callbacks.TerminateOnNonFinite()
    with pytest.raises(FloatingPointError, match="learning rate"):
        cb.on_train_batch_end(3, {"loss": float("nan"), "ambient_loss": float("nan")})
    cb.on_train_batch_end(3, {"loss": 1.0})  # finite: nothing happens


def test_per_sample_sigma_n_length_mismatch():
    y = mixture_data(64)
    with pytest.raises(ValueError, match="one value per sample.*64 samples.*Received: sigma_n with 63"):
        small_model().fit((y, np.full((63,), 0.2, "float32")), batch_size=32, verbose=0)


def test_per_sample_sigma_n_out_of_range():
    y = mixture_data(8)
    with pytest.raises(ValueError, match=">= 0"):
        small_model().fit((y, np.full((8,), -0.2, "float32")), batch_size=8, verbose=0)


def test_data_shape_mismatch():
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        small_model().fit(np.zeros((8, 3), "float32"), batch_size=8, verbose=0)


def test_network_with_wrong_output_shape():
    x_in, c_in = keras.Input((2,)), keras.Input(())
    net = keras.Model([x_in, c_in], keras.layers.Dense(3)(x_in))
    with pytest.raises(ValueError, match="shape of its input"):
        model = ka.AmbientDiffusion(net, sigma_n=0.1)
        model.compile(optimizer="adam")
        model.fit(np.zeros((8, 2), "float32"), batch_size=8, verbose=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sampler": "ddim"}, "Received: sampler='ddim'"),
        ({"mode": "partial"}, "Received: mode='partial'"),
        ({"mode": "truncated", "sigma_n": 0.0}, "sigma_n"),
        ({"mode": "from_input"}, "x_start"),
        ({"num_steps": 0}, "num_steps"),
        ({"mode": "truncated", "num_steps": 1}, "num_steps >= 2.*Received: num_steps=1"),
        ({"mode": "from_input", "sigma_start": 1.0, "x_start": np.full((2, 2), np.nan, "float32")},
         "x_start.*non-finite"),
        ({"condition": np.zeros(4, "int32")}, "takes no condition"),
        ({"clip_denoised": (1.0, -1.0)}, r"clip_denoised.*Received: clip_denoised=\(1.0, -1.0\)"),
        ({"clip_denoised": 1.0}, "Received: clip_denoised=1.0"),
        ({"clip_denoised": (0.0, float("nan"))}, "clip_denoised"),
    ],
)
def test_bad_generate_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_model().generate(4, **kwargs)


def test_bad_denoise_arguments():
    with pytest.raises(ValueError, match="sigma"):
        small_model().denoise(np.zeros((2, 2), "float32"), -1.0)


def test_bad_denoise_inputs_name_the_argument():
    model = small_model()
    with pytest.raises(ValueError, match=r"`x` must have samples of shape \(2,\).*\(2, 3\)"):
        model.denoise(np.zeros((2, 3), "float32"), 0.5)
    with pytest.raises(ValueError, match="takes no condition"):
        model.denoise(np.zeros((2, 2), "float32"), 0.5, condition=np.zeros(2, "int32"))


def test_class_labels_are_checked_against_num_classes():
    net = ka.networks.MLPDenoiser(2, hidden_units=16, num_blocks=1, embedding_dim=8, seed=0, num_classes=3)
    model = ka.AmbientDiffusion(net, sigma_n=SIGMA_N, seed=0)
    for labels in ([0, 1, 7, 2], [0, -1, 1, 2]):
        with pytest.raises(ValueError, match=r"class labels in \[0, 3\)"):
            model.generate(4, num_steps=2, condition=np.array(labels), seed=0)
        with pytest.raises(ValueError, match=r"class labels in \[0, 3\)"):
            model.denoise(np.zeros((4, 2), "float32"), 0.5, condition=np.array(labels))
    with pytest.raises(ValueError, match="is conditional"):
        model.generate(4, num_steps=2, seed=0)


@pytest.mark.parametrize(
    "data, error, match",
    [
        ((np.ones((8, 2)) * 200).astype("uint8"), TypeError, "floating-point.*uint8"),
        (np.random.default_rng(0).uniform(0, 255, (64, 2)).astype("float32"), ValueError,
         "far off the scale.*suggest_sigma_data"),
        (np.zeros((0, 2), "float32"), ValueError, "at least one sample"),
        ([[0.1, 0.2], [0.3, 0.4]], TypeError, "Python list"),
    ],
)
def test_data_of_the_wrong_type_or_scale_is_refused(data, error, match):
    with pytest.raises(error, match=match):
        small_model().fit(data, verbose=0)


def test_data_off_the_scale_of_sigma_data_warns():
    y = mixture_data(64) * 5.0  # clean std ~3.5 = 7x sigma_data
    with pytest.warns(UserWarning, match="sigma_data"):
        small_model().fit(y, batch_size=64, epochs=1, verbose=0)


def test_scalar_and_list_sigma_n_are_one_level_per_sample():
    y = mixture_data(32)
    a, b, c = small_model(), small_model(), small_model()
    a.fit(y, np.full(32, 0.3, "float32"), batch_size=32, shuffle=False, verbose=0)
    b.fit(y, 0.3, batch_size=32, shuffle=False, verbose=0)
    c.fit(y, [0.3] * 32, batch_size=32, shuffle=False, verbose=0)
    for u, v, w in zip(a.weights, b.weights, c.weights):
        np.testing.assert_array_equal(to_numpy(u), to_numpy(v))
        np.testing.assert_array_equal(to_numpy(u), to_numpy(w))


def test_data_shape_contradicting_the_network_is_refused():
    net = ka.networks.MLPDenoiser(2, hidden_units=8, num_blocks=1)
    with pytest.raises(ValueError, match=r"contradicts the network.*\(2,\).*data_shape=\(3,\)"):
        ka.AmbientDiffusion(net, data_shape=(3,))


def test_a_network_that_cannot_be_copied_for_the_ema_is_explained():
    class Unregistered(keras.Model):  # no get_config for its argument
        def __init__(self, width):
            super().__init__()
            self.dense = keras.layers.Dense(width)

        def call(self, inputs):
            return self.dense(inputs[0])

    with pytest.raises(ValueError, match="EMA copy.*register_keras_serializable.*ema_decay=None"):
        ka.AmbientDiffusion(Unregistered(2), data_shape=(2,))
    ka.AmbientDiffusion(Unregistered(2), data_shape=(2,), ema_decay=None)  # works without the EMA
