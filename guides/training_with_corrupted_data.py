"""
Title: Training on blurred, compressed or otherwise corrupted data (Ambient Omni)
Author: keras_ambient developers
Date created: 2026/12/06
Last modified: 2026/12/06
Description: Annotate each corrupted sample with the noise level above which it looks clean, then train one model on clean and corrupted data together.
Accelerator: GPU
"""

"""
## Introduction

Most "bad data" is not Gaussian noise: images are blurred, compressed, taken
with a poor sensor or come from a related but different distribution.
"Ambient Diffusion Omni" (Daras, Rodriguez-Munoz, Klivans, Torralba,
Daskalakis, 2025) reduces all of these to what keras_ambient already does.

Add Gaussian noise of level `sigma` to a blurred digit and to a sharp one:
at small `sigma` they are easy to tell apart, at large `sigma` the noise hides
the missing detail and they look alike. Above that level the corrupted sample
is as good as a clean one *for a diffusion model*, which at level `sigma`
only learns what survives the noise. So:

1. train a **noise-conditional classifier** `c(x_sigma, sigma)`: clean (a
   small trusted set) vs corrupted, at every noise level;
2. **annotate** each corrupted sample with the lowest level `sigma_min,i` at
   which the classifier's probability of "clean" reaches `tau` (0.45);
3. noise the sample once at that level and train with the **ambient loss**
   at that per-sample level (clean samples keep level 0), as
   `fit((y, sigma_n))` does for any per-sample levels.

docs/method.md §9 has the method; `benchmarks/omni_digits.py` measures it.
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
from keras_ambient.evaluation.images import frechet_image_distance, make_feature_extractor
from keras_ambient.utils.images import save_image_grid

SMOKE = os.environ.get("KERAS_AMBIENT_SMOKE", "0") == "1"
OUTPUT_DIR = os.path.join(
    os.environ.get("KERAS_AMBIENT_OUTPUT_DIR", "outputs/guides"),
    "training_with_corrupted_data",
)
os.makedirs(OUTPUT_DIR, exist_ok=True)

STEPS = 4 if SMOKE else 1500  # optimizer steps per diffusion model
CLASSIFIER_STEPS = 4 if SMOKE else 1500
NUM_SAMPLES = 16 if SMOKE else 512
NUM_STEPS = 4 if SMOKE else 18

"""
## A dataset with 10% clean and 90% blurred digits

`ka.data.gaussian_blur`, `ka.data.downsample_upsample` and
`ka.data.jpeg_compress` corrupt images in [-1, 1];
`ka.evaluation.residual_blur` says how much fine detail a set lacks against
clean images (0: as sharp, near 1: very blurred).
"""

x_train, labels = ka.data.load_digits("train", return_labels=True)
x_test = ka.data.load_digits("test")
if SMOKE:
    x_train, labels = x_train[:160], labels[:160]
order = np.random.default_rng(0).permutation(len(x_train))
num_clean = len(x_train) // 10
clean = x_train[order[:num_clean]]
corrupted = ka.data.gaussian_blur(x_train[order[num_clean:]], sigma=1.0)
print(f"{len(clean)} clean and {len(corrupted)} blurred digits; residual blur of the "
      f"blurred ones: {ka.evaluation.residual_blur(corrupted, x_test):.2f}")
save_image_grid(os.path.join(OUTPUT_DIR, "corrupted_data.png"), corrupted[:64])

"""
## The noise-conditional classifier

`train_noise_classifier` weights the two classes equally (the clean set is
small), draws a noise level per image and step, and returns a
`ka.annotation.NoiseClassifier`, a Keras model you can save like any other.
"""

classifier = ka.annotation.train_noise_classifier(clean, corrupted, steps=CLASSIFIER_STEPS, seed=0)
classifier.save(os.path.join(OUTPUT_DIR, "classifier.keras"))
for sigma in (0.05, 0.5, 2.0):
    p_corrupted = classifier.clean_probability(corrupted[:256], sigma, seed=0).mean()
    p_clean = classifier.clean_probability(x_test[:256], sigma, seed=0).mean()
    print(f"sigma {sigma:4.2f}: P(clean) for blurred digits {p_corrupted:.2f}, "
          f"for held-out clean digits {p_clean:.2f}")

"""
## Annotating each blurred digit

