"""
Title: Mixing a few clean samples with many noisy ones
Author: keras_ambient developers
Date created: 2026/11/28
Last modified: 2026/11/28
Description: Train one model on a dataset where each sample has its own noise level (per-sample sigma_n), e.g. 10% clean and 90% noisy.
Accelerator: GPU
"""

"""
## Introduction

Real datasets are rarely uniformly noisy. A few images may be clean (a
high-quality subset, a curated set) and the rest noisy, or the noise level may
vary from sample to sample. The ambient loss handles this naturally: each
sample `y_i = x0_i + sigma_n,i z` is trained only at diffusion levels
`sigma_t > sigma_n,i`, and a clean sample (`sigma_n,i = 0`) contributes the
ordinary diffusion loss at every level.

"How much is a noisy image worth?" (Daras et al. 2024) found that a few clean
samples plus many noisy ones beat either alone: the noisy samples teach the
coarse structure (high noise levels), the clean ones the fine details (low
levels).

In keras_ambient, give the levels with the data: `fit((y, sigma_n))`,
`fit(y, sigma_n)` or dict batches `{"data": y, "sigma_n": s}`.
"""

"""
## Setup
"""

import json
import os

import keras_ambient.utils.backend_choice  # noqa: F401  (first: picks a backend if none is set)
import keras
import numpy as np

import keras_ambient as ka
from keras_ambient.evaluation.images import (
    estimate_noise_level,
    frechet_image_distance,
    make_feature_extractor,
)
from keras_ambient.utils.defaults import suggest_sigma_data
from keras_ambient.utils.images import save_image_grid

SMOKE = os.environ.get("KERAS_AMBIENT_SMOKE", "0") == "1"
OUTPUT_DIR = os.path.join(
    os.environ.get("KERAS_AMBIENT_OUTPUT_DIR", "outputs/guides"),
    "mixing_clean_and_noisy",
)
os.makedirs(OUTPUT_DIR, exist_ok=True)

NUM_TRAIN = 128 if SMOKE else None
STEPS = 4 if SMOKE else 3000  # optimizer steps per model
NUM_SAMPLES = 16 if SMOKE else 256
NUM_STEPS = 4 if SMOKE else 32
SIGMA_N = 0.2
CLEAN_FRACTION = 0.1

"""
## A mixed dataset

`ka.data.mixed_noise_levels` draws the per-sample levels (0 for the clean
tenth, 0.2 for the rest); `ka.data.add_noise` accepts them directly.
"""

x_train = ka.data.load_digits("train")[:NUM_TRAIN]
x_test = ka.data.load_digits("test")
levels = ka.data.mixed_noise_levels(
    len(x_train), SIGMA_N, clean_fraction=CLEAN_FRACTION, seed=0
)
y_train = ka.data.add_noise(x_train, levels, seed=1)
print(f"{int(np.sum(levels == 0))} clean and {int(np.sum(levels > 0))} noisy samples")
save_image_grid(os.path.join(OUTPUT_DIR, "mixed_data.png"), y_train[:16])

"""
`sigma_data` should be the std of the *clean* data. With per-sample levels,
`suggest_sigma_data` subtracts the mean noise variance.
"""

sigma_data = suggest_sigma_data(y_train, levels)
print(f"sigma_data: suggested {sigma_data:.3f}, clean {x_train.std():.3f}")

"""
## Two models

- `clean_only`: trained on the clean tenth alone (what you would do without
  ambient diffusion);
- `mixed`: trained on everything, each sample at its own level.

Both get the same number of optimizer steps. The model's own `sigma_n` (0.2)
is only the default end level of truncated sampling; the loss uses the
per-sample levels.
"""


def make_model(name):
    network = ka.networks.UNet(
        image_shape=(8, 8, 1),
        base_channels=8 if SMOKE else 32,
        channel_multipliers=(1, 2),
        num_res_blocks=1,
        seed=0,
    )
    model = ka.AmbientDiffusion(
        network,
        sigma_n=SIGMA_N,
        sigma_data=sigma_data,
        seed=0,  # the library's default consistency weight
        name=name,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def fit_for_steps(model, data, num_samples, batch_size=64):
    steps_per_epoch = int(np.ceil(num_samples / batch_size))
    epochs = max(1, int(np.ceil(STEPS / steps_per_epoch)))
    model.fit(data, batch_size=batch_size, epochs=epochs, verbose=0)
    return model


clean = levels == 0
clean_only = fit_for_steps(
    make_model("clean_only"), (y_train[clean], levels[clean]), int(clean.sum())
)
mixed = fit_for_steps(make_model("mixed"), (y_train, levels), len(y_train))

"""
## Comparing the samples

Two numbers per model: the noise left in full samples (should be ~0 for both)
and a Fréchet distance to the clean test digits on PCA features (lower is
better; the clean-only model, having seen few images, tends to be worse).
"""

features = make_feature_extractor(x_test, kind="pca", num_features=8)
results = {"backend": keras.backend.backend(), "smoke": SMOKE}
for name, model in (("clean_only", clean_only), ("mixed", mixed)):
    samples = model.generate(NUM_SAMPLES, num_steps=NUM_STEPS, seed=2)
    samples = np.clip(samples, -1.5, 1.5)
    save_image_grid(os.path.join(OUTPUT_DIR, f"{name}.png"), samples[:64])
    noise = estimate_noise_level(samples, reference=x_test)
    fd = frechet_image_distance(samples, x_test, features)
    results[name] = {"residual_noise": float(noise), "frechet_distance_pca": float(fd)}
    print(f"{name:10s}: residual noise {noise:.3f}, Frechet distance (PCA) {fd:.3f}")

with open(os.path.join(OUTPUT_DIR, "results.json"), "w") as f:
    json.dump(results, f, indent=2)

"""
## Notes

- Per-sample levels work with every input type: NumPy tuples as here, a
  `tf.data.Dataset` of `(y, sigma_n)` pairs, or dict batches.
- Levels can take any value in `[0, sigma_max)`, not only two.
- Samples with NaN/Inf values are rejected before training (NumPy inputs) or
  stopped with a clear error (datasets).
"""
