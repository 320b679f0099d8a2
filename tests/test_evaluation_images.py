"""Tests of keras_ambient.evaluation.images (NumPy; the same on every backend)."""

import numpy as np
import pytest

import keras_ambient as ka
from keras_ambient.evaluation import images as ev
from keras_ambient.evaluation import sliced_wasserstein_distance


@pytest.fixture(scope="module")
def digits():
    return ka.data.load_digits("train"), ka.data.load_digits("test")


# ----------------------------------------------------------- noise estimator
@pytest.mark.parametrize("sigma", [0.1, 0.2, 0.4])
def test_noise_level_within_10_percent_on_digits(digits, sigma):
    x_train, x_test = digits
    # Calibrated on one set of clean digits, measured on another set, noised.
    y_test = ka.data.add_noise(x_test, sigma, seed=11)
    est = ev.estimate_noise_level(y_test, reference=x_train)
    assert abs(est - sigma) < 0.1 * sigma, est
    y_train = ka.data.add_noise(x_train, sigma, seed=12)
    est = ev.estimate_noise_level(y_train, reference=x_test)
    assert abs(est - sigma) < 0.1 * sigma, est


def test_noise_level_reads_zero_on_clean_digits(digits):
    x_train, x_test = digits
    assert ev.estimate_noise_level(x_test, reference=x_train) < 0.02
    assert ev.estimate_noise_level(x_train, reference=x_test) < 0.02
    # Uncalibrated, the edges of tiny digits dominate the classical MAD estimate.
    assert ev.estimate_noise_level(x_test, method="mad") > 0.2
    assert ev.estimate_noise_level(x_test, quantile=0.5) > 0.2  # 'auto' + quantile: the MAD


def test_noise_level_uncalibrated_is_exact_on_pure_noise():
    z = 0.3 * np.random.default_rng(0).standard_normal((400, 8, 8, 1))
    assert abs(ev.estimate_noise_level(z, method="mad") - 0.3) < 0.015
    assert abs(ev.estimate_noise_level(z, quantile=0.25) - 0.3) < 0.015
    assert abs(ev.estimate_noise_level(z) - 0.3) < 0.015  # reference-free default ("pca")


# --------------------------------------------- reference-free default ("pca")
@pytest.mark.parametrize("sigma", [0.1, 0.2, 0.4])
def test_reference_free_within_10_percent_on_digits(digits, sigma):
    # No clean data: PCA over the images, noise eigenvalues from the MP bulk edge.
    for x, seed in zip(digits, (21, 22)):
        y = ka.data.add_noise(x, sigma, seed=seed)
        est = ev.estimate_noise_level(y)
        assert abs(est - sigma) < 0.1 * sigma, (len(x), sigma, est)
    # On the 359 test digits the older tail rule reads low; the default is closer.
    old = ev.estimate_noise_level_pca(y)
    assert old < sigma and abs(est - sigma) < abs(old - sigma), (sigma, est, old)


def test_reference_free_reads_small_on_clean_data(digits):
    x_train, x_test = digits
    assert ev.estimate_noise_level(x_train) < 0.01
    assert ev.estimate_noise_level(x_test) < 0.01
    # Smooth clean images, through the patch route (few images of 32x32): small.
    u = np.linspace(-1, 1, 32)
    smooth = np.stack([np.sin(3 * a * u)[:, None] * np.cos(2 * a * u)[None, :] for a in (0.5, 1.0, 1.5)])
    assert ev.estimate_noise_level(smooth) < 0.01
    noisy = smooth + 0.2 * np.random.default_rng(0).standard_normal(smooth.shape)
    assert abs(ev.estimate_noise_level(noisy) - 0.2) < 0.02


