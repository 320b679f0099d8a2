"""Bad input, walked systematically through the public API.

Every public class's `__init__` arguments are listed in `CONSTRUCTORS` with values
that must be refused (a `ValueError`/`TypeError` naming the argument and what was
received), or in `ACCEPTS_ANY` with the reason no value can be wrong.
`test_every_constructor_argument_is_covered` fails when a public class gains an
argument that is in neither, so new arguments get a bad-input case by habit.

The data paths (NumPy, tf.data, PyDataset, torch DataLoader, validation data),
the loading paths (`ka.models.load_model`, `keras.models.load_model`, the CLI's
`sample`) and saving to a legacy format are walked the same way below.
"""

import inspect
import os
import zipfile

import keras
import numpy as np
import pytest

import keras_ambient as ka
from keras_ambient import cli
from tests.harness import to_numpy

NAN = float("nan")


def _net(dim=2, **kwargs):
    return ka.networks.MLPDenoiser(dim, hidden_units=8, num_blocks=1, embedding_dim=8, seed=0,
                                   **kwargs)


def _feature_model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3)(inputs))


# class -> (function building the required arguments, {argument: [bad values]}).
# The required arguments are built fresh for each case (some hold Keras objects).
CONSTRUCTORS = {
    ka.AmbientDiffusion: (lambda: {"network": _net()}, {
        "network": ["mlp", None],
        "sigma_n": [-0.1, NAN, "0.2", 100.0],
        "sigma_data": [0.0, -1.0, NAN],
        "consistency_weight": [-1.0, NAN, "1"],
        "ambient_loss": ["edm", 3],
        "consistency_loss": ["chain", 3],
        "ema_decay": [1.0, -0.1, "0.9"],
        "sigma_min": [0.0, -1.0],
        "sigma_max": [0.001, NAN],
        "data_shape": [(3,), "2", (0,)],
        "seed": ["zero", 1.5],
        "lora_rank": [0, -2, 1.5],
        "lora_alpha": [-1.0, "a"],
        "consistency_target": ["teacher", None],
        "consistency_start_step": [-1, 1.5],
        "consistency_interval": [0, -2, 1.5],
    }),
    ka.callbacks.BackupAndRestore: (lambda: {"backup_dir": "backup"}, {
        "backup_dir": [None, 3, ""],
        "save_freq": [0, -5, "weekly", 1.5],
        "double_checkpoint": ["yes", None],
        "delete_checkpoint": ["no", None],
    }),
    ka.callbacks.SampleGrid: (lambda: {"output_dir": "grids"}, {
        "output_dir": [None, 3],
        "every_n_epochs": [0, -1, 1.5],
        "num_samples": [0, "4"],
        "seed": ["zero", 1.5],
        "mode": ["fast"],
        "num_steps": [0, 1.5],
        "sampler": ["ddim", 3],
        "value_range": [(1.0, -1.0), (0.0,), "01"],
        "tensorboard_writer": [3],
        "on_train_end": ["yes"],
        "verbose": [-1, "loud"],
    }),
    ka.callbacks.TerminateOnNonFinite: (lambda: {}, {
        "bad_samples": ["ignore", 1],
        "weights_check_freq": [-1, 1.5],
    }),
    ka.data.GaussianMixture: (lambda: {"means": [[0.0, 0.0], [1.0, 1.0]], "stds": [0.1, 0.1]}, {
        "means": [[[NAN, 0.0], [1.0, 1.0]], [0.0, 1.0, 2.0, 3.0, 4.0]],
        "stds": [[-0.1, 0.1], [0.1, 0.1, 0.1], [NAN, 0.1]],
        "weights": [[-1.0, 2.0], [1.0], [0.0, 0.0]],
    }),
    ka.layers.Denoiser: (lambda: {"network": _net()}, {"network": ["mlp", None]}),
    ka.layers.EDMDenoiser: (lambda: {"network": _net()}, {
        "network": ["mlp"],
        "sigma_data": [0.0, -0.5, NAN],
    }),
    ka.layers.FlowDenoiser: (lambda: {"network": _net()}, {
        "network": ["mlp"],
        "shift": [0.0, -1.0],
        "timestep_scale": [0.0, -1.0],
        "logit_std": [0.0, -1.0],
    }),
    ka.layers.FourierEmbedding: (lambda: {"dim": 8}, {
        "dim": [0, 3, 2.5],
        "scale": [0.0, -1.0, NAN],
        "seed": ["zero"],
    }),
    ka.layers.PositionalEmbedding: (lambda: {"dim": 8}, {
        "dim": [0, 3, 2.5],
        "max_period": [0.0, -1.0],
        "scale": [0.0, NAN],
    }),
    ka.layers.VPDenoiser: (lambda: {"network": _net()}, {
        "network": ["mlp"],
        "schedule": ["cosine", 3],
        "prediction": ["x0"],
    }),
    ka.losses.AmbientLoss: (lambda: {}, {
        "sigma_data": [0.0, NAN],
        "weighting": ["uniform"],
        "max_weight_ratio": [0.0, -1.0],
        "noise_distribution": ["normal"],
        "p_mean": [NAN, "a"],
        "p_std": [0.0, -1.0],
        "sigma_max": [0.0, -1.0],
    }),
    ka.losses.ConsistencyLoss: (lambda: {}, {
        "start": ["noise_only"],
        "start_scale": [0.0, -1.0],
        "chain": ["rk4"],
        "num_steps": [0, 1.5],
        "spacing": ["cosine"],
        "rho": [0.0, -1.0],
        "s_distribution": ["beta"],
        "sigma_min": [0.0, -1.0],
        "max_gap": [0.0, -1.0],
        "stop_gradient_target": ["yes"],
        "backprop_through_chain": ["yes"],
        "batch_fraction": [0.0, 1.5],
        "num_draws": [0, 1.5],
        "estimator": ["biased"],
    }),
    ka.memorization.KerasFeatureExtractor: (lambda: {"model": _feature_model()}, {
        "model": ["resnet", None],
        "batch_size": [0, 1.5],
        "preprocess": [3],
        "output": [1.5, [0]],
        "input_key": [3],
    }),
    ka.memorization.SimilarityIndex: (
        lambda: {"references": np.random.default_rng(0).normal(size=(6, 4)).astype("float32")}, {
            "references": [np.full((6, 4), NAN, "float32"), np.zeros((0, 4), "float32"), "refs"],
            "feature_extractor": ["vgg", 3],
            "center": ["yes"],
            "thresholds": [(1.5,), (-1.5,), "high"],
            "ratio_threshold": [0.0, 1.5],
            "query_batch_size": [0, 1.5],
            "reference_batch_size": [0, 1.5],
        }),
    ka.networks.MLPDenoiser: (lambda: {"data_dim": 2}, {
        "data_dim": [0, 2.5, "2"],
        "hidden_units": [0, 1.5],
        "num_blocks": [-1, 1.5],
        "embedding": ["sinusoid"],
        "embedding_dim": [0, 3],
        "num_classes": [0, 1.5],
        "condition_dim": [0, 1.5],
        "dropout": [-0.1, 1.0],
        "seed": ["zero"],
    }),
    ka.networks.UNet: (lambda: {"image_shape": (8, 8, 1), "base_channels": 8,
                                 "channel_multipliers": (1, 2), "num_res_blocks": 1}, {
        "image_shape": [(8, 8), (0, 8, 1), (7, 7, 1), "8x8"],
        "base_channels": [0, 1.5],
        "channel_multipliers": [(), (1, 0), "12"],
        "num_res_blocks": [0, 1.5],
        "attention_resolutions": [(3,), "8"],
        "num_heads": [0, 1.5],
        "dropout": [-0.1, 1.0],
        "embedding": ["sinusoid"],
        "embedding_dim": [0, 3],
        "num_classes": [0, 1.5],
        "condition_dim": [0, 1.5],
        "num_groups": [0, 1.5],
        "data_format": ["NCHW", None],
        "seed": ["zero"],
    }),
    ka.annotation.NoiseClassifier: (lambda: {"image_shape": (8, 8, 1)}, {
        "image_shape": ["8x8", (8, 8), (0, 8, 1)],
        "channels": [(), (0,), "16"],
        "embedding_dim": [3, 5, "32"],
        "sigma_min": [0.0, -1.0, NAN],
        "sigma_max": [0.001, NAN],
        "sigma_data": [0.0, NAN],
        "seed": ["zero", 1.5, -1],
    }),
    ka.annotation.NoiseAnnotation: (lambda: {"grid": [0.1, 1.0], "probabilities": [[0.2, 0.6]]}, {
        "grid": [[1.0, 0.1], [0.0, 1.0], [0.5], "ab"],
        "probabilities": [[[1.5, 0.5]], [[0.5]], "p", [[NAN, 0.5]]],
        "tau": [0.0, 1.0, NAN, "0.4"],
        "groups": [[0.5], [0, 1], "a"],
    }),
    ka.schedules.VPSchedule: (lambda: {}, {
        "beta_schedule": ["quadratic"],
        "beta_start": [0.0, -0.1, NAN],
        "beta_end": [0.0001, 1.5],
        "num_timesteps": [0, 1.5],
        "alphas_cumprod": [[1.5, 0.5], [0.5, 0.9], [NAN, 0.5]],
    }),
}

