"""Evaluation tools for image sets (NumPy): noise-level estimation and distances.

- `estimate_noise_level`: the standard deviation of additive white Gaussian
  noise in a set of images, from a robust high-pass statistic (differences
  between neighbouring pixels along both axes, a per-image quantile of their
  magnitudes, a median over images). On tiny, edge-rich images such as the 8x8
  digits the raw statistic reads far from 0 on clean images, so it is
  calibrated against clean `reference` images of the same kind: the statistic
  is measured on `reference + s z` for a grid of `s` and inverted (method
  "calibrated"; the raw statistic is method "mad"). Used both as
  the residual noise of generated samples (docs/method.md §5: samples of a model
  that learnt the noisy distribution carry noise ~sigma_n, exact ambient
  samples ~0) and as an estimate of the noise level of a noisy dataset.
  Without a reference its default is reference-free: the noise eigenvalues of
  a covariance (of the images themselves when there are many of a small size,
  else of their 8x8 patches), separated from the signal by the
  Marchenko-Pastur bulk edge (method "pca").
- `estimate_noise_level_pca`: the older reference-free estimate from the
  smallest eigenvalues of the pixel covariance of a large set of images
  (Chen et al.'s tail rule; it reads low on few images).
- `frechet_distance`, `gaussian_statistics`, `make_feature_extractor`,
  `frechet_image_distance`: a Fréchet ("FID-like") distance between two image
  sets on features of a small extractor built deterministically offline (PCA
  or the hidden layer of a scikit-learn classifier fitted on clean images).
- `keras_ambient.evaluation.sliced_wasserstein_distance` (in `distribution.py`) is the pixel-space distance between two sets.

Everything here works on NumPy arrays and is the same on every Keras backend.
"""

import numpy as np

from keras_ambient.utils.validation import check_bool, check_choice, check_int, check_samples, check_scalar

_FEATURE_KINDS = ("pca", "classifier", "pixels")
_NOISE_METHODS = ("auto", "pca", "calibrated", "mad")
# Reference-free estimate ("pca"): PCA over whole images when there are at least
# this many images per pixel (and few pixels), else over patches.
_IMAGES_PER_PIXEL = 4
_MAX_IMAGE_PIXELS = 256
_MAX_PATCHES = 100_000
_MIN_PATCH_SIZE = 4


# ------------------------------------------------------------------ helpers
def _as_images(name, images, min_size=2):
    """Returns a float64 array `(n, h, w, c)`; accepts `(n, h, w)` too."""
    try:
        x = np.asarray(images, dtype="float64")
    except (TypeError, ValueError) as e:
        raise TypeError(f"`{name}` must be a numeric array of images. Received: {name} of type "
                        f"{type(images).__name__}") from e
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"`{name}` must have shape (num_images, height, width) or "
            f"(num_images, height, width, channels). Received: {name} with shape {x.shape}"
        )
    if x.shape[0] < 1:
        raise ValueError(f"`{name}` must hold at least one image. Received: {name} with shape {x.shape}")
    if x.shape[1] < min_size or x.shape[2] < min_size:
        raise ValueError(
            f"`{name}` images must be at least {min_size}x{min_size}. Received: {name} with shape {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{name}` must be finite. Received: {name} with NaN or Inf values")
    return x


def _half_normal_quantile(q):
    """`z` with `P(|N(0, 1)| <= z) = q`."""
    from scipy.special import ndtri

    return float(ndtri(0.5 + 0.5 * q))


def _raw_noise_statistic(x, quantile):
    """Per-image raw noise statistic of `x` `(n, h, w, c)`, shape `(n,)`.

    Neighbour differences along both axes, divided by sqrt(2) (so that they
    have std sigma on pure noise), the `quantile` of their magnitudes per image,
    divided by the half-normal quantile: an unbiased estimate of sigma for pure
    white noise (the Donoho MAD estimator for quantile 0.5).
    """
    n = x.shape[0]
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).reshape(n, -1)
    dv = (x[:, 1:, :, :] - x[:, :-1, :, :]).reshape(n, -1)
    d = np.abs(np.concatenate([dh, dv], axis=1)) / np.sqrt(2.0)
    return np.quantile(d, quantile, axis=1) / _half_normal_quantile(quantile)


