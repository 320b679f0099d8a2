"""Reliability: divergence messages, non-finite weights, safe loading, version checks
and determinism of sampling."""

import json
import os
import zipfile

import keras
import numpy as np
import pytest

import keras_ambient as ka
from keras_ambient.utils.versioning import (
    VERSION_KEY,
    check_saved_config,
    parse_version,
)
from tests.harness import to_numpy


def small_model(**kwargs):
    net = ka.networks.MLPDenoiser(
        2, hidden_units=16, num_blocks=1, embedding_dim=8, seed=0
    )
    kwargs.setdefault("sigma_n", 0.2)
    kwargs.setdefault("seed", 0)
    model = ka.AmbientDiffusion(net, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(kwargs.pop("lr", 1e-3)))
    return model


def data(n=64):
    x = ka.data.GaussianMixture.circle().sample(n, seed=0)
    return ka.data.add_noise(x, 0.2, seed=1)


class PoisonWeight(keras.callbacks.Callback):
    """Writes NaN into one weight after a given (epoch, batch)."""

    def __init__(self, epoch, batch, pick):
        super().__init__()
        self.at, self.pick, self.epoch = (epoch, batch), pick, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            v = self.pick(self.model)
            v.assign(np.full(v.shape, np.nan, "float32"))


def ema_of_a_trainable_weight(model):
    """The EMA copy of the first trainable weight (the EMA of a NaN stays NaN)."""
    w = model.denoiser.trainable_weights[0]
    i = next(i for i, v in enumerate(model.denoiser.weights) if v is w)
    return model.ema_denoiser.weights[i]


# ------------------------------------------------------------------- divergence
def test_divergence_names_epoch_batch_step_and_causes():
    model = small_model(consistency_weight=0.5)
    poison = PoisonWeight(
        1, 1, lambda m: m.denoiser.trainable_weights[0]
    )  # after epoch 2, batch 2
    with pytest.raises(FloatingPointError) as info:
        model.fit(data(), batch_size=16, epochs=3, verbose=0, callbacks=[poison])
    msg = str(info.value)
    # The next batch (epoch 2, batch 3) is the first with a NaN loss: step 4 + 3 = 7.
    assert "Training diverged at epoch 2, batch 3 (training step 7)" in msg
    assert "the loss became nan" in msg and "ambient_loss=nan" in msg
    assert "The last finite loss was" in msg and "1 batch(es) earlier" in msg
    assert "learning rate (now 0.001)" in msg
    assert "consistency_weight (now 0.5)" in msg


def test_non_finite_weights_are_caught_even_when_the_loss_is_finite():
    model = small_model()
    # The EMA copy does not enter the loss: only the weight check can see it.
    poison = PoisonWeight(0, 2, ema_of_a_trainable_weight)
    check = ka.callbacks.TerminateOnNonFinite(weights_check_freq=2)
    with pytest.raises(FloatingPointError) as info:
        model.fit(data(), batch_size=8, epochs=1, verbose=0, callbacks=[poison, check])
    msg = str(info.value)
    assert (
        "during epoch 1, batch 4 (training step 4)" in msg
    )  # the first check after the NaN
    assert "of 'ema_denoiser' holds NaN/Inf values" in msg
    assert "learning rate" in msg


def test_weights_are_checked_at_the_end_of_each_epoch():
    model = small_model()
    poison = PoisonWeight(0, 3, ema_of_a_trainable_weight)
    with pytest.raises(
        FloatingPointError,
        match=r"at the end of epoch 1 \(training step 4\).*ema_denoiser",
    ):
        model.fit(data(32), batch_size=8, epochs=2, verbose=0, callbacks=[poison])