def test_reference_free_patches_per_image_and_colour():
    rng = np.random.default_rng(1)
    # Four 48x48 RGB images, one level per image: each read from its own patches.
    levels = np.array([0.05, 0.1, 0.2, 0.4])
    u = np.linspace(-1, 1, 48)
    clean = 0.8 * np.tanh(4 * u)[None, :, None, None] * np.ones((4, 48, 48, 3))
    y = clean + levels[:, None, None, None] * rng.standard_normal(clean.shape)
    per = ev.estimate_noise_level(y, per_image=True)
    assert per.shape == (4,)
    np.testing.assert_allclose(per, levels, rtol=0.1)
    np.testing.assert_allclose(ev.estimate_noise_level(y[:, :, :, :1], patch_size=6), 0.2, rtol=0.5)


def test_reference_free_on_a_photo():
    data = pytest.importorskip("skimage.data")
    from skimage.color import rgb2gray

    x = 2.0 * rgb2gray(data.astronaut()) - 1.0  # grey in [-1, 1]
    for sigma in (0.1, 0.2):
        y = x + sigma * np.random.default_rng(7).standard_normal(x.shape)
        est = ev.estimate_noise_level(y[None])
        assert abs(est - sigma) < 0.1 * sigma, (sigma, est)


def test_noise_level_per_image_and_monotone(digits):
    x_train, x_test = digits
    y = ka.data.add_noise(x_test[:200], 0.2, seed=3)
    per = ev.estimate_noise_level(y, reference=x_train, per_image=True)
    assert per.shape == (200,)
    assert abs(np.median(per) - 0.2) < 0.03
    readings = [ev.estimate_noise_level(ka.data.add_noise(x_test, s, seed=4), reference=x_train)
                for s in (0.05, 0.1, 0.2, 0.4, 0.8)]
    assert np.all(np.diff(readings) > 0), readings
    # Smoother than the reference (a posterior mean): reads 0, never negative.
    smooth = 0.5 * (x_test + x_test[:, ::-1])
    assert ev.estimate_noise_level(smooth, reference=x_train) >= 0.0


def test_noise_level_pca_reference_free(digits):
    x_all = ka.data.load_digits()
    assert ev.estimate_noise_level_pca(x_all) < 0.01
    for sigma in (0.1, 0.2, 0.4):
        est = ev.estimate_noise_level_pca(ka.data.add_noise(x_all, sigma, seed=5))
        assert abs(est - sigma) < 0.1 * sigma, (sigma, est)


def test_noise_level_errors(digits):
    x_train, _ = digits
    with pytest.raises(ValueError, match="images"):
        ev.estimate_noise_level(np.zeros((4, 8)))
    with pytest.raises(ValueError, match="finite"):
        ev.estimate_noise_level(np.full((2, 8, 8), np.nan))
    with pytest.raises(ValueError, match="quantile"):
        ev.estimate_noise_level(x_train, quantile=1.5)
    with pytest.raises(ValueError, match="reference"):
        ev.estimate_noise_level(x_train, reference=np.zeros((3, 4, 4, 1)))
    with pytest.raises(TypeError, match="images"):
        ev.estimate_noise_level("not images")
    with pytest.raises(ValueError, match="method"):
        ev.estimate_noise_level(x_train, method="wavelet")
    with pytest.raises(TypeError, match="per_image"):
        ev.estimate_noise_level(x_train, per_image="yes")
    with pytest.raises(ValueError, match="patch_size"):
        ev.estimate_noise_level(x_train, patch_size=2)
    with pytest.raises(TypeError, match="patch_size"):
        ev.estimate_noise_level(x_train, patch_size=4.5)
    with pytest.raises(ValueError, match="patch_size"):
        ev.estimate_noise_level(x_train, reference=x_train, patch_size=8)
    # Too few samples for a covariance (two 8x8 images: 50 patches of 4x4): what to pass instead.
    with pytest.raises(ValueError, match=r"Received: images with shape \(2, 8, 8, 1\).*method='mad'"):
        ev.estimate_noise_level(x_train[:2])
    with pytest.raises(ValueError, match="per_image"):
        ev.estimate_noise_level(x_train, per_image=True)  # 8x8 images: too few patches each
    with pytest.raises(ValueError, match="quantile"):
        ev.estimate_noise_level(x_train, method="pca", quantile=0.5)
    with pytest.raises(ValueError, match="reference"):
        ev.estimate_noise_level(x_train, method="calibrated")
    with pytest.raises(ValueError, match="reference"):
        ev.estimate_noise_level(x_train, reference=x_train, method="mad")