def _invert_curve(values, levels, curve):
    """Inverts a monotone calibration curve `curve(levels)`; linear beyond its end."""
    values = np.asarray(values, dtype="float64")
    out = np.interp(values, curve, levels)
    slope = (levels[-1] - levels[-2]) / max(curve[-1] - curve[-2], 1e-12)
    above = values > curve[-1]
    out = np.where(above, levels[-1] + (values - curve[-1]) * slope, out)
    return np.where(values <= curve[0], 0.0, out)


# --------------------------------------------------------- noise estimation
def _noise_from_eigenvalues(ev, num_samples):
    """Noise variance from the eigenvalues `ev` of a sample covariance of `num_samples` rows.

    Signal/noise split (after Kritchman and Nadler): the number of signal
    directions `r` is the first index whose eigenvalue lies under the upper
    Marchenko-Pastur edge `s2 (1 + sqrt((p - r) / n))^2` of the bulk of the
    remaining `p - r` eigenvalues, `s2` their mean (the MP law's mean is the
    noise variance). Signal eigenvalues well separated from the bulk (above
    twice the edge) have also taken up some noise variance, `lambda - rho`
    with `rho` the population value the spiked-covariance formula gives; it is
    given back to `s2`, which is iterated to a fixed point. Returns
    `(variance, r)`.
    """
    ev = np.sort(np.clip(np.asarray(ev, dtype="float64"), 0.0, None))[::-1]
    p, n = len(ev), float(num_samples)
    r = p - 1
    for k in range(p - 1):
        if ev[k] <= np.mean(ev[k:]) * (1.0 + np.sqrt((p - k) / n)) ** 2:
            r = k
            break
    noise = ev[r:]
    s2 = float(np.mean(noise))
    gamma = (p - r) / n
    for _ in range(50):
        lam = ev[:r][ev[:r] > 2.0 * s2 * (1.0 + np.sqrt(gamma)) ** 2]
        b = lam + s2 - s2 * gamma
        rho = 0.5 * (b + np.sqrt(np.clip(b * b - 4.0 * lam * s2, 0.0, None)))
        new = (np.sum(noise) + np.sum(lam - rho)) / (p - r)
        if abs(new - s2) <= 1e-12 + 1e-9 * s2:
            s2 = new
            break
        s2 = new
    return max(float(s2), 0.0), r


def _covariance_eigenvalues(rows):
    rows = rows - rows.mean(axis=0)
    return np.linalg.eigvalsh(rows.T @ rows / max(len(rows) - 1, 1))


