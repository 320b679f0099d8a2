"""Ambient Omni annotation: train the noise classifier, find each sample's level, build `(y, sigma_n)`."""

import keras
import numpy as np

from keras_ambient.annotation.noise_annotation import NoiseAnnotation, check_grid
from keras_ambient.annotation.noise_classifier import NoiseClassifier, sigmoid
from keras_ambient.utils.validation import check_finite_array, check_int, check_scalar


def _check_sets(clean, corrupted):
    corrupted = np.asarray(corrupted, dtype="float32")
    if corrupted.ndim != 4 or len(corrupted) == 0:
        raise ValueError("`corrupted` must be a non-empty set of images (n, h, w, c). Received: "
                         f"corrupted with shape {corrupted.shape}")
    if clean is None or len(clean) == 0:
        raise ValueError(
            "Annotation needs a clean reference set: the classifier learns to tell corrupted from "
            "clean images. Received: clean=" + ("None" if clean is None else "an empty array")
        )
    clean = np.asarray(clean, dtype="float32")
    if clean.shape[1:] != corrupted.shape[1:]:
        raise ValueError(
            "`clean` and `corrupted` must hold images of the same shape. Received: clean with "
            f"shape {clean.shape}, corrupted with shape {corrupted.shape}"
        )
    check_finite_array("clean", clean)
    check_finite_array("corrupted", corrupted)
    return clean, corrupted


def train_noise_classifier(clean, corrupted, classifier=None, steps=1500, batch_size=128,
                           learning_rate=2e-3, seed=0, verbose=0):
    """Trains a `NoiseClassifier` to tell noised clean images from noised corrupted ones.

    The two classes are weighted to count equally (a small clean set against
    a large corrupted one), so the probability of "clean" is 1/2 where the
    noised distributions agree. Adam with a cosine decay of the learning rate.

    Args:
        clean: clean images `(m, h, w, c)` (a small set suffices).
        corrupted: corrupted images `(n, h, w, c)`.
        classifier: a `NoiseClassifier` to train (default: a new one for this
            image shape, seeded with `seed`).
        steps: optimizer steps.
        batch_size: images per step.
        learning_rate: peak learning rate.
        seed: seed of the new classifier and of the shuffling.
        verbose: Keras's `fit` verbosity.

    Returns:
        The trained classifier.

    Example:
    ```python
    clf = ka.annotation.train_noise_classifier(x_clean, x_blurred, steps=1500)
    ```
    """
    clean, corrupted = _check_sets(clean, corrupted)
    steps = check_int("steps", steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    learning_rate = check_scalar("learning_rate", learning_rate, minimum=0, min_inclusive=False)
    if classifier is None:
        classifier = NoiseClassifier(image_shape=clean.shape[1:], seed=seed)
    elif not isinstance(classifier, NoiseClassifier):
        raise TypeError(f"`classifier` must be a ka.annotation.NoiseClassifier. Received: "
                        f"classifier={classifier!r}")
    x = np.concatenate([clean, corrupted])
    labels = np.concatenate([np.ones(len(clean)), np.zeros(len(corrupted))]).astype("float32")
    weights = np.where(labels == 1, len(x) / (2.0 * len(clean)), len(x) / (2.0 * len(corrupted)))
    order = np.random.default_rng(seed).permutation(len(x))
    x, labels, weights = x[order], labels[order], weights[order].astype("float32")
    steps_per_epoch = int(np.ceil(len(x) / batch_size))
    epochs = max(1, int(np.ceil(steps / steps_per_epoch)))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps_per_epoch, alpha=0.05)
    classifier.compile(optimizer=keras.optimizers.Adam(schedule))
    classifier.fit(x, labels, sample_weight=weights, batch_size=batch_size, epochs=epochs,
                   shuffle=True, verbose=verbose)
    return classifier