# ------------------------------------------------------------------ distances
def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    # Commuting covariances: ||mu_a - mu_b||^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    mu_a, mu_b = np.array([0.0, 1.0, -1.0]), np.array([1.0, 1.0, 1.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    ca, cb = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert ev.frechet_distance(mu_a, ca, mu_b, cb) == pytest.approx(expected, rel=1e-9)
    # Non-commuting 2-D case against the 2x2 closed form
    # tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = A^1/2 B A^1/2.
    ca = np.array([[2.0, 0.5], [0.5, 1.0]])
    cb = np.array([[1.0, -0.3], [-0.3, 3.0]])
    m_tr, m_det = np.trace(ca @ cb), np.linalg.det(ca) * np.linalg.det(cb)
    expected = np.trace(ca) + np.trace(cb) - 2 * np.sqrt(m_tr + 2 * np.sqrt(m_det))
    assert ev.frechet_distance(np.zeros(2), ca, np.zeros(2), cb) == pytest.approx(expected, rel=1e-9)
    assert ev.frechet_distance(np.zeros(2), ca, np.zeros(2), ca) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="cov_b"):
        ev.frechet_distance(np.zeros(2), ca, np.zeros(2), np.eye(3))


def test_frechet_image_distance_on_digits(digits):
    x_train, x_test = digits
    labels = ka.data.load_digits("train", return_labels=True)[1]
    for feats in (None, ev.make_feature_extractor(x_train, "pca", 16),
                  ev.make_feature_extractor(x_train, "pixels")):
        assert ev.frechet_image_distance(x_test, x_test, feats) == pytest.approx(0.0, abs=1e-6)
        base = ev.frechet_image_distance(x_test, x_train, feats)
        shifted = ev.frechet_image_distance(x_test + 0.3, x_train, feats)
        assert shifted > base + 0.1
    # PCA features are deterministic and follow the pixel mean shift exactly:
    # a shift c along pixel space moves the feature mean by basis^T c.
    pca = ev.make_feature_extractor(x_train, "pca", 4)
    np.testing.assert_allclose(pca(x_test), ev.make_feature_extractor(x_train, "pca", 4)(x_test))
    clf = ev.make_feature_extractor(x_train[:300], "classifier", 16, labels=labels[:300], seed=0)
    assert clf(x_test).shape == (len(x_test), 16)
    # The features are the hidden layer of the classifier it exposes, which reads digits.
    flat = x_test.reshape(len(x_test), -1)
    model = clf.classifier
    np.testing.assert_allclose(clf(x_test), np.maximum(flat @ model.coefs_[0] + model.intercepts_[0], 0.0))
    test_labels = ka.data.load_digits("test", return_labels=True)[1]
    assert np.mean(model.predict(flat) == test_labels) > 0.85
    with pytest.raises(ValueError, match="labels"):
        ev.make_feature_extractor(x_train, "classifier")
    with pytest.raises(ValueError, match="kind"):
        ev.make_feature_extractor(x_train, "inception")


def test_sliced_wasserstein_shift_closed_form():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((500, 6))
    c = np.array([0.5, -1.0, 0.0, 2.0, 0.0, 1.0])
    assert sliced_wasserstein_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    # For b = a + c every projection shifts by theta.c: E[(theta.c)^2] = ||c||^2 / d.
    est = sliced_wasserstein_distance(a, a + c, num_projections=4000, seed=0, power=2)
    assert est == pytest.approx(np.sum(c ** 2) / 6, rel=0.05)
    # Different set sizes are fine; a noised set is farther than a fresh draw.
    fresh = rng.standard_normal((300, 6))
    assert sliced_wasserstein_distance(a, fresh) < sliced_wasserstein_distance(a, 2.0 * fresh)
