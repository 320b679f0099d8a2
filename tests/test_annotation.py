"""Ambient Omni annotation (ka.annotation), image corruptions and residual blur.

The classifier is checked against the Bayes classifier of a problem with a
closed form; the level search, the training data and the saved file against
hand-made curves and known moments.
"""

import os
import warnings

import keras
import numpy as np
import pytest

import keras_ambient as ka
from keras_ambient.annotation.noise_annotation import _first_level_staying_above
from tests.harness import assert_config_round_trip, to_numpy

GRID = np.array([0.1, 0.2, 0.4, 0.8, 1.6])


# ------------------------------------------------------------------ level search
def test_level_is_the_start_of_the_final_run_above_tau():
    curves = np.array([
        [0.0, 0.1, 0.5, 0.6, 0.5],    # crosses at 0.4 and stays
        [0.0, 0.5, 0.3, 0.5, 0.5],    # an early crossing that falls back: 0.8
        [0.5, 0.5, 0.5, 0.5, 0.5],    # indistinguishable everywhere: the lowest level
        [0.0, 0.1, 0.2, 0.5, 0.44],   # below tau at the top: unusable
        [0.0, 0.0, 0.0, 0.0, 0.45],   # exactly tau at the top only
    ])
    levels = _first_level_staying_above(curves, GRID, 0.45)
    np.testing.assert_array_equal(levels[[0, 1, 2, 4]], [0.4, 0.8, 0.1, 1.6])
    assert np.isnan(levels[3])


def test_groups_share_the_level_of_their_mean_curve():
    curves = np.array([
        [0.0, 0.2, 0.3, 0.6, 0.6],
        [0.0, 0.2, 0.7, 0.4, 0.6],   # alone: 1.6; with the first (mean 0.5 at 0.4, 0.8): 0.4
        [0.0, 0.0, 0.0, 0.0, 0.2],   # its own group: unusable
    ])
    annotation = ka.annotation.NoiseAnnotation(GRID, curves, tau=0.45, groups=[3, 3, 7])
    np.testing.assert_array_equal(annotation.levels[:2], [0.4, 0.4])
    assert np.isnan(annotation.levels[2])
    assert annotation.num_dropped == 1
    per_sample = ka.annotation.NoiseAnnotation(GRID, curves, tau=0.45)
    np.testing.assert_array_equal(per_sample.levels[:2], [0.8, 1.6])


def test_training_data_noises_each_usable_sample_once_at_its_level():
    rng = np.random.default_rng(0)
    clean = rng.uniform(-1, 1, (5, 8, 8, 1)).astype("float32")
    corrupted = rng.uniform(-1, 1, (300, 8, 8, 1)).astype("float32")
    curves = np.zeros((300, len(GRID)))
    first = rng.integers(0, len(GRID), 300)
    for i, f in enumerate(first):
        curves[i, f:] = 0.5
    curves[:20] = 0.0  # never fooled: dropped
    annotation = ka.annotation.NoiseAnnotation(GRID, curves)
    with pytest.warns(UserWarning, match="20 of 300 corrupted samples never became"):
        y, sigma_n = annotation.training_data(clean, corrupted, seed=1)
    assert y.shape == (5 + 280, 8, 8, 1) and y.dtype == np.float32
    np.testing.assert_array_equal(y[:5], clean)
    np.testing.assert_array_equal(sigma_n[:5], 0.0)
    np.testing.assert_allclose(sigma_n[5:], GRID[first[20:]], rtol=1e-6)
    # The added noise, divided by each sample's level, is standard normal.
    z = (y[5:] - corrupted[20:]) / sigma_n[5:, None, None, None]
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert abs(z.std() - 1.0) < 0.01
    with pytest.warns(UserWarning):
        y2, _ = annotation.training_data(clean, corrupted, seed=1)
    np.testing.assert_array_equal(y, y2)