def _patch_rows(x, k, max_patches=_MAX_PATCHES):
    """`k x k` patches of `x` `(n, h, w, c)`, one row per patch and channel.

    All patch positions when they number at most `max_patches`; else a regular
    grid with a stride (at most `k`) and, if still too many, evenly spaced images.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    n, h, w, c = x.shape
    stride = 1

    def count(num_images, st):
        return num_images * c * (-(-(h - k + 1) // st)) * (-(-(w - k + 1) // st))

    while count(n, stride) > max_patches and stride < k:
        stride += 1
    images = np.arange(n)
    if count(n, stride) > max_patches:
        keep = max(1, max_patches // count(1, stride))
        images = np.unique(np.linspace(0, n - 1, keep).round().astype(int))
    windows = sliding_window_view(x[images], (k, k), axis=(1, 2))[:, ::stride, ::stride]
    return windows.reshape(-1, k * k)


def _pca_noise_level(x, per_image, patch_size):
    """The reference-free estimate (method "pca") of `x` `(n, h, w, c)`."""
    n, h, w, c = x.shape
    d = h * w * c
    if not per_image and patch_size is None and d <= _MAX_IMAGE_PIXELS and n >= _IMAGES_PER_PIXEL * d:
        # Many small images of one kind: PCA over the images themselves.
        return float(np.sqrt(_noise_from_eigenvalues(_covariance_eigenvalues(x.reshape(n, d)), n)[0]))
    sets = [x[i:i + 1] for i in range(n)] if per_image else [x]

    def enough(k):
        return sets[0].shape[0] * c * (h - k + 1) * (w - k + 1) >= _IMAGES_PER_PIXEL * k * k

    k = min(8, h, w) if patch_size is None else patch_size
    while patch_size is None and k > _MIN_PATCH_SIZE and not enough(k):
        k -= 1  # few or small images: smaller patches, more of them
    need = _IMAGES_PER_PIXEL * k * k
    have = sets[0].shape[0] * c * (h - k + 1) * (w - k + 1)
    if k < _MIN_PATCH_SIZE or k > min(h, w) or have < need:
        where = "each image" if per_image else "the images"
        raise ValueError(
            f"The reference-free noise estimate (method='pca') needs at least {need} patches of "
            f"{k}x{k} pixels from {where} (or, without per_image, at least {_IMAGES_PER_PIXEL} images per "
            "pixel). Received: images with shape "
            f"{x.shape}, per_image={per_image}, patch_size={patch_size}. Pass more or larger images, a "
            "clean `reference` (method='calibrated'), or method='mad'"
        )
    out = np.array([np.sqrt(_noise_from_eigenvalues(_covariance_eigenvalues(rows), len(rows))[0])
                    for rows in (_patch_rows(s, k) for s in sets)])
    return out if per_image else float(out[0])


def noise_calibration_curve(reference, quantile=0.25, max_sigma=1.0, num_levels=41, seed=0):
    """Measures the raw noise statistic on clean `reference + s z` for a grid of `s`.

    Args:
        reference: clean images `(n, h, w[, c])` of the same kind (and value
            scale) as the images to be measured.
        quantile: quantile of the neighbour-difference magnitudes per image.
        max_sigma: largest noise level of the grid.
        num_levels: grid size (levels spaced linearly from 0).
        seed: seed of the noise (one draw `z`, reused at every level so the curve
            is smooth).

    Returns:
        `(levels, curve)`: the grid and the median over reference images of the
        raw statistic at each level (made non-decreasing).

    Example:
    ```python
    levels, curve = noise_calibration_curve(ka.data.load_digits("test"))
    ```
    """
    ref = _as_images("reference", reference)
    quantile = check_scalar("quantile", quantile, minimum=0, maximum=1, min_inclusive=False, max_inclusive=False)
    max_sigma = check_scalar("max_sigma", max_sigma, minimum=0, min_inclusive=False)
    num_levels = check_int("num_levels", num_levels, minimum=3)
    z = np.random.default_rng(seed).standard_normal(ref.shape)
    levels = np.linspace(0.0, max_sigma, num_levels)
    curve = np.array([np.median(_raw_noise_statistic(ref + s * z, quantile)) for s in levels])
    curve = np.maximum.accumulate(curve)
    # Strictly increasing (flat parts would make the inverse ambiguous).
    curve = curve + np.arange(num_levels) * 1e-9
    return levels, curve


def estimate_noise_level(images, reference=None, quantile=None, per_image=False,
                         max_sigma=None, num_levels=41, seed=0, method="auto", patch_size=None):
    """Estimates the std of additive white Gaussian noise in a set of images.

    Three methods:

    - `"pca"` (the default without `reference`): reference-free. The noise
      is the part of a sample covariance whose eigenvalues form a
      Marchenko-Pastur bulk: the number of signal directions is found by
      testing the largest remaining eigenvalue against the bulk's upper edge
      `s2 (1 + sqrt(p / n))^2` (Kritchman and Nadler), `s2` is the mean of
      the noise eigenvalues (the mean of the MP law), and the noise variance
      taken up by well-separated signal eigenvalues is given back. The
      covariance is that of the images themselves when there are many small
      images of one kind (at least 4 per pixel, at most 256 pixels, e.g. the
      8x8 digits: their borders are always background, so the noise owns some
      directions alone), else that of their `patch_size` x `patch_size`
      patches (Chen, Zhu and Heng's patch setting; up to 100,000 patches on a
      regular grid). It reads ~0 on clean data with unused directions and
      ~sigma on noisy data; the measured accuracy is in
      docs/choosing_defaults.md.
    - `"calibrated"` (the default with `reference`): a robust high-pass
      statistic, per image the `quantile` of the magnitudes of neighbour
      differences along both axes (scaled to equal sigma on pure noise), the
      median over images, mapped back through the same statistic measured on
      the clean `reference + s z` for a grid of `s`
      (`noise_calibration_curve`). It reads ~0 on clean images and ~sigma on
      images noised at sigma; images smoother than the reference (posterior
      means) read 0. Used as the residual noise of generated samples.
    - `"mad"`: that raw statistic, uncalibrated (the classical MAD estimator
      for `quantile=0.5`). It is exact on pure noise but reads well above 0 on
      tiny edge-rich images (8x8 digits). `method="auto"` without a reference
      but with an explicit `quantile` picks it (the behaviour before `"pca"`
      existed).

    Args:
        images: images `(n, h, w)` or `(n, h, w, c)`, `h, w >= 2`, all
            channels with the same noise level.
        reference: optional clean images of the same kind and scale, used to
            calibrate the estimator (e.g. `ka.data.load_digits("test")`).
        quantile: quantile of the difference magnitudes per image, for
            `"mad"` and `"calibrated"` (default: 0.5, the MAD, for `"mad"`;
            0.25 for `"calibrated"`, which ignores most edges).
        per_image: return one estimate per image instead of one for the set
            (with `"pca"`, each image's own patches: the images must be large
            enough).
        max_sigma: largest level of the calibration grid (default: enough to
            cover the reading).
        num_levels: size of the calibration grid.
        seed: seed of the calibration noise.
        method: `"auto"` (`"calibrated"` with a reference, else `"pca"`),
            `"pca"`, `"calibrated"` or `"mad"`.
        patch_size: side of the square patches of `"pca"`, at least 4
            (default: 8, smaller down to 4 when the images give fewer than
            4 patches per patch pixel; whole images are used instead when
            there are many small ones and `patch_size` is not given).

    Returns:
        A float (or a float64 array `(n,)` with `per_image=True`).

    Example:
    ```python
    y = ka.data.add_noise(ka.data.load_digits("train"), 0.2, seed=0)
    estimate_noise_level(y)                          # ~0.2, no clean data needed
    x_ref = ka.data.load_digits("test")
    estimate_noise_level(y, reference=x_ref)         # ~0.2, calibrated
    estimate_noise_level(x_ref, reference=x_ref)     # 0.0
    ```

    References:
        - Kritchman and Nadler, "Determining the number of components in a
          factor model from limited noisy data", Chemometrics and Intelligent
          Laboratory Systems 2008 (the rank test and the noise variance).
        - Marchenko and Pastur, "Distribution of eigenvalues for some sets of
          random matrices", Math. USSR-Sbornik 1967.
        - Chen, Zhu and Heng, "An Efficient Statistical Method for Image Noise
          Level Estimation", ICCV 2015 (noise from patch-covariance eigenvalues).
        - Donoho and Johnstone, "Ideal spatial adaptation by wavelet
          shrinkage", Biometrika 1994 (the MAD noise estimate).
    """
    check_choice("method", method, _NOISE_METHODS)
    per_image = check_bool("per_image", per_image)
    x = _as_images("images", images)
    if method == "auto":
        method = "calibrated" if reference is not None else ("mad" if quantile is not None else "pca")
    if method == "pca":
        if reference is not None or quantile is not None:
            raise ValueError("method='pca' is reference-free and takes neither `reference` nor `quantile`. "
                             f"Received: reference={'None' if reference is None else 'an array'}, "
                             f"quantile={quantile!r}")
        if patch_size is not None:
            patch_size = check_int("patch_size", patch_size, minimum=_MIN_PATCH_SIZE)
        return _pca_noise_level(x, per_image, patch_size)
    if patch_size is not None:
        raise ValueError(f"`patch_size` is used by method='pca' only. Received: patch_size={patch_size!r} "
                         f"with method={method!r}")
    if method == "calibrated" and reference is None:
        raise ValueError("method='calibrated' needs clean `reference` images. Received: reference=None")
    if method == "mad" and reference is not None:
        raise ValueError("method='mad' is uncalibrated and takes no `reference`; use method='calibrated'. "
                         "Received: a reference with method='mad'")
    if quantile is None:
        quantile = 0.5 if method == "mad" else 0.25
    quantile = check_scalar("quantile", quantile, minimum=0, maximum=1, min_inclusive=False, max_inclusive=False)
    raw = _raw_noise_statistic(x, quantile)
    reading = raw if per_image else float(np.median(raw))
    if method == "mad":
        return reading
    ref = _as_images("reference", reference)
    if ref.shape[1:] != x.shape[1:]:
        raise ValueError(
            "`reference` must hold images of the same shape as `images`. Received: "
            f"reference with shape {ref.shape} for images with shape {x.shape}"
        )
    if max_sigma is None:
        # The raw statistic grows at least like sigma, so the grid covers the reading.
        max_sigma = max(1.5 * float(np.max(raw) if per_image else reading), 0.1)
    levels, curve = noise_calibration_curve(ref, quantile, max_sigma, num_levels, seed)
    out = _invert_curve(reading, levels, curve)
    return out if per_image else float(out)


def estimate_noise_level_pca(images, max_tail=None):
    """Reference-free noise estimate from the smallest eigenvalues of the pixel covariance.

    Clean images of a class often leave some directions of pixel space almost
    unused (the borders of the digits are always background), so the smallest
    eigenvalues of the covariance of noisy images are those of the noise,
    sigma^2 (spread by the finite sample as Marchenko-Pastur). Following Chen,
    Zhu and Heng (ICCV 2015), the noise eigenvalues are the longest tail whose
    mean does not exceed its median; their mean estimates sigma^2.

    It needs many images per pixel (it reads low on small sets:
    docs/choosing_defaults.md) and clean data with unused directions;
    `estimate_noise_level` (reference-free by default: the noise eigenvalues
    found with the Marchenko-Pastur bulk edge) reads closer on images.

    Args:
        images: images (or any samples) `(n, ...)`, flattened per sample;
            `n` should be several times the number of pixels.
        max_tail: largest number of eigenvalues considered noise (default: all).

    Returns:
        A float.

    Example:
    ```python
    y = ka.data.add_noise(ka.data.load_digits(), 0.2, seed=0)
    estimate_noise_level_pca(y)  # ~0.2
    ```
    """
    x = check_samples("images", images, min_rows=3)
    ev = np.linalg.eigvalsh(np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]))
    ev = np.sort(np.clip(ev, 0.0, None))[::-1]
    first = 0 if max_tail is None else max(len(ev) - check_int("max_tail", max_tail, minimum=1), 0)
    for i in range(first, len(ev)):
        tail = ev[i:]
        if np.mean(tail) <= np.median(tail):
            return float(np.sqrt(np.mean(tail)))
    return float(np.sqrt(ev[-1]))


# ------------------------------------------------------------------ distances
def gaussian_statistics(features):
    """Mean and covariance of a set of feature vectors.

    Args:
        features: `(n, ...)` with `n >= 2`, flattened per sample.

    Returns:
        `(mean, cov)`, float64 arrays `(d,)` and `(d, d)`.

    Example:
    ```python
    mu, cov = gaussian_statistics(np.random.randn(100, 4))
    ```
    """
    f = check_samples("features", features, min_rows=2)
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(c):
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mean_a, cov_a, mean_b, cov_b):
    """Fréchet (2-Wasserstein) distance squared between two Gaussians.

    `||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)`: the
    quantity behind FID.

    Args:
        mean_a, cov_a: mean `(d,)` and covariance `(d, d)` of the first Gaussian.
        mean_b, cov_b: the same for the second.

    Returns:
        A non-negative float.

    Example:
    ```python
    frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2))  # 2 + 2 = 4
    ```
    """
    mean_a = np.atleast_1d(np.asarray(mean_a, dtype="float64"))
    mean_b = np.atleast_1d(np.asarray(mean_b, dtype="float64"))
    cov_a = np.atleast_2d(np.asarray(cov_a, dtype="float64"))
    cov_b = np.atleast_2d(np.asarray(cov_b, dtype="float64"))
    d = mean_a.shape[0]
    for name, v, shape in (("mean_a", mean_a, (d,)), ("mean_b", mean_b, (d,)),
                           ("cov_a", cov_a, (d, d)), ("cov_b", cov_b, (d, d))):
        if v.shape != shape:
            raise ValueError(f"`{name}` must have shape {shape} (from mean_a). Received: {name} with shape {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"`{name}` must be finite. Received: {name} with NaN or Inf values")
    sa = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(sa @ cov_b @ sa), 0.0, None)).sum()
    value = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross
    return float(max(value, 0.0))


def make_feature_extractor(reference, kind="pca", num_features=16, labels=None, seed=0):
    """A small, deterministic image feature extractor fitted offline on clean images.

    Args:
        reference: clean images `(n, ...)` to fit on (e.g. the clean training
            digits).
        kind: `"pca"`: projections on the top `num_features` principal
            components of `reference` (whitening-free, pixel units);
            `"classifier"`: the ReLU hidden layer (`num_features` units) of a
            scikit-learn `MLPClassifier` trained on `reference` and `labels`
            with `random_state=seed` (a tiny "Inception" for FID);
            `"pixels"`: the flattened pixels (no fitting).
        num_features: output dimension (ignored for `"pixels"`).
        labels: class labels of `reference`, required for `"classifier"`.
        seed: seed of the classifier.

    Returns:
        A function `images -> features` `(n, num_features)` (NumPy float64).
        For `"classifier"` its attribute `classifier` is the fitted
        `MLPClassifier` (e.g. `.predict(flat_images)` for class labels).

    Example:
    ```python
    x, labels = ka.data.load_digits("train", return_labels=True)
    feats = make_feature_extractor(x, "classifier", 64, labels=labels)
    ```
    """
    check_choice("kind", kind, _FEATURE_KINDS)
    ref = check_samples("reference", reference, min_rows=2)
    dim = ref.shape[1]

    def as_features_input(images):
        # Flattened pixels (float64), as many per sample as the reference's.
        f = check_samples("images", images)
        if f.shape[1] != dim:
            raise ValueError(f"`images` must have {dim} values per sample. Received: {f.shape[1]}")
        return f

    if kind == "pixels":
        return as_features_input
    num_features = check_int("num_features", num_features, minimum=1)
    if kind == "pca":
        if num_features > min(ref.shape):
            raise ValueError(
                f"`num_features` must be <= min(num_images, num_pixels)={min(ref.shape)} for kind='pca'. "
                f"Received: num_features={num_features}"
            )
        from sklearn.decomposition import PCA

        # The full SVD: deterministic, with scikit-learn's fixed sign per component.
        fitted = PCA(n_components=num_features, svd_solver="full").fit(ref)

        def pca(images):
            return fitted.transform(as_features_input(images))
        return pca
    if labels is None:
        raise ValueError("kind='classifier' needs the class `labels` of `reference`. Received: labels=None")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(ref):
        raise ValueError(f"`labels` must have one entry per reference image ({len(ref)}). "
                         f"Received: {len(labels)} labels")
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(num_features,), max_iter=300, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(ref, labels)
    w, b = clf.coefs_[0], clf.intercepts_[0]

    def classifier(images):
        return np.maximum(as_features_input(images) @ w + b, 0.0)

    classifier.classifier = clf
    return classifier


def frechet_image_distance(images_a, images_b, features=None):
    """Fréchet distance between two image sets on (optional) features.

    Args:
        images_a, images_b: image sets `(n, ...)` with `n >= 2` each.
        features: a function `images -> (n, d)` features, e.g. from
            `make_feature_extractor`; `None` uses the flattened pixels.

    Returns:
        A non-negative float (0 for identical sets).

    Example:
    ```python
    feats = make_feature_extractor(ka.data.load_digits("train"), "pca", 16)
    frechet_image_distance(samples, ka.data.load_digits("test"), feats)
    ```
    """
    if features is not None and not callable(features):
        raise TypeError(f"`features` must be a callable or None. Received: features={features!r}")
    a = check_samples("images_a", images_a, min_rows=2)
    b = check_samples("images_b", images_b, min_rows=2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"`images_a` and `images_b` must have samples of the same size. "
                         f"Received: {a.shape[1]} and {b.shape[1]} values per sample")
    if features is not None:
        a = features(np.asarray(images_a))
        b = features(np.asarray(images_b))
    return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))


def _neighbour_energy(x):
    """Mean squared difference between horizontal and vertical neighbours."""
    dy = np.diff(x, axis=1)
    dx = np.diff(x, axis=2)
    return 0.5 * (float(np.mean(dy**2)) + float(np.mean(dx**2)))


def residual_blur(images, reference):
    """How much fine detail a set of images lacks against clean reference images.

    `1 - E(images) / E(reference)`, where `E` is the mean squared difference
    between neighbouring pixels (the high-frequency energy). 0: as sharp as the
    reference; towards 1: blurred (a blur removes that energy); negative: more
    high-frequency energy than the reference (residual noise adds `2 sigma^2`).

    Args:
        images: images `(n, h, w)` or `(n, h, w, c)`, `h, w >= 2`.
        reference: clean images of the same kind and shape per image.

    Returns:
        A float.

    Example:
    ```python
    x = ka.data.load_digits("test")
    residual_blur(ka.data.gaussian_blur(x, 1.0), x)  # ~0.8
    residual_blur(x, x)                              # 0.0
    ```
    """
    x = _as_images("images", images)
    ref = _as_images("reference", reference)
    if ref.shape[1:] != x.shape[1:]:
        raise ValueError(
            "`reference` must hold images of the same shape as `images`. Received: "
            f"reference with shape {ref.shape} for images with shape {x.shape}"
        )
    energy = _neighbour_energy(ref)
    if energy <= 0:
        raise ValueError("`reference` must have some detail (its neighbouring pixels are all "
                         "equal). Received: constant reference images")
    return 1.0 - _neighbour_energy(x) / energy


__all__ = [
    "estimate_noise_level",
    "estimate_noise_level_pca",
    "noise_calibration_curve",
    "gaussian_statistics",
    "frechet_distance",
    "make_feature_extractor",
    "frechet_image_distance",
    "residual_blur",
]
