"""
Title: Sampling below the noise level: the consistency loss
Author: keras_ambient developers
Date created: 2026/11/28
Last modified: 2026/11/28
Description: What the consistency loss does, what it costs, its settings, and how to check that it worked on a 2-D Gaussian mixture.
Accelerator: None
"""

"""
## Introduction

The ambient loss (guide 1) pins the denoiser `D(x; sigma)` to the clean
posterior mean `E[x0 | x_sigma]` for every `sigma > sigma_n`, the noise level of
the data. Below `sigma_n` the noisy data says nothing directly. Sampling to
`sigma = 0` with a denoiser that is wrong there leaves noise in the samples.

The *consistency* property of the true denoiser fills the gap: along the
reverse process, the denoiser is a martingale,

`D(x_t; t) = E[ D(x_s; s) | x_t ]` for `s < t`,

where `x_s` is produced from `x_t` by the model's own reverse step (M5 of
`docs/method.md`). The consistency loss (M4) penalises the violation with an
unbiased two-draw estimator,
`(D(x_s^1; s) - D(x_t; t)) . (D(x_s^2; s) - D(x_t; t))`, for `s` below
`sigma_n`. Starting at `t > sigma_n`, where `D` is already right, it propagates
the correct denoiser downwards.

A 2-D Gaussian mixture is the ideal test bed: its exact denoisers are known in
closed form (`ka.data.GaussianMixture`), and a single number, the spread of the
samples around their cluster centre, tells the three possible outcomes apart
(docs/method.md section 8), for clusters of std `s` noised at `sigma_n`:

| model | within-cluster std |
| --- | --- |
| plain diffusion on the noisy data | `sqrt(s^2 + sigma_n^2)` |
| ambient loss, truncated sampling | `s^2 / sqrt(s^2 + sigma_n^2)` |
| ambient + consistency, full sampling | `s` (exact) |
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
from keras_ambient.utils.defaults import suggest_sigma_data
from keras_ambient.utils.images import save_image_grid

SMOKE = os.environ.get("KERAS_AMBIENT_SMOKE", "0") == "1"
OUTPUT_DIR = os.path.join(
    os.environ.get("KERAS_AMBIENT_OUTPUT_DIR", "outputs/guides"), "consistency_loss"
)
os.makedirs(OUTPUT_DIR, exist_ok=True)

NUM_TRAIN = 512 if SMOKE else 8192
EPOCHS = 2 if SMOKE else 60
NUM_SAMPLES = 256 if SMOKE else 2000
NUM_STEPS = 4 if SMOKE else 32
SIGMA_N = 0.2
STD = 0.05

"""
## Data

Eight tight clusters (std 0.05) on the unit circle, observed only through
noise of level 0.2, four times the cluster width.
"""

mixture = ka.data.GaussianMixture.circle(num_components=8, radius=1.0, std=STD)
x_clean = mixture.sample(NUM_TRAIN, seed=0)
y = ka.data.add_noise(x_clean, SIGMA_N, seed=1)
sigma_data = suggest_sigma_data(y, SIGMA_N)
print(f"suggested sigma_data = {sigma_data:.3f} (clean std {x_clean.std():.3f})")

save_image_grid(
    os.path.join(OUTPUT_DIR, "noisy_data.png"), y[:2000], reference=x_clean[:2000]
)

"""
## Within-cluster spread

For each sample, its offset from the nearest cluster mean; the spread is the
root-mean-square offset per coordinate.
"""


def within_cluster_std(samples):
    d = samples[:, None, :] - mixture.means[None].astype("float32")
    nearest = np.argmin((d**2).sum(-1), axis=1)
    offsets = d[np.arange(len(samples)), nearest]
    return float(np.sqrt(np.mean(offsets**2)))


print("clean data:", round(within_cluster_std(x_clean), 4))
print("noisy data:", round(within_cluster_std(y), 4))

"""
## Three models

Same MLP denoiser, three training set-ups:

- `naive`: told the data is clean (`sigma_n=0`): plain denoising score matching
  on the noisy points;
- `ambient`: the ambient loss only (`consistency_weight=0`);
- `consistent`: the ambient loss plus the consistency loss (library defaults:
  weight 30, the chain starts at the data `y` at `t = sigma_n` and runs 7
  Euler–Maruyama steps of the reverse SDE on EDM-spaced levels, on a quarter of
  each batch).