def test_annotation_file_round_trip_and_bad_files(tmp_path):
    curves = np.random.default_rng(0).uniform(0, 1, (6, len(GRID)))
    annotation = ka.annotation.NoiseAnnotation(GRID, curves, tau=0.4, groups=[0, 0, 1, 1, 2, 2])
    path = str(tmp_path / "levels.npz")
    annotation.save(path)
    loaded = ka.annotation.NoiseAnnotation.load(path)
    np.testing.assert_array_equal(loaded.levels, annotation.levels)
    np.testing.assert_array_equal(loaded.probabilities, curves)
    np.testing.assert_array_equal(loaded.groups, annotation.groups)
    assert loaded.tau == 0.4
    with pytest.raises(ValueError, match="must end in '.npz'. Received"):
        annotation.save(str(tmp_path / "levels.json"))
    with pytest.raises(FileNotFoundError, match="Received"):
        ka.annotation.NoiseAnnotation.load(str(tmp_path / "missing.npz"))
    other = str(tmp_path / "other.npz")
    np.savez(other, something=np.zeros(3))
    with pytest.raises(ValueError, match="not an annotation written by NoiseAnnotation.save"):
        ka.annotation.NoiseAnnotation.load(other)


# ------------------------------------------------------------------ classifier
def _tiny_classifier(**kwargs):
    defaults = dict(image_shape=(4, 4, 1), channels=(8,), embedding_dim=16, sigma_min=0.05,
                    sigma_max=5.0, seed=0)
    return ka.annotation.NoiseClassifier(**{**defaults, **kwargs})


def test_classifier_config_saving_and_call(tmp_path):
    clf = _tiny_classifier()
    assert_config_round_trip(clf)
    x = np.random.default_rng(0).normal(size=(3, 4, 4, 1)).astype("float32")
    sigma = np.array([0.1, 1.0, 3.0], "float32")
    logits = to_numpy(clf([x, sigma]))
    assert logits.shape == (3,)
    # Train a few steps so the logits are not the zero-initialised head's.
    clf.compile(optimizer=keras.optimizers.Adam(1e-2))
    clf.fit(np.concatenate([x, -x]), np.array([1, 1, 1, 0, 0, 0]), epochs=3, verbose=0)
    logits = to_numpy(clf([x, sigma]))
    assert np.all(np.isfinite(logits)) and np.any(logits != 0)
    path = os.path.join(str(tmp_path), "classifier.keras")
    clf.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(to_numpy(restored([x, sigma])), logits, atol=1e-6)
    # The NumPy path (compiled predict, batched) gives the same logits.
    np.testing.assert_allclose(clf._logits_numpy(x, sigma, batch_size=2), logits, atol=1e-5)
    p1 = clf.clean_probability(x, 0.5, num_draws=3, seed=4)
    np.testing.assert_array_equal(p1, clf.clean_probability(x, 0.5, num_draws=3, seed=4))
    assert np.all((p1 > 0) & (p1 < 1))


def test_classifier_refuses_bad_training_data():
    clf = _tiny_classifier()
    clf.compile(optimizer="adam")
    x = np.zeros((4, 4, 4, 1), "float32")
    with pytest.raises(ValueError, match=r"`x` must be images of shape \(n,\) \+ \(4, 4, 1\)"):
        clf.fit(np.zeros((4, 8, 8, 1)), np.ones(4), verbose=0)
    with pytest.raises(ValueError, match="`y` must hold one label per image, 1 \\(clean\\) or 0"):
        clf.fit(x, np.array([0, 1, 2, 1]), verbose=0)
    with pytest.raises(ValueError, match="`y` must hold one label per image"):
        clf.fit(x, np.ones(3), verbose=0)
    bad = x.copy()
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        clf.fit(bad, np.ones(4), verbose=0)
    with pytest.raises(ValueError, match="`sigma` must be > 0"):
        clf.clean_probability(x, 0.0)


