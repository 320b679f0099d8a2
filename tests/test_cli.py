"""The `keras-ambient` command line: commands, outputs and error messages."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_ambient as ka
from keras_ambient import cli
from keras_ambient.utils.images import read_png, write_png


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def smooth_images(n, size=16, channels=1, sigma=0.0, seed=0, block=None):
    """Piecewise-constant images (blocks of `block` pixels, default the whole
    image) plus noise: without edges the MAD estimate is exact on them."""
    block = block or size
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-0.8, 0.8, size=(n, size // block, size // block, channels))
    x = coarse.repeat(block, axis=1).repeat(block, axis=2)
    return (x + sigma * rng.standard_normal(x.shape)).astype("float32")


# ------------------------------------------------------------------ errors
def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "sample", "estimate-noise"):
        assert command in out
    assert cli.main([]) == 2  # no command: help, status 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "digits", "--sigma-n", "-1"], "expected a number >= 0 or 'auto'"),
        (["train", "digits", "--epochs", "0"], "expected a positive integer"),
        (["train", "digits", "--consistency-interval", "0"], "expected a positive integer"),
        (["train", "digits", "--channel-multipliers", "1,x"], "comma-separated"),
        (["train", "digits", "--backend", "numpy"], "invalid choice"),
        (["sample", "m.keras", "--mode", "sideways"], "invalid choice"),
    ],
)
def test_argument_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_errors_that_would_only_show_after_training_are_caught_before(capsys, tmp_path):
    status, _, err = run(capsys, "train", "digits", "--consistency-weight", "0", "--grid-steps", "1",
                         "--steps", "1", "--output-dir", tmp_path / "out")
    assert status == 2 and "--grid-steps >= 2" in err and "Received: --grid-steps 1" in err
    (tmp_path / "file").write_text("not a folder")
    status, _, err = run(capsys, "train", "digits", "--steps", "1", "--output-dir", tmp_path / "file" / "out")
    assert status == 2 and "Cannot create the output folder" in err and "regular file" in err
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    status, _, err = run(capsys, "train", tmp_path / "text.npz", "--output-dir", tmp_path / "o2")
    assert status == 2 and "is not an .npz file" in err and "not a zip archive" in err
    assert "pickled" not in err


def test_input_errors(capsys, tmp_path):
    status, _, err = run(capsys, "train", tmp_path / "missing_folder")
    assert status == 2 and "DATA must be 'digits'" in err and "no such file" in err
    status, _, err = run(capsys, "train", "digits", "--sigma-n", "auto")
    assert status == 2 and "digits are clean" in err
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 8, 8)))
    status, _, err = run(capsys, "train", tmp_path / "bad.npz")
    assert status == 2 and "key 'x'" in err and "images" in err
    np.savez(tmp_path / "bad_sigma.npz", x=np.zeros((4, 2)), sigma_n=np.zeros(3))
    status, _, err = run(capsys, "train", tmp_path / "bad_sigma.npz")
    assert status == 2 and "one level per sample (4)" in err
    (tmp_path / "empty").mkdir()
    status, _, err = run(capsys, "estimate-noise", tmp_path / "empty")
    assert status == 2 and "holds no images" in err
    status, _, err = run(capsys, "sample", tmp_path / "none.keras")
    assert status == 2 and "does not exist" in err
    status, _, err = run(capsys, "sample", tmp_path / "none.keras", "--out", "x.jpg")
    assert status == 2 and "--out must end with .png or .npz" in err
    np.savez(tmp_path / "img.npz", x=smooth_images(4, size=12, block=4))
    status, _, err = run(capsys, "train", tmp_path / "img.npz", "--sigma-n", "0.1",
                         "--channel-multipliers", "1,2,2,2")
    assert status == 2 and "divisible by 8" in err


def test_backend_conflict_in_process(capsys):
    other = [b for b in cli.BACKENDS if b != keras.backend.backend()][0]
    status, _, err = run(capsys, "estimate-noise", "digits", "--backend", other)
    assert status == 2 and "already imported" in err and f"KERAS_BACKEND={other}" in err
    # The active backend is accepted.
    status, out, _ = run(capsys, "estimate-noise", "digits", "--backend", keras.backend.backend(),
                         "--json")
    assert status == 0


# --------------------------------------------------------- estimate-noise
def test_estimate_noise_digits(capsys):
    status, out, _ = run(capsys, "estimate-noise", "digits", "--sigma-n", "0.2", "--json")
    assert status == 0
    result = json.loads(out)
    # The default is reference-free (no clean digits used), within 10%.
    assert result["method"] == "pca" and result["sigma_n_true"] == 0.2 and "reference" not in result
    assert abs(result["sigma_n_estimate"] - 0.2) < 0.02
    from keras_ambient.evaluation import estimate_noise_level
    import keras_ambient as ka

    y = ka.data.add_noise(ka.data.load_digits("train"), 0.2, seed=0)
    assert result["sigma_n_estimate"] == pytest.approx(estimate_noise_level(y), abs=1e-4)
    # Calibrated on the clean test split when asked.
    status, out, _ = run(capsys, "estimate-noise", "digits", "--sigma-n", "0.4", "--method", "calibrated", "--json")
    result = json.loads(out)
    assert status == 0 and result["method"] == "calibrated" and "test split" in result["reference"]
    assert abs(result["sigma_n_estimate"] - 0.4) < 0.04
    # Clean digits: the reference-free estimate reads ~0, the uncalibrated MAD does not.
    status, out, _ = run(capsys, "estimate-noise", "digits", "--sigma-n", "0", "--json")
    assert status == 0 and json.loads(out)["sigma_n_estimate"] < 0.01
    status, out, _ = run(capsys, "estimate-noise", "digits", "--sigma-n", "0", "--method", "mad", "--json")
    assert status == 0 and json.loads(out)["sigma_n_estimate"] > 0.2


def test_estimate_noise_npz_and_folder(capsys, tmp_path):
    y = smooth_images(32, size=16, sigma=0.1, seed=1)
    np.savez(tmp_path / "y.npz", x=y)
    status, out, _ = run(capsys, "estimate-noise", tmp_path / "y.npz")
    assert status == 0 and "method: pca" in out
    value = float(out.split("sigma_n = ")[1].split()[0])
    assert abs(value - 0.1) < 0.02
    # A folder of PNGs (values quantised to 8 bits, so the same ~0.1).
    folder = tmp_path / "pngs"
    for i, img in enumerate(y[:8]):
        write_png(folder / f"{i}.png", np.clip(np.round((img + 1) * 127.5), 0, 255).astype("uint8"))
    status, out, _ = run(capsys, "estimate-noise", folder, "--resolution", "16", "--grayscale", "--json")
    assert status == 0
    assert abs(json.loads(out)["sigma_n_estimate"] - 0.1) < 0.03
    status, _, err = run(capsys, "estimate-noise", tmp_path / "y.npz", "--method", "calibrated")
    assert status == 2 and "--reference" in err
    # Too few patches for the reference-free default: a clear error naming the ways out.
    np.savez(tmp_path / "few.npz", x=y[:2, :5, :5])
    status, _, err = run(capsys, "estimate-noise", tmp_path / "few.npz", "--method", "pca")
    assert status == 2 and "patches" in err and "--method mad" in err
    status, out, _ = run(capsys, "estimate-noise", tmp_path / "few.npz")  # 'auto' falls back to the MAD
    assert status == 0 and "method: mad" in out


# ---------------------------------------------------------- train / sample
def test_train_and_sample_vectors(capsys, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2)).astype("float32")
    levels = np.where(np.arange(64) % 4 == 0, 0.0, 0.3).astype("float32")
    np.savez(tmp_path / "v.npz", x=x + levels[:, None] * rng.normal(size=x.shape), sigma_n=levels)
    out_dir = tmp_path / "run"
    status, out, err = run(
        capsys, "train", tmp_path / "v.npz", "--epochs", "2", "--batch-size", "32",
        "--hidden-units", "16", "--grid-steps", "2", "--grid-every", "1", "--checkpoint-every", "1",
        "--grid-samples", "8", "--output-dir", out_dir, "--verbose", "0",
        "--backend", keras.backend.backend(), "--consistency-interval", "2",
    )
    assert status == 0, err
    assert "per-sample levels" in out
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["sigma_n"] == pytest.approx(0.3)
    assert metrics["consistency_interval"] == 2
    assert ka.models.load_model(out_dir / "model.keras").consistency_interval == 2
    assert metrics["epochs"] == 2 and metrics["steps"] == 4
    assert len(metrics["history"]["loss"]) == 2 and np.isfinite(metrics["history"]["loss"]).all()
    assert metrics["backend"] == keras.backend.backend()
    assert sorted(os.listdir(out_dir / "checkpoints")) == ["epoch_0001.keras", "epoch_0002.keras"]
    for path in metrics["files"]["sample_grids"]:
        assert read_png(path).shape == (256, 256, 1)
    # sample: npz and png, same seed gives the same samples.
    status, _, err = run(capsys, "sample", out_dir / "model.keras", "--num", "5", "--steps", "3",
                         "--out", tmp_path / "s.npz", "--verbose", "0")
    assert status == 0, err
    s1 = np.load(tmp_path / "s.npz")["x"]
    assert s1.shape == (5, 2) and np.isfinite(s1).all()
    status, _, _ = run(capsys, "sample", out_dir / "model.keras", "--num", "5", "--steps", "3",
                       "--out", tmp_path / "s2.npz", "--verbose", "0")
    np.testing.assert_allclose(np.load(tmp_path / "s2.npz")["x"], s1, atol=1e-5)
    status, _, _ = run(capsys, "sample", out_dir / "model.keras", "--num", "5", "--steps", "3",
                       "--out", tmp_path / "c.npz", "--verbose", "0", "--clip-denoised")
    clipped = np.load(tmp_path / "c.npz")["x"]
    # The last Euler step x + (0 - sigma)(x - D)/sigma returns D up to float32 rounding.
    assert status == 0 and clipped.min() >= -1.0 - 1e-6 and clipped.max() <= 1.0 + 1e-6
    assert np.abs(s1).max() > 1.0  # the data (std 1) leave [-1, 1]: the clip shows
    status, _, err = run(capsys, "sample", out_dir / "model.keras", "--num", "5", "--steps", "3",
                         "--out", tmp_path / "m.npz", "--verbose", "0", "--sigma-min", "0.05")
    assert status == 0, err
    expected = ka.models.load_model(out_dir / "model.keras").generate(5, num_steps=3, seed=0, sigma_min=0.05)
    np.testing.assert_allclose(np.load(tmp_path / "m.npz")["x"], expected, atol=1e-5)
    assert not np.allclose(expected, s1, atol=1e-3)  # the last level matters
    with pytest.raises(SystemExit):
        run(capsys, "sample", out_dir / "model.keras", "--sigma-min", "0")
    assert "--sigma-min: expected a positive number" in capsys.readouterr().err
    status, _, _ = run(capsys, "sample", out_dir / "model.keras", "--num", "5", "--steps", "3",
                       "--mode", "truncated", "--out", tmp_path / "sub" / "t.png", "--verbose", "0")
    assert status == 0 and read_png(tmp_path / "sub" / "t.png").shape == (256, 256, 1)


@pytest.mark.one_backend
@pytest.mark.slow
def test_train_images_warns_on_wrong_sigma(capsys, tmp_path):
    np.savez(tmp_path / "img.npz", x=smooth_images(16, size=8, sigma=0.2, seed=2))
    common = ["--epochs", "1", "--batch-size", "16", "--base-channels", "8", "--channel-multipliers", "1",
              "--grid-steps", "2", "--grid-samples", "4", "--consistency-weight", "0", "--verbose", "0"]
    status, out, err = run(capsys, "train", tmp_path / "img.npz", "--sigma-n", "0.05",
                           "--output-dir", tmp_path / "a", *common)
    assert status == 0, err
    assert "warning: the given --sigma-n 0.05 disagrees" in err
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["sigma_n_estimate"] == pytest.approx(0.2, abs=0.04)
    assert metrics["sample_mode"] == "truncated"
    assert read_png(tmp_path / "a" / "samples" / "samples_final.png").shape[2] == 1
    assert os.path.isfile(tmp_path / "a" / "model.keras")
    # sigma_n auto prints the estimate and uses it.
    status, out, err = run(capsys, "train", tmp_path / "img.npz", "--sigma-n", "auto",
                           "--output-dir", tmp_path / "b", *common)
    assert status == 0 and "warning" not in err
    assert "Estimated noise level" in out
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["sigma_n_source"] == "estimated (pca)"


@pytest.mark.one_backend
@pytest.mark.slow
def test_module_entry_point_switches_backend(tmp_path):
    """`python -m keras_ambient --backend B` trains on B although KERAS_BACKEND says another
    (keras_ambient/__init__.py reads --backend before it imports Keras)."""
    other = [b for b in cli.BACKENDS if b != keras.backend.backend()][0]
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), OMP_NUM_THREADS="1",
               TF_CPP_MIN_LOG_LEVEL="3")
    env.pop(cli._REEXEC_ENV, None)
    x = np.random.default_rng(0).normal(size=(16, 2)).astype("float32")
    np.savez(tmp_path / "v.npz", x=x, sigma_n=np.float32(0.1))
    proc = subprocess.run(
        [sys.executable, "-m", "keras_ambient", "train", str(tmp_path / "v.npz"), "--backend", other,
         "--epochs", "1", "--hidden-units", "8", "--grid-steps", "2", "--grid-samples", "4",
         "--output-dir", str(tmp_path / "run"), "--verbose", "0"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["backend"] == other
