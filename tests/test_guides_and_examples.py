"""Every guide and example runs top to bottom in smoke mode and writes what it promises."""

import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import pytest

from keras_ambient.utils.images import read_png, write_png

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUIDES = {
    "diffusion_from_noisy_data.py": [
        "clean_digits.png", "noisy_digits.png", "naive_full.png", "ambient_full.png",
        "ambient_truncated.png", "results.json",
    ],
    "consistency_loss.py": [
        "noisy_data.png", "naive_full.png", "ambient_truncated.png", "ambient_full.png",
        "consistent_full.png", "results.json",
    ],
    "mixing_clean_and_noisy.py": ["mixed_data.png", "clean_only.png", "mixed.png", "results.json"],
    "scaling_and_reliability.py": ["model.keras", "results.json"],
    "training_with_corrupted_data.py": [
        "corrupted_data.png", "classifier.keras", "annotation.npz", "clean_only.png",
        "all_as_clean.png", "annotated.png", "results.json",
    ],
    "measuring_memorization.py": [
        "training_data.png", "similarity_histogram.png", "samples_clean.png", "samples_ambient.png",
        "attack_clean.png", "attack_ambient.png", "results.json",
    ],
    "finetuning_stable_diffusion.py": [
        "noisy_decoded.png", "samples_consistency_0.png", "samples_consistency_1.png",
        "finetuned.keras", "results.json",
    ],
}
HEADER_KEYS = ("Title", "Author", "Date created", "Last modified", "Description", "Accelerator")


def _run(args, tmp_path, timeout=900):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), KERAS_AMBIENT_SMOKE="1",
               KERAS_AMBIENT_OUTPUT_DIR=str(tmp_path / "out"), OMP_NUM_THREADS="1",
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable] + [str(a) for a in args], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def _check_files(folder, names):
    for name in names:
        path = folder / name
        assert path.is_file(), f"missing {path}"
        if name.endswith(".png"):
            try:
                picture = read_png(path)
            except ValueError:  # a matplotlib figure (filtered PNG rows): read it with Pillow
                import numpy as np
                from PIL import Image

                with Image.open(path) as im:
                    picture = np.asarray(im.convert("L"))
            assert picture.size > 0 and picture.max() > 0, f"{path} is blank"
        elif name.endswith(".json"):
            json.loads(path.read_text())


@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_guide_format(guide):
    text = (ROOT / "guides" / guide).read_text()
    header = re.match(r'"""\n(.*?)\n"""', text, re.S)
    assert header, "a guide starts with the keras-io header docstring"
    keys = [line.split(":")[0] for line in header.group(1).splitlines()]
    assert tuple(keys) == HEADER_KEYS
    assert "KERAS_AMBIENT_SMOKE" in text


@pytest.mark.one_backend
@pytest.mark.slow
@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_guide_runs_in_smoke_mode(guide, tmp_path):
    _run([ROOT / "guides" / guide], tmp_path)
    _check_files(tmp_path / "out" / guide[:-3], GUIDES[guide])


@pytest.mark.one_backend
@pytest.mark.slow
def test_image_folder_example(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    for i in range(6):
        write_png(folder / "sub" / f"{i}.png", rng.integers(0, 256, size=(20, 24, 3)).astype("uint8"))
    out = tmp_path / "run"
    _run([ROOT / "examples" / "image_folder.py", folder, "--resolution", "8", "--output-dir", out,
          "--sigma-n", "0.1"], tmp_path)
    _check_files(out, ["model.keras", "samples_final.png", "metrics.json", "samples/samples_epoch_0001.png"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 6 and metrics["image_shape"] == [8, 8, 3]


@pytest.mark.one_backend
@pytest.mark.slow
def test_cifar10_example_smoke(tmp_path):
    out = tmp_path / "run"
    _run([ROOT / "examples" / "cifar10.py", "--smoke", "--sigma-n", "0.1", "--output-dir", out], tmp_path)
    _check_files(out / "sigma_0.1", ["model.keras", "samples.png", "metrics.json"])
    import numpy as np

    samples = np.load(out / "sigma_0.1" / "samples.npz")["x"]
    assert samples.shape == (4, 32, 32, 3) and np.isfinite(samples).all()
    assert json.loads((out / "summary.json").read_text())


@pytest.mark.one_backend
@pytest.mark.slow
def test_finetune_stable_diffusion_example_smoke(tmp_path):
    pytest.importorskip("keras_hub")
    out = tmp_path / "run"
    _run([ROOT / "examples" / "finetune_stable_diffusion.py", "--smoke", "--output-dir", out], tmp_path)
    _check_files(out, ["noisy_decoded.png", "samples_cons0.png", "samples_cons1.png",
                       "memorization_cons0.json", "memorization_cons1.json", "metrics.json"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["runs"]) == {"0", "1"}
    assert metrics["runs"]["0"]["mode"] == "truncated" and metrics["runs"]["1"]["mode"] == "full"
    import numpy as np

    assert all(np.isfinite(run["final_loss"]) for run in metrics["runs"].values())
