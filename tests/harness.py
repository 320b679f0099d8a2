"""A small reusable test harness (in the spirit of keras-hub's TestCase)."""

import importlib.util
import os
import subprocess
import sys
import json

import keras
import numpy as np

import keras_ambient as ka

BACKENDS = ("jax", "torch", "tensorflow")


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def assert_config_round_trip(obj):
    """`from_config(get_config())` rebuilds an object with the same config."""
    config = obj.get_config()
    clone = obj.__class__.from_config(config)
    assert clone.get_config() == config
    return clone


def assert_saving_round_trip(model, inputs, tmp_path, atol=1e-6):
    """`model.save` then `keras.models.load_model` gives identical outputs."""
    expected = to_numpy(model(inputs))
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(to_numpy(restored(inputs)), expected, atol=atol)
    return restored


def run_network_test(network, batch=3, condition=None, tmp_path=None):
    """Config, saving and one-step fit checks for a network F([x, c_noise(, cond)])."""
    shape = tuple(network.inputs[0].shape[1:])
    x = np.random.default_rng(0).normal(size=(batch,) + shape).astype("float32")
    c = np.linspace(-1.0, 1.0, batch).astype("float32")
    inputs = [x, c] + ([condition] if condition is not None else [])
    out = to_numpy(network(inputs))
    assert out.shape == x.shape
    assert np.all(np.isfinite(out))
    clone = assert_config_round_trip(network)
    clone.set_weights(network.get_weights())
    np.testing.assert_allclose(to_numpy(clone(inputs)), out, atol=1e-5)
    if tmp_path is not None:
        assert_saving_round_trip(network, inputs, tmp_path)
    # One training step through an AmbientDiffusion moves the weights.
    model = ka.AmbientDiffusion(network, sigma_n=0.1, consistency_weight=0.1, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = [to_numpy(w) for w in network.trainable_weights]
    data = (x, np.full((batch,), 0.1, "float32")) + ((condition,) if condition is not None else ())
    history = model.fit(data, batch_size=batch, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    after = [to_numpy(w) for w in network.trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    return out


def run_in_backend(backend, code, timeout=240):
    """Runs `code` in a fresh Python with KERAS_BACKEND=backend; returns the
    JSON object printed on its last stdout line."""
    env = dict(os.environ, KERAS_BACKEND=backend, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"subprocess on {backend} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_benchmark(name):
    """The module `benchmarks/<name>.py` (`benchmarks` holds scripts, not a package)."""
    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"ka_benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