# Arguments for which no value is wrong, with the reason.
ACCEPTS_ANY = {}

# Classes walked elsewhere, with the reason.
NOT_WALKED = {
    ka.memorization.MemorizationReport: "a result record built by measure_similarity",
    ka.memorization.NoiseAttackResult: "a result record built by noise_attack",
    ka.losses.AmbientLossOutput: "a named tuple returned by the loss",
    ka.losses.ConsistencyChain: "a named tuple returned by ConsistencyLoss.reverse_chain",
    ka.memorization.DINOv2FeatureExtractor: "needs keras-hub's DINOv2 backbone "
                                            "(tests/test_memorization_dinov2.py)",
    ka.pretrained.KerasCVUNet: "needs keras-cv's Stable Diffusion UNet (tests/test_pretrained.py)",
    ka.pretrained.SD3Diffuser: "needs a keras-hub SD3 backbone (tests/test_pretrained.py)",
}

PUBLIC_MODULES = ("annotation", "callbacks", "data", "evaluation", "layers", "losses", "memorization",
                  "networks", "pretrained", "samplers", "schedules", "models")


def _public_classes():
    found = {ka.AmbientDiffusion}
    for module_name in PUBLIC_MODULES:
        module = getattr(ka, module_name)
        for name in dir(module):
            obj = getattr(module, name)
            if (not name.startswith("_") and inspect.isclass(obj)
                    and obj.__module__.startswith("keras_ambient")):
                found.add(obj)
    return sorted(found, key=lambda c: c.__qualname__)


