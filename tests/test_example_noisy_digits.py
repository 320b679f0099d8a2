"""Runs examples/noisy_digits.py --smoke in a subprocess under the current backend."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "noisy_digits.py")


def _finite_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _finite_numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


@pytest.mark.one_backend
@pytest.mark.slow
def test_noisy_digits_example_smoke(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), OMP_NUM_THREADS="1",
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--output-dir", str(out)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "residual noise" in proc.stdout

    from PIL import Image

    with Image.open(out / "samples.png") as im:
        assert im.format == "PNG"
        im.verify()

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("residual_noise", "frechet_distance_pca16_to_clean_test",
                "frechet_distance_classifier_to_clean_test"):
        for mode in ("full", "truncated"):
            assert math.isfinite(metrics["samples"][mode][key])
        assert math.isfinite(metrics["noisy_training_data"][key])
        assert math.isfinite(metrics["noisy_training_data_denoised"][key])
    assert metrics["better_mode"] in ("full", "truncated")
    assert "better: " in proc.stdout and "FD (classifier)" in proc.stdout
    assert metrics["settings"]["clip_denoised"] is None
    assert metrics["reference_images"] == metrics["settings"]["num_samples"] == 16
    numbers = list(_finite_numbers({k: v for k, v in metrics.items() if k != "settings"}))
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert metrics["backend"] == keras.backend.backend()
    assert metrics["steps"] == 3
    # The noisy training data reads ~sigma_n = 0.2 on the calibrated estimator.
    assert abs(metrics["noisy_training_data"]["residual_noise"] - 0.2) < 0.03

    import keras_ambient as ka

    model = keras.models.load_model(str(out / "model.keras"))
    assert isinstance(model, ka.AmbientDiffusion)
    assert model.sigma_n == pytest.approx(0.2)
    x = np.zeros((2, 8, 8, 1), "float32")
    assert np.all(np.isfinite(model.denoise(x, 0.5)))