@pytest.mark.slow
def test_trained_classifier_matches_the_bayes_classifier():
    """Clean images are constant +a, corrupted ones -a (16 pixels). Noised at s, the
    Bayes classifier's logit for a corrupted image is 32 a m / s^2 with the pixel mean
    m ~ N(-a, s^2/16): its mean probability of "clean" along the grid, and the level
    where it reaches tau, are the targets."""
    a = 0.25
    grid = np.geomspace(0.05, 5.0, 16)
    eps = np.random.default_rng(1).standard_normal(20000)
    with np.errstate(over="ignore"):
        bayes = np.array([np.mean(1 / (1 + np.exp(-32 * a * (-a + s * eps / 4) / s**2)))
                          for s in grid])
    clean = np.full((256, 4, 4, 1), a, "float32")
    corrupted = -clean
    clf = ka.annotation.train_noise_classifier(clean, corrupted, classifier=_tiny_classifier(),
                                               steps=1000, batch_size=64, learning_rate=3e-3)
    annotation = ka.annotation.annotate_noise_levels(clf, corrupted[:64], grid=grid, num_draws=4,
                                                     groups=np.zeros(64, "int64"), seed=0)
    curve = annotation.probabilities.mean(axis=0)
    assert np.max(np.abs(curve - bayes)) < 0.04, np.round(np.c_[grid, bayes, curve], 3)
    bayes_level = grid[np.argmax(bayes >= 0.45)]
    ratio = annotation.levels[0] / bayes_level
    assert 1 / 1.4 < ratio < 1.4, (annotation.levels[0], bayes_level)  # within a grid step
    # Clean images are (almost) always called clean at low noise, corrupted ones never.
    assert clf.clean_probability(clean[:32], 0.05, seed=0).min() > 0.99
    assert curve[0] < 0.01