def _arguments(cls):
    return [p.name for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def test_every_constructor_argument_is_covered():
    missing = []
    for cls in _public_classes():
        if cls in NOT_WALKED:
            continue
        if cls not in CONSTRUCTORS:
            missing.append(f"{cls.__qualname__} (class)")
            continue
        listed = CONSTRUCTORS[cls][1]
        for name in _arguments(cls):
            if name not in listed and (cls, name) not in ACCEPTS_ANY:
                missing.append(f"{cls.__qualname__}({name}=...)")
    assert not missing, ("public constructor arguments without a bad-input case "
                         f"(add them to CONSTRUCTORS or ACCEPTS_ANY): {missing}")


CASES = [
    pytest.param(cls, name, value, id=f"{cls.__qualname__}-{name}-{value!r}"[:90])
    for cls, (_, bad) in CONSTRUCTORS.items()
    for name, values in bad.items()
    for value in values
]


@pytest.mark.parametrize("cls, name, value", CASES)
def test_bad_constructor_argument_is_refused_by_name(cls, name, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # callbacks given relative folders create nothing elsewhere
    kwargs = CONSTRUCTORS[cls][0]()
    kwargs[name] = value
    with pytest.raises((ValueError, TypeError)) as info:
        cls(**kwargs)
    message = str(info.value)
    assert name in message, f"the error does not name `{name}`: {message}"
    assert "Received" in message, f"the error does not say what was received: {message}"


@pytest.mark.parametrize("cls", sorted(CONSTRUCTORS, key=lambda c: c.__qualname__),
                         ids=lambda c: c.__qualname__)
def test_the_valid_base_arguments_construct(cls, tmp_path, monkeypatch):
    """The base arguments of each case are valid, so each refusal above is the bad value's."""
    monkeypatch.chdir(tmp_path)
    cls(**CONSTRUCTORS[cls][0]())


# ------------------------------------------------------------------ data paths
FAULTS = ("nan_data", "negative_sigma_n", "sigma_n_above_sigma_max", "wrong_shape")
KINDS = ("numpy", "tf.data", "PyDataset", "DataLoader")


def _faulty(fault):
    from tests.test_batches import arrays

    y, levels, _ = arrays()
    y, levels = y.copy(), levels.copy()
    if fault == "nan_data":
        y[3, 0] = NAN
    elif fault == "negative_sigma_n":
        levels[3] = -0.1
    elif fault == "sigma_n_above_sigma_max":
        levels[3] = 100.0
    else:
        y = np.concatenate([y, y[:, :1]], axis=1)
    return y, levels


# What each fault must be called: numbers are checked before training for NumPy
# input, and counted as bad samples (the run stops, naming the batch) for streams.
_NUMPY_MESSAGE = {
    "nan_data": r"non-finite",
    "negative_sigma_n": r"sigma_n.*>= 0.*Received",
    "sigma_n_above_sigma_max": r"sigma_max.*Received",
    "wrong_shape": r"shape.*\(2,\).*Received",
}


@pytest.mark.parametrize("where", ["training", "validation"])
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_data_path_refuses_bad_batches(kind, fault, where):
    from tests.test_batches import BATCH, arrays, as_input, make_model

    bad = _faulty(fault)
    good = arrays()[:2]
    data, validation = (bad, good) if where == "training" else (good, bad)
    kwargs = {"batch_size": BATCH} if kind == "numpy" else {}
    model = make_model(False)
    before = [to_numpy(w) for w in model.weights] if model.built else None
    with pytest.raises(ValueError) as info:
        model.fit(as_input(kind, data), epochs=1, verbose=0, shuffle=False,
                  validation_data=validation if kind == "numpy" else as_input(kind, validation),
                  **kwargs)
    message = str(info.value)
    if kind == "numpy" or fault == "wrong_shape":
        assert __import__("re").search(_NUMPY_MESSAGE[fault], message, __import__("re").S), message
        if kind == "numpy" and before is not None:  # refused before any step
            for a, b in zip(model.weights, before):
                np.testing.assert_array_equal(to_numpy(a), b)
    elif where == "training":
        assert "bad samples" in message and "Received: 1 bad sample" in message, message
    else:
        assert "the validation data held bad samples" in message, message
    assert "Received" in message, message


# ------------------------------------------------------------------ loading and saving
def _saved_model(tmp_path):
    model = ka.AmbientDiffusion(_net(), sigma_n=0.2, seed=0)
    model.compile(optimizer="adam")
    model.build()
    path = tmp_path / "ok.keras"
    model.save(path)
    return model, path


def _damaged_copies(path, folder):
    """Files a user may end up with instead of a good `.keras` file."""
    data = path.read_bytes()
    files = {
        "empty": b"",
        "text": b"not a model\n",
        "truncated": data[: len(data) // 2],
    }
    out = {}
    for name, content in files.items():
        out[name] = folder / f"{name}.keras"
        out[name].write_bytes(content)
    # A complete archive whose weights file is cut short (its zip checksums are right).
    out["damaged_weights"] = folder / "damaged_weights.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out["damaged_weights"], "w") as dst:
        for member in src.namelist():
            content = src.read(member)
            dst.writestr(member, content[: len(content) // 2] if member.endswith(".h5") else content)
    # A complete archive that is not a Keras model.
    out["other_zip"] = folder / "other_zip.keras"
    with zipfile.ZipFile(out["other_zip"], "w") as dst:
        dst.writestr("readme.txt", "hello")
    return out


def test_a_saved_model_loads_back_with_the_library_loader(tmp_path):
    model, path = _saved_model(tmp_path)
    restored = ka.models.load_model(path)
    assert isinstance(restored, ka.AmbientDiffusion)
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("damage", ["empty", "text", "truncated", "damaged_weights", "other_zip"])
def test_a_damaged_model_file_is_called_corrupt(tmp_path, damage, capsys):
    _, path = _saved_model(tmp_path)
    bad = _damaged_copies(path, tmp_path)[damage]
    with pytest.raises(ValueError, match="corrupt or not a `.keras` file") as info:
        ka.models.load_model(bad)
    assert f"Received: filepath={str(bad)!r}" in str(info.value)
    status = cli.main(["sample", str(bad), "--out", str(tmp_path / "s.npz"), "--num", "2"])
    assert status == 2
    assert "corrupt or not a `.keras` file" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()


def test_missing_folder_and_legacy_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="Received: filepath="):
        ka.models.load_model(tmp_path / "missing.keras")
    with pytest.raises(ValueError, match="is a folder"):
        ka.models.load_model(tmp_path)
    (tmp_path / "legacy.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(ValueError, match="Legacy HDF5"):
        ka.models.load_model(tmp_path / "legacy.h5")
    with pytest.raises(TypeError, match="filepath"):
        ka.models.load_model(3)


def test_another_kind_of_keras_model_is_named(tmp_path):
    other = _feature_model()
    other.save(tmp_path / "other.keras")
    with pytest.raises(TypeError, match="holds a Functional, not a keras_ambient AmbientDiffusion"):
        ka.models.load_model(tmp_path / "other.keras")


@pytest.mark.parametrize("name", ["m.h5", "m.hdf5", "m.weights.h5", "m", "m.keras.zip"])
def test_saving_to_a_format_that_cannot_be_reloaded_is_refused(tmp_path, name):
    model = ka.AmbientDiffusion(_net(), sigma_n=0.2, seed=0)
    model.build()
    with pytest.raises(ValueError, match=r"\.keras.*Received: filepath="):
        model.save(tmp_path / name)
    assert not (tmp_path / name).exists()
