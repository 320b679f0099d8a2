"""Ambient Diffusion Omni: per-sample minimum noise levels for any corruption.

A corrupted sample (blurred, compressed, out of distribution) is used only at
noise levels where it is indistinguishable from clean data; a noise-conditional
classifier finds that level (docs/method.md §9).
"""

from keras_ambient.annotation.annotate import (
    annotate_corrupted_data,
    annotate_noise_levels,
    train_noise_classifier,
)
from keras_ambient.annotation.noise_annotation import NoiseAnnotation
from keras_ambient.annotation.noise_classifier import NoiseClassifier