def test_one_call_annotation_returns_fit_ready_data():
    rng = np.random.default_rng(0)
    clean = rng.uniform(-1, 1, (16, 4, 4, 1)).astype("float32")
    corrupted = ka.data.gaussian_blur(rng.uniform(-1, 1, (24, 4, 4, 1)), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a few may be dropped after 20 steps
        y, sigma_n = ka.annotation.annotate_corrupted_data(clean, corrupted, classifier_steps=20, seed=0)
    assert y.shape[1:] == (4, 4, 1) and 16 < len(y) <= 40 and sigma_n.shape == (len(y),)
    np.testing.assert_array_equal(y[:16], clean)
    assert np.all(sigma_n[:16] == 0) and np.all(sigma_n[16:] > 0)
    model = ka.AmbientDiffusion(ka.networks.UNet(image_shape=(4, 4, 1), base_channels=8,
                                                 channel_multipliers=(1,)),
                                sigma_n=0.0, consistency_weight=0.0, seed=0)
    model.compile(optimizer="adam")
    assert np.isfinite(model.fit((y, sigma_n), batch_size=8, epochs=1, verbose=0).history["loss"][-1])


def test_annotation_refuses_bad_input():
    x = np.zeros((4, 4, 4, 1), "float32")
    with pytest.raises(ValueError, match="needs a clean reference set.*Received: clean=None"):
        ka.annotation.train_noise_classifier(None, x)
    with pytest.raises(ValueError, match="Received: clean=an empty array"):
        ka.annotation.annotate_corrupted_data(x[:0], x)
    with pytest.raises(ValueError, match="same shape. Received: clean with shape"):
        ka.annotation.train_noise_classifier(x, np.zeros((4, 8, 8, 1)))
    with pytest.raises(ValueError, match="non-finite"):
        ka.annotation.train_noise_classifier(x, np.full((4, 4, 4, 1), np.inf))
    with pytest.raises(TypeError, match="`classifier` must be a ka.annotation.NoiseClassifier"):
        ka.annotation.annotate_noise_levels("classifier", x)
    clf = _tiny_classifier()
    with pytest.raises(ValueError, match="`corrupted` must be images of shape"):
        ka.annotation.annotate_noise_levels(clf, np.zeros((4, 8, 8, 1)))
    with pytest.raises(ValueError, match="`tau` must be"):
        ka.annotation.annotate_noise_levels(clf, x, tau=1.5)
    with pytest.raises(ValueError, match="`grid` must be at least 2 increasing"):
        ka.annotation.annotate_noise_levels(clf, x, grid=[1.0, 0.5])
    annotation = ka.annotation.NoiseAnnotation(GRID, np.full((4, len(GRID)), 0.5))
    with pytest.raises(ValueError, match="must hold the 4 annotated samples. Received"):
        annotation.training_data(x, x[:3])
    with pytest.raises(ValueError, match="same shape. Received: clean with shape"):
        annotation.training_data(np.zeros((2, 8, 8, 1)), x)


# ------------------------------------------------------------------ corruptions
def test_corruptions_keep_constant_images_and_shapes():
    const = np.full((2, 8, 8, 1), 0.3, "float32")
    np.testing.assert_allclose(ka.data.gaussian_blur(const, 1.5), const, atol=1e-6)
    np.testing.assert_allclose(ka.data.downsample_upsample(const, 2), const, atol=1e-6)
    # JPEG: 8-bit quantization of 0.3 and the codec's rounding, a few grey levels.
    np.testing.assert_allclose(ka.data.jpeg_compress(const, 50), const, atol=4 / 127.5)
    assert ka.data.gaussian_blur(const[..., 0], 1.0).shape == (2, 8, 8)


def test_blur_conserves_mass_and_removes_detail():
    delta = np.zeros((1, 9, 9, 1), "float32")
    delta[0, 4, 4, 0] = 1.0
    blurred = ka.data.gaussian_blur(delta, 1.0)
    assert abs(blurred.sum() - 1.0) < 1e-5
    # A 1-D Gaussian of std 1 sampled at integers: centre weight ~ 1/sqrt(2 pi), squared in 2-D.
    assert abs(blurred[0, 4, 4, 0] - 1 / (2 * np.pi)) < 0.01
    x = ka.data.load_digits("test")
    weak, strong = (ka.evaluation.residual_blur(ka.data.gaussian_blur(x, s), x) for s in (0.6, 1.0))
    assert 0 < weak < strong < 1
    assert ka.evaluation.residual_blur(ka.data.downsample_upsample(x, 2), x) > 0.5
    q95, q10 = (np.abs(ka.data.jpeg_compress(x, q) - x).mean() for q in (95, 10))
    assert q95 < q10


def test_residual_blur_closed_form_on_white_noise():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((200, 16, 16, 1))
    # White noise of std s has neighbour energy 2 s^2: half the std leaves a quarter.
    assert abs(ka.evaluation.residual_blur(0.5 * rng.standard_normal((200, 16, 16, 1)), reference)
               - 0.75) < 0.01
    assert ka.evaluation.residual_blur(reference, reference) == 0.0
    with pytest.raises(ValueError, match="`reference` must hold images of the same shape"):
        ka.evaluation.residual_blur(reference, reference[:, :8])
    with pytest.raises(ValueError, match="constant reference"):
        ka.evaluation.residual_blur(reference, np.zeros_like(reference))


def test_corruptions_refuse_bad_input():
    x = np.zeros((2, 8, 8, 1), "float32")
    with pytest.raises(ValueError, match="sigma.*Received"):
        ka.data.gaussian_blur(x, 0.0)
    with pytest.raises(ValueError, match="divisible by `factor`. Received: factor=3"):
        ka.data.downsample_upsample(x, 3)
    with pytest.raises(ValueError, match="factor.*Received"):
        ka.data.downsample_upsample(x, 1)
    with pytest.raises(ValueError, match=r"`quality` must be in \[1, 95\]"):
        ka.data.jpeg_compress(x, 100)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ka.data.jpeg_compress(np.zeros((2, 8, 8, 2)), 50)
    with pytest.raises(ValueError, match="`x` must be finite"):
        ka.data.gaussian_blur(np.full((2, 8, 8, 1), np.nan), 1.0)
    with pytest.raises(ValueError, match="`x` must have shape"):
        ka.data.gaussian_blur(np.zeros((8, 8)), 1.0)


@pytest.mark.slow
def test_saved_classifier_loads_in_the_other_backends(tmp_path):
    from tests.harness import BACKENDS, run_in_backend

    clf = _tiny_classifier()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 4, 1)).astype("float32")
    clf.compile(optimizer=keras.optimizers.Adam(1e-2))
    clf.fit(x, np.array([1, 0, 1, 0, 1, 0]), epochs=2, verbose=0)
    path = os.path.join(str(tmp_path), "classifier.keras")
    clf.save(path)
    np.save(os.path.join(str(tmp_path), "x.npy"), x)
    expected = clf.clean_probability(x, 0.3, num_draws=2, seed=1)
    code = (
        "import json, numpy as np, keras, keras_ambient as ka\n"
        f"m = keras.models.load_model({path!r})\n"
        f"x = np.load({os.path.join(str(tmp_path), 'x.npy')!r})\n"
        "p = m.clean_probability(x, 0.3, num_draws=2, seed=1)\n"
        "print(json.dumps({'p': p.tolist(), 'b': keras.backend.backend()}))\n"
    )
    for backend in BACKENDS:
        if backend == keras.backend.backend():
            continue
        result = run_in_backend(backend, code)
        assert result["b"] == backend
        np.testing.assert_allclose(np.array(result["p"]), expected, atol=1e-5)