def annotate_noise_levels(classifier, corrupted, tau=0.45, grid=None, num_draws=4, groups=None,
                          seed=0, batch_size=256):
    """Finds, per corrupted sample, the lowest noise level where the classifier is fooled.

    For each sample and each grid level `s`, the probability of "clean" of
    `corrupted[i] + s z` is averaged over `num_draws` noise draws (the same
    draws `z` at every level, so each curve is smooth in `s`). The sample's
    level is the lowest grid level from which the curve stays `>= tau`.

    Args:
        classifier: a trained `ka.annotation.NoiseClassifier`.
        corrupted: corrupted images `(n, h, w, c)`.
        tau: threshold on the probability of "clean" in (0, 1); a little below
            1/2 (the value where the classes are indistinguishable) so that the
            classifier's noise around 1/2 does not push levels up.
        grid: increasing noise levels to search (default: 32 log-spaced levels
            over the classifier's training range).
        num_draws: noise draws per sample and level.
        groups: optional integer group id per sample: one level per group
            (e.g. per corruption type or per source), from the group's mean curve.
        seed: seed of the noise draws.
        batch_size: images per network call.

    Returns:
        A `ka.annotation.NoiseAnnotation`.

    Example:
    ```python
    annotation = ka.annotation.annotate_noise_levels(clf, x_blurred, tau=0.45)
    print(annotation.levels, annotation.num_dropped)
    ```
    """
    if not isinstance(classifier, NoiseClassifier):
        raise TypeError(f"`classifier` must be a ka.annotation.NoiseClassifier. Received: "
                        f"classifier={classifier!r}")
    corrupted = np.asarray(corrupted, dtype="float32")
    classifier._check_images("corrupted", corrupted)
    check_finite_array("corrupted", corrupted)
    tau = check_scalar("tau", tau, minimum=0, maximum=1, min_inclusive=False, max_inclusive=False)
    num_draws = check_int("num_draws", num_draws, minimum=1)
    if grid is None:
        grid = np.geomspace(classifier.sigma_min, classifier.sigma_max, 32)
    grid = check_grid(grid)
    rng = np.random.default_rng(seed)
    probabilities = np.zeros((len(corrupted), len(grid)))
    n = len(corrupted)
    for _ in range(num_draws):
        z = rng.standard_normal(corrupted.shape, dtype="float32")
        for j, level in enumerate(grid.astype("float32")):
            logits = classifier._logits_numpy(corrupted + level * z, np.full(n, level), batch_size)
            probabilities[:, j] += sigmoid(logits)
    return NoiseAnnotation(grid, probabilities / num_draws, tau, groups)


def annotate_corrupted_data(clean, corrupted, tau=0.45, classifier_steps=1500, groups=None,
                            seed=0, verbose=0):
    """One call from a small clean set and a corrupted set to `(y, sigma_n)` for `fit`.

    Trains a `NoiseClassifier` (`train_noise_classifier`), annotates each
    corrupted sample (`annotate_noise_levels`), noises it once at its level,
    and returns the clean samples (level 0) followed by the usable corrupted
    ones; unusable samples are dropped with a warning that counts them. For the
    classifier and the levels themselves, call the two steps directly.

    Args:
        clean: clean images `(m, h, w, c)`.
        corrupted: corrupted images `(n, h, w, c)`.
        tau: threshold of `annotate_noise_levels`.
        classifier_steps: training steps of the classifier.
        groups: optional group id per corrupted sample (one level per group).
        seed: seed of the classifier, the annotation noise and the final noise.
        verbose: Keras's `fit` verbosity for the classifier.

    Returns:
        `(y, sigma_n)` float32 arrays, ready for `AmbientDiffusion.fit((y, sigma_n))`.

    Example:
    ```python
    y, sigma_n = ka.annotation.annotate_corrupted_data(x_clean, x_blurred, seed=0)
    model = ka.AmbientDiffusion(network, sigma_n=0.0, consistency_weight=0.0)
    model.fit((y, sigma_n), batch_size=64, epochs=20)
    ```
    """
    classifier = train_noise_classifier(clean, corrupted, steps=classifier_steps, seed=seed,
                                        verbose=verbose)
    annotation = annotate_noise_levels(classifier, corrupted, tau=tau, groups=groups, seed=seed + 1)
    return annotation.training_data(clean, corrupted, seed=seed + 2)