def test_bad_data_message_names_the_step():
    y = data()
    y[40] = np.nan

    class Noisy(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return y[32 * i : 32 * (i + 1)]

    with pytest.raises(
        ValueError, match=r"epoch 1, batch 2 \(training step 2\).*NaN/Inf"
    ):
        small_model().fit(Noisy(), epochs=1, verbose=0, shuffle=False)


def test_terminate_on_non_finite_arguments():
    with pytest.raises(ValueError, match="weights_check_freq"):
        ka.callbacks.TerminateOnNonFinite(weights_check_freq=-1)
    cb = ka.callbacks.TerminateOnNonFinite()
    with pytest.raises(FloatingPointError, match="epoch 1, batch 4.*learning rate"):
        cb.on_train_batch_end(3, {"loss": float("inf"), "ambient_loss": float("inf")})


# ----------------------------------------------------------------- safe loading
def _saved(tmp_path):
    model = small_model(consistency_weight=0.3)
    model.fit(data(), batch_size=32, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    return model, path


def _edit_config(path, new_path, edit):
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(new_path, "w") as dst:
        for item in src.infolist():
            content = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(content)
                edit(config["config"])
                content = json.dumps(config).encode()
            dst.writestr(item, content)
    return new_path


def test_load_model_in_safe_mode(tmp_path):
    model, path = _saved(tmp_path)
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    assert config["config"][VERSION_KEY] == ka.__version__
    assert "lambda" not in json.dumps(config).lower()  # nothing executable in the file
    restored = keras.models.load_model(path, safe_mode=True)
    y = data(8)
    np.testing.assert_allclose(
        restored.denoise(y, 0.4), model.denoise(y, 0.4), atol=1e-6
    )
    np.testing.assert_array_equal(
        to_numpy(restored.seed_generator.state), to_numpy(model.seed_generator.state)
    )


def test_file_from_a_newer_major_version_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    major = parse_version(ka.__version__)[0] + 1
    newer = _edit_config(
        path,
        str(tmp_path / "newer.keras"),
        lambda c: c.update({VERSION_KEY: f"{major}.0.0"}),
    )
    with pytest.raises(
        ValueError,
        match=rf"saved by keras_ambient {major}\.0\.0, a newer major version.*Upgrade",
    ):
        keras.models.load_model(newer, safe_mode=True)


def test_config_with_unknown_keys_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    odd = _edit_config(
        path,
        str(tmp_path / "odd.keras"),
        lambda c: c.update({"noise_schedule": "cosine"}),
    )
    with pytest.raises(
        ValueError, match=r"not compatible.*does not know: \['noise_schedule'\]"
    ):
        keras.models.load_model(odd, safe_mode=True)


def test_files_without_a_version_stamp_still_load(tmp_path):
    _, path = _saved(tmp_path)
    old = _edit_config(path, str(tmp_path / "old.keras"), lambda c: c.pop(VERSION_KEY))
    assert isinstance(keras.models.load_model(old), ka.AmbientDiffusion)


def test_version_helpers():
    assert parse_version("1.2.3rc1") == (1, 2, 3) and parse_version("2") == (2, 0, 0)
    with pytest.raises(ValueError, match="version"):
        parse_version("dev")
    config = small_model().get_config()
    assert VERSION_KEY not in check_saved_config(ka.AmbientDiffusion, config)
    assert check_saved_config(
        ka.AmbientDiffusion, dict(config, **{VERSION_KEY: "0.0.1"})
    )
    with pytest.raises(ValueError, match="unreadable"):
        check_saved_config(ka.AmbientDiffusion, dict(config, **{VERSION_KEY: "x"}))


# ------------------------------------------------------------------ determinism
def test_same_seed_same_samples_different_seed_different_samples():
    model = small_model()
    model.fit(data(), batch_size=32, epochs=1, verbose=0)
    for kwargs in ({}, {"sampler": "euler_ancestral"}, {"mode": "truncated"}):
        a = model.generate(6, num_steps=4, seed=7, **kwargs)
        b = model.generate(6, num_steps=4, seed=7, **kwargs)
        c = model.generate(6, num_steps=4, seed=8, **kwargs)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)


def test_same_seed_same_training_within_a_backend():
    """The training noise comes from the model's seed: two models with the same
    weights and seed take identical steps."""
    keras.utils.set_random_seed(1)
    a = small_model(seed=4)
    keras.utils.set_random_seed(1)
    b = small_model(seed=4)
    y = data()
    la = a.fit(y, batch_size=16, epochs=1, verbose=0, shuffle=False).history["loss"]
    lb = b.fit(y, batch_size=16, epochs=1, verbose=0, shuffle=False).history["loss"]
    assert la == lb
    for u, v in zip(a.weights, b.weights):
        np.testing.assert_array_equal(to_numpy(u), to_numpy(v))
