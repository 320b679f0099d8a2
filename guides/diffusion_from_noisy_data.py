"""
Title: Diffusion models from noisy data
Author: keras_ambient developers
Date created: 2026/11/28
Last modified: 2026/11/28
Description: Train a diffusion model of the clean digits from noisy digits only, with the double-Tweedie (ambient) loss.
Accelerator: GPU
"""

"""
## Introduction

A diffusion model learns a denoiser `D(x; sigma) = E[x0 | x_sigma = x]` for every
noise level `sigma` and samples by running the reverse process from pure noise
down to `sigma = 0`. Training needs clean samples `x0`: the usual loss noises
`x0` to `x_sigma` and asks `D` to recover `x0`.

Often only noisy data `y = x0 + sigma_n z` exists (sensor noise, low-dose
scans, noised data for privacy). Training a plain diffusion model on `y` learns
the *noisy* distribution: its samples carry noise of level `sigma_n`.

"Consistent Diffusion Meets Tweedie" (Daras, Dimakis, Daskalakis, ICML 2024)
shows how to learn the *clean* denoiser from `y` alone. Tweedie's formula,
applied once to `x0` and once to `y`, links the two posterior means:

`E[y | x_t] = (1 - sigma_n^2 / sigma_t^2) E[x0 | x_t] + (sigma_n^2 / sigma_t^2) x_t`.

So for every `sigma_t > sigma_n` we can noise `y` further to `x_t` and train
`D(x_t; sigma_t)` through this combination to predict `y`: the minimiser is the
clean denoiser (equation M3 of `docs/method.md`). Below `sigma_n` a second loss,
the *consistency* loss, extends `D` (guide 2 covers it).

In this guide we:

1. noise the 8x8 digits at `sigma_n = 0.2` and forget the clean ones;
2. train a naive diffusion model that treats the noisy digits as clean;
3. train an ambient model (`ka.AmbientDiffusion`) on the same noisy digits;
4. compare full sampling (to `sigma = 0`) and truncated sampling (stop at
   `sigma_n` and return `E[x0 | x_sigma_n]`), measuring the noise left in the
   samples.

Set `KERAS_AMBIENT_SMOKE=1` to run a tiny version in a minute on a CPU.
"""

"""
## Setup
"""

import json
import os
import time

import keras_ambient.utils.backend_choice  # noqa: F401  (first: picks a backend if none is set)
import keras
import numpy as np

import keras_ambient as ka
from keras_ambient.evaluation.images import estimate_noise_level
from keras_ambient.utils.images import save_image_grid

SMOKE = os.environ.get("KERAS_AMBIENT_SMOKE", "0") == "1"
OUTPUT_DIR = os.path.join(
    os.environ.get("KERAS_AMBIENT_OUTPUT_DIR", "outputs/guides"),
    "diffusion_from_noisy_data",
)
os.makedirs(OUTPUT_DIR, exist_ok=True)

EPOCHS = 1 if SMOKE else 150
NUM_TRAIN = 128 if SMOKE else None
NUM_SAMPLES = 16 if SMOKE else 256
NUM_STEPS = 4 if SMOKE else 32
SIGMA_N = 0.2
print("Keras backend:", keras.backend.backend(), "| smoke mode:", SMOKE)

"""
## The data: noisy digits

`ka.data.load_digits` returns scikit-learn's 1797 digits as `(N, 8, 8, 1)`
images in [-1, 1]. We noise each training image once, with a fixed seed: each
sample keeps ONE noise realisation, as in a real noisy dataset. The clean test
split is kept aside only to *measure* the samples.
"""

x_train = ka.data.load_digits("train")[:NUM_TRAIN]
x_test = ka.data.load_digits("test")
y_train = ka.data.add_noise(x_train, SIGMA_N, seed=0)
print("noisy training set:", y_train.shape)