`ka.losses.ConsistencyLoss` exposes the choices of M4/M5: where the chain
starts (`start="data"`, the default, starts at each training sample at its own
noise level; `start="ambient"` reuses the ambient loss's `x_t` and `D(x_t; t)`,
so a step costs 3 network evaluations instead of 1), how `s` is drawn below `t`
(`s_distribution`, `max_gap`), how many reverse steps lead from `t` to `s`
(`chain`, `num_steps`, `spacing`), on which part of the batch
(`batch_fraction`), and whether gradients flow into the target
(`stop_gradient_target`, keep it `True`: a gradient into the target made
training diverge in the reference measurements). The model adds
`consistency_target="ema"` (the EMA network as teacher),
`consistency_start_step` (ambient-only training first) and
`consistency_interval` (the loss on one step in `k`, with `k` times its weight;
the default runs it on one step in three).
"""


def make_model(sigma_n, consistency_weight, name):
    network = ka.networks.MLPDenoiser(
        2, hidden_units=64 if SMOKE else 256, num_blocks=2 if SMOKE else 3, seed=0
    )
    weight = {} if consistency_weight is None else {"consistency_weight": consistency_weight}
    model = ka.AmbientDiffusion(
        network, sigma_n=sigma_n, sigma_data=sigma_data, seed=0, name=name, **weight
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


timings = {}
models = {}
for name, sigma_n, weight in [
    ("naive", 0.0, 0.0),
    ("ambient", SIGMA_N, 0.0),
    ("consistent", SIGMA_N, None),  # None: the library's default weight
]:
    model = make_model(sigma_n, weight, name)
    model.fit(y, batch_size=256, epochs=1, verbose=0)  # compile / warm up
    start = time.time()
    model.fit(y, batch_size=256, epochs=EPOCHS, verbose=0)
    steps = EPOCHS * int(np.ceil(len(y) / 256))
    timings[name] = (time.time() - start) / steps
    models[name] = model
    print(f"{name:10s}: {1000 * timings[name]:.1f} ms per step")

"""
The cost: the consistency term runs a reverse chain (network evaluations
without gradient) and two evaluations with gradient, on a quarter of each batch
by default. A step with it costs two to three times an ambient-only step, so by
default it runs on one step in three (`consistency_interval=3`, with three times
its weight; the other steps are compiled without it), and the mean step costs
well under twice an ambient-only one. `consistency_interval=1` runs it on every
step (docs/consistency.md §2 measures both).
"""

print(f"consistency cost: {timings['consistent'] / timings['ambient']:.2f}x per step")

"""
## Did it work?

Sample the three models, measure the spread and compare with the table above.
"""

expected = {
    "naive_full": np.sqrt(STD**2 + SIGMA_N**2),
    "ambient_truncated": STD**2 / np.sqrt(STD**2 + SIGMA_N**2),
    "ambient_full": None,
    "consistent_full": STD,
}
runs = {
    "naive_full": (models["naive"], "full"),
    "ambient_truncated": (models["ambient"], "truncated"),
    "ambient_full": (models["ambient"], "full"),
    "consistent_full": (models["consistent"], "full"),
}
results = {"backend": keras.backend.backend(), "smoke": SMOKE, "sigma_n": SIGMA_N}
for name, (model, mode) in runs.items():
    samples = model.generate(NUM_SAMPLES, num_steps=NUM_STEPS, mode=mode, seed=2)
    spread = within_cluster_std(samples)
    results[f"spread_{name}"] = spread
    target = expected[name]
    note = "" if target is None else f" (theory {target:.4f})"
    print(f"{name:18s}: within-cluster std {spread:.4f}{note}")
    save_image_grid(
        os.path.join(OUTPUT_DIR, f"{name}.png"), samples, reference=x_clean[:2000]
    )

"""
A second check needs no sampling: below `sigma_n`, compare the model's
denoiser with the exact clean denoiser of the mixture. Only the consistent model
should be close.
"""

sigma_low = SIGMA_N / 4
x_low = x_clean[:NUM_SAMPLES] + sigma_low * np.random.default_rng(3).standard_normal(
    (NUM_SAMPLES, 2)
).astype("float32")
truth = mixture.posterior_mean(x_low, sigma_low)
for name in ("ambient", "consistent"):
    err = np.sqrt(np.mean((models[name].denoise(x_low, sigma_low) - truth) ** 2))
    results[f"denoiser_rmse_below_sigma_n_{name}"] = float(err)
    print(f"{name:10s}: RMSE to the exact denoiser at sigma={sigma_low:.2f}: {err:.4f}")

results["seconds_per_step"] = timings
with open(os.path.join(OUTPUT_DIR, "results.json"), "w") as f:
    json.dump(results, f, indent=2)

"""
## Settings worth knowing

- `consistency_weight`: the default 30 was chosen on the 2-D mixture
  (docs/consistency.md); the consistency term is small next to the EDM-weighted
  ambient loss. The paper used 0.01 on SDXL latents with a different weighting.
- The chain must be honest: driven by the exact denoiser, `E[D(x_s; s) | x_t]`
  must equal `D(x_t; t)`. One M5 move is exact in its mean but not in its law;
  `benchmarks/consistency_chain.py` measures each chain's bias with the exact
  mixture denoiser, and the default (7 Euler–Maruyama steps, EDM spacing) is
  the cheapest that passes.
- `start="data"` starts the chain at the training sample at `t = sigma_n`
  (one extra network evaluation).
- If you only need posterior-mean quality samples, skip consistency and use
  `generate(mode="truncated")`: cheaper training (1.5-1.7x cheaper per step
  than the default of one consistency step in three; 2.6-3x than every step).

With `KERAS_AMBIENT_SMOKE=1` the models are barely trained; run the full guide
to see the spreads approach the theory.
"""