`annotate_noise_levels` follows each sample's probability of "clean" up a
grid of levels (averaging a few noise draws) and keeps the lowest level from
which it stays above `tau`. A sample that never gets there is unusable: its
level is NaN, and `training_data` drops it with a warning that counts it.
Pass `groups=` to give every member of a group (a source, a corruption type)
the level of the group's mean curve instead.
"""

annotation = ka.annotation.annotate_noise_levels(classifier, corrupted, tau=0.45, seed=1)
print(annotation)
annotation.save(os.path.join(OUTPUT_DIR, "annotation.npz"))
annotation = ka.annotation.NoiseAnnotation.load(os.path.join(OUTPUT_DIR, "annotation.npz"))
y, sigma_n = annotation.training_data(clean, corrupted, seed=2)
print(f"training set: {len(y)} samples, levels from {sigma_n.min():.2f} to {sigma_n.max():.2f}")

"""
The three steps are also one call:
`y, sigma_n = ka.annotation.annotate_corrupted_data(clean, corrupted, seed=0)`.

## Three models with the same budget

- `clean_only`: the clean tenth alone;
- `all_as_clean`: everything, the blurred digits taken as clean (level 0);
- `annotated`: clean digits at level 0, blurred ones at their annotated level.

The consistency loss is off (`consistency_weight=0`): the clean samples teach
the low noise levels, and samples are drawn with the full sampler.
"""

sigma_data = float(np.std(clean))


def train(data, levels, name):
    network = ka.networks.UNet(image_shape=(8, 8, 1), base_channels=8 if SMOKE else 16,
                               channel_multipliers=(1, 2), seed=0)
    model = ka.AmbientDiffusion(network, sigma_n=0.0, sigma_data=sigma_data,
                                consistency_weight=0.0, seed=0, name=name)
    model.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(2e-3, STEPS, alpha=0.05)))
    batch_size = 64
    epochs = max(1, int(np.ceil(STEPS * batch_size / len(data))))
    model.fit((data, levels), batch_size=batch_size, epochs=epochs, verbose=0)
    return model


everything = np.concatenate([clean, corrupted])
models = {
    "clean_only": train(clean, np.zeros(len(clean), "float32"), "clean_only"),
    "all_as_clean": train(everything, np.zeros(len(everything), "float32"), "all_as_clean"),
    "annotated": train(y, sigma_n, "annotated"),
}

"""
## Comparing the samples

Residual blur (lower is sharper) and a Fréchet distance to the held-out
clean digits on the hidden layer of a small digit classifier (FD_clf, lower
is better).
"""

features = make_feature_extractor(ka.data.load_digits("train"), kind="classifier",
                                  num_features=64,
                                  labels=ka.data.load_digits("train", return_labels=True)[1])
results = {"backend": keras.backend.backend(), "smoke": SMOKE,
           "levels_median": float(np.nanmedian(annotation.levels)),
           "dropped": annotation.num_dropped}
for name, model in models.items():
    samples = np.clip(model.generate(NUM_SAMPLES, num_steps=NUM_STEPS, seed=3), -1.5, 1.5)
    save_image_grid(os.path.join(OUTPUT_DIR, f"{name}.png"), samples[:64])
    blur = ka.evaluation.residual_blur(samples, x_test)
    fd = frechet_image_distance(samples, x_test, features)
    results[name] = {"residual_blur": float(blur), "fd_classifier": float(fd)}
    print(f"{name:13s}: residual blur {blur:.3f}, FD_clf {fd:.3f}")

with open(os.path.join(OUTPUT_DIR, "results.json"), "w") as f:
    json.dump(results, f, indent=2)

"""
## Notes

- The levels depend on how well the classifier tells the two sets apart: a
  stronger classifier gives higher (safer) levels, a weak one lower levels.
  The classifier's logit is scaled by `sigma_data / sqrt(sigma^2 + sigma_data^2)`
  so that its probability tends to 1/2 where the noise hides everything.
- The same recipe takes any corruption, or data from a related domain: only
  the classifier's training sets change.
- The measured comparison on the digits (three corruptions, the levels found,
  and how often each model copies its clean training digits) is in the
  README's benchmark section (`benchmarks/omni_digits.py`).
"""