save_image_grid(os.path.join(OUTPUT_DIR, "clean_digits.png"), x_train[:16])
save_image_grid(os.path.join(OUTPUT_DIR, "noisy_digits.png"), y_train[:16])

"""
How noisy is that? `estimate_noise_level` measures the noise in a set of images,
calibrated on clean images of the same kind. We will use it on generated samples:
a model of the noisy distribution produces samples with noise about `sigma_n`,
a model of the clean distribution about 0.
"""

print(
    "noise in clean test digits:",
    round(estimate_noise_level(x_test, reference=x_test), 3),
)
print(
    "noise in noisy training digits:",
    round(estimate_noise_level(y_train, reference=x_test), 3),
)

"""
## Models

Both models use the same small UNet (`ka.networks.UNet`) inside EDM's
preconditioned denoiser. The naive model is an `AmbientDiffusion` told that the
data is clean (`sigma_n=0`, no consistency term): that is exactly the EDM loss on
the noisy digits. The ambient model gets the true `sigma_n` and a consistency
weight of 0.1.
"""


def make_network():
    return ka.networks.UNet(
        image_shape=(8, 8, 1),
        base_channels=8 if SMOKE else 32,
        channel_multipliers=(1, 2),
        num_res_blocks=1,
        seed=0,
    )


def train(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = time.time()
    history = model.fit(y_train, batch_size=64, epochs=EPOCHS, verbose=0)
    print(
        f"{model.name}: {EPOCHS} epochs in {time.time() - start:.1f} s, "
        f"final loss {history.history['loss'][-1]:.4f}"
    )
    return model


naive = train(
    ka.AmbientDiffusion(
        make_network(), sigma_n=0.0, consistency_weight=0.0, seed=0, name="naive"
    )
)
ambient = train(
    ka.AmbientDiffusion(
        make_network(), sigma_n=SIGMA_N, seed=0, name="ambient"  # default consistency weight
    )
)

"""
## Sampling: full and truncated

`generate(mode="full")` runs Heun's sampler from `sigma_max = 80` down to 0.
`generate(mode="truncated")` stops at `sigma_n` and returns `D(x; sigma_n)`,
the posterior mean `E[x0 | x_sigma_n]`: no residual noise, but slightly smooth,
and correct even without the consistency term.
"""

samples = {
    "naive_full": naive.generate(NUM_SAMPLES, num_steps=NUM_STEPS, seed=1),
    "ambient_full": ambient.generate(NUM_SAMPLES, num_steps=NUM_STEPS, seed=1),
    "ambient_truncated": ambient.generate(
        NUM_SAMPLES, num_steps=NUM_STEPS, seed=1, mode="truncated"
    ),
}
for name, x in samples.items():
    save_image_grid(os.path.join(OUTPUT_DIR, f"{name}.png"), x[:64])

"""
## Measuring the residual noise

The naive model reproduces the noise of its training data; the ambient model's
samples should read much less noise (truncated samples read ~0 by construction,
being posterior means).
"""

results = {"backend": keras.backend.backend(), "smoke": SMOKE, "sigma_n": SIGMA_N}
for name, x in samples.items():
    level = estimate_noise_level(np.clip(x, -1.5, 1.5), reference=x_test)
    results[f"residual_noise_{name}"] = float(level)
    print(f"residual noise of {name:18s}: {level:.3f}")

with open(os.path.join(OUTPUT_DIR, "results.json"), "w") as f:
    json.dump(results, f, indent=2)

"""
## What to take away

- Trained on noisy digits, a plain diffusion model samples noisy digits.
- The ambient loss learns the clean denoiser above `sigma_n` from the noisy data
  alone; truncated sampling uses only that part.
- With the consistency loss the denoiser is also learnt below `sigma_n`, so the
  full sampler can run to 0 (guide 2 shows how to check it).

With `KERAS_AMBIENT_SMOKE=1` the models are far from trained and the numbers
mean nothing; run the full guide (a few minutes on a GPU) to see the effect.
"""
