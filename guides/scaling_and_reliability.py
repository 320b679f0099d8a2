"""
Title: Scaling and reliability: multi-device training, resuming, NaN checks, safe loading
Author: keras_ambient developers
Date created: 2026/11/28
Last modified: 2026/11/28
Description: Train on several devices with each backend, resume killed runs exactly, stop on divergence with a clear message, load files safely, and get reproducible samples.
Accelerator: GPU
"""

"""
## Introduction

This guide covers what changes when a model outgrows one device or one
uninterrupted session:

- **Scaling**: data parallel training on JAX (`keras.distribution`), PyTorch
  (`torchrun` + DDP) and TensorFlow (`MirroredStrategy`); what the per-device
  batch, the EMA and the training seeds become.
- **Resuming**: `ka.callbacks.BackupAndRestore` continues a killed run at the
  step of the last backup, with the same weights, EMA, optimizer state and
  random stream.
- **Divergence**: `TerminateOnNonFinite` stops on a NaN/Inf loss or weight and
  says where and why.
- **Safe loading** and **determinism**.

The distributed runs need their device set-up before the backend is imported,
so they live in `examples/` scripts; the rest runs here.
"""

"""
## Setup
"""

import json
import os
import shutil
import zipfile

import keras_ambient.utils.backend_choice  # noqa: F401  (first: picks a backend if none is set)
import keras
import numpy as np

import keras_ambient as ka

SMOKE = os.environ.get("KERAS_AMBIENT_SMOKE", "0") == "1"
OUTPUT_DIR = os.path.join(
    os.environ.get("KERAS_AMBIENT_OUTPUT_DIR", "outputs/guides"),
    "scaling_and_reliability",
)
os.makedirs(OUTPUT_DIR, exist_ok=True)
EPOCHS = 2 if SMOKE else 10
results = {"backend": keras.backend.backend()}

"""
## Scaling on the existing engines

`ka.AmbientDiffusion` trains through Keras's `fit` (JAX, TensorFlow) or a
short DDP loop (torch), so each backend's own data parallelism applies.

**JAX**, `keras.distribution`. Set the distribution before creating the model:

```python
keras.distribution.set_distribution(keras.distribution.DataParallel())
model = ka.AmbientDiffusion(network, sigma_n=0.2)  # variables get their layouts
model.compile(optimizer="adam")
model.fit(y, batch_size=256)                       # 256 = the GLOBAL batch
```

`ModelParallel` with a `LayoutMap` splits the U-Net's kernels over a "model"
mesh axis (`examples/distributed_jax.py --model-parallel 2`). JAX compiles one
program over the global batch: the noise is drawn once for the whole batch
from the model's `SeedGenerator` and each device uses its slice. A
DataParallel or ModelParallel run is therefore the single-device run up to
the order of float32 reductions: with 4 virtual CPU devices the losses differ
by ~1e-7 relative and the weights by ~3e-8 after the steps of the test. Every
batch (the last one too, and sampling batches while the distribution is set)
must divide by the number of devices.

```bash
KERAS_BACKEND=jax python examples/distributed_jax.py --smoke --cpu-devices 4 --model-parallel 1 2 --check
```

**TensorFlow**, `tf.distribute.MirroredStrategy`. Create and compile the model
in `strategy.scope()`. Each replica runs its own train step on
`global_batch / replicas` samples; `compute_loss` divides its loss by the
number of replicas (the gradients are summed), so the update is that of the
mean loss over the global batch. Sample from the model loaded outside the
strategy.

```bash
KERAS_BACKEND=tensorflow python examples/distributed_tensorflow.py --smoke --cpu-devices 2 --check
```

**PyTorch**, `torchrun` with one process per device, following Keras's guide
"Multi-GPU distributed training with PyTorch": DDP wraps a module whose
`forward` is `model.compute_loss`, the step is the model's Keras optimizer,
each process reads its shard of the global batch, rank 0 saves.

```bash
torchrun --standalone --nproc_per_node=2 examples/distributed_torch.py --smoke --check
```

**Per-device batch.** `batch_size` is the global batch; each device gets
`batch_size / devices`. Keep the global batch (and the learning rate) of a
single-device recipe to get the same training.

**EMA with data parallel.** The EMA is updated inside the training step from
the (replicated, identical) weights, so every device holds the same EMA; no
extra synchronisation is needed and the saved EMA is the single copy.

**Seeds per replica.** On JAX there is one stream (one program). With
MirroredStrategy and torch DDP every replica runs its own step, so replica
`k` draws with the seed `[seed + k * REPLICA_STRIDE, counter]`
(`ka.utils.seeding.SavedSeedGenerator`): without it all replicas would add
the *same* noise to their shards. The examples' `--check` verifies the first
step against one device computing each shard with its replica's seed: equal
losses (to ~1e-7) and weights (to ~1e-9). A consequence: a 2-replica run is not
bit-for-bit the 1-device run with the same global batch (that one draws one
noise array for the whole batch); it is the same algorithm with different noise.
"""

"""
## Resuming a killed run exactly

Keras's `BackupAndRestore` saves every `save_freq` batches but replays an
interrupted epoch from its first batch. `ka.callbacks.BackupAndRestore` records
how far the epoch got and passes over the finished batches when the script is
started again. The backup holds the weights, the EMA and `ema_step`, the
optimizer state and the state of the training `SeedGenerator` (saved with the
weights, also in `.keras` files), so the resumed run draws the same noise and
ends with the same weights as an uninterrupted one. Keep the data order
reproducible (`shuffle=False`, or data shuffled from the epoch number).

Here an exception stands in for the process being killed (the test suite
kills a real subprocess with SIGKILL).
"""

x = ka.data.GaussianMixture.circle().sample(256, seed=0)
y = ka.data.add_noise(x, 0.2, seed=1)


def make_model():
    keras.utils.set_random_seed(0)  # the Dense initializers use the global seed
    net = ka.networks.MLPDenoiser(2, hidden_units=32, num_blocks=1, seed=0)
    model = ka.AmbientDiffusion(net, sigma_n=0.2, consistency_weight=1.0, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.build((None, 2))
    return model


class Crash(keras.callbacks.Callback):
    def __init__(self, at_step):
        super().__init__()
        self.at_step, self.step = at_step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step == self.at_step:
            raise RuntimeError("simulated crash")


backup_dir = os.path.join(OUTPUT_DIR, "backup")
shutil.rmtree(backup_dir, ignore_errors=True)
steps_per_epoch = 256 // 32
crash_at = steps_per_epoch + 5  # in the middle of the second epoch
try:
    make_model().fit(
        y,
        batch_size=32,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[
            ka.callbacks.BackupAndRestore(backup_dir, save_freq=3),
            Crash(crash_at),
        ],
    )
except RuntimeError as e:
    print("interrupted:", e)
with open(os.path.join(backup_dir, "latest", "training_metadata.json")) as f:
    print("last backup:", f.read())

resumed = make_model()  # a new "process": fresh model, same script
resumed.fit(
    y,
    batch_size=32,
    epochs=EPOCHS,
    shuffle=False,
    verbose=0,
    callbacks=[ka.callbacks.BackupAndRestore(backup_dir, save_freq=3)],
)
reference = make_model()
reference.fit(y, batch_size=32, epochs=EPOCHS, shuffle=False, verbose=0)
resume_diff = max(
    float(np.max(np.abs(keras.ops.convert_to_numpy(a) - keras.ops.convert_to_numpy(b))))
    for a, b in zip(resumed.weights, reference.weights)
)
print("max |resumed - uninterrupted| over weights and EMA:", resume_diff)
results["resume_max_weight_diff"] = resume_diff
results["resume_iterations"] = int(
    keras.ops.convert_to_numpy(resumed.optimizer.iterations)
)

"""
## Stopping on divergence

`fit` adds `ka.callbacks.TerminateOnNonFinite`. It checks the loss after
every batch and all weights every 100 batches and at each epoch end (one
`isfinite` per weight). Its error names the epoch, the batch and the training
step, the last finite loss, and the usual causes with their current values.
Here a NaN written into one weight stands in for a divergence:
"""


class Poison(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 2:
            w = self.model.denoiser.trainable_weights[0]
            w.assign(np.full(w.shape, np.nan, "float32"))


try:
    make_model().fit(y, batch_size=32, epochs=1, verbose=0, callbacks=[Poison()])
except FloatingPointError as e:
    print(e)
    results["divergence_message"] = str(e)

"""
Samples with NaN/Inf in a dataset are left out of the update and stop the run
with a `ValueError` that says so (the weights are intact). A long soak of the
2-D mixture with the consistency loss (`benchmarks/soak.py`, 20k steps) shows
no non-finite loss and flat window means; with `--inject-faults` and
`TerminateOnNonFinite(bad_samples="skip")` it trains past injected bad batches and
counts every bad sample (figures in `docs/reliability.md`).

## Safe loading and version checks

`.keras` files of `AmbientDiffusion` hold no Python code (no lambdas), so they
load with Keras's `safe_mode=True` (the default). The config records the
library version (`keras_ambient_version`); a file written by a newer major
version, or with config keys this version does not know, raises a
`ValueError` that says which.
"""

model = make_model()
model.fit(y, batch_size=32, epochs=1, verbose=0)
path = os.path.join(OUTPUT_DIR, "model.keras")
model.save(path)
with zipfile.ZipFile(path) as z:
    config = json.loads(z.read("config.json"))["config"]
print("saved by keras_ambient", config["keras_ambient_version"])
loaded = keras.models.load_model(path, safe_mode=True)
print(
    "seed state restored:",
    keras.ops.convert_to_numpy(loaded.seed_generator.state),
    keras.ops.convert_to_numpy(model.seed_generator.state),
)

"""
## Determinism

The same `seed` gives the same samples on the same backend (and machine); a
different seed gives different ones. Across backends the random streams of
Keras's `SeedGenerator` differ (JAX threefry, TensorFlow stateless Philox,
torch `Generator`), so the same seed gives *different* samples and different
training noise on each backend, with the same distribution. What is identical
across backends: saved weights (a `.keras` file loads with the same outputs,
to ~1e-7), `denoise`, and the NumPy-based `ka.data.add_noise`. Weight
initialisation uses Keras's global seed: call `keras.utils.set_random_seed`
before building a network to make it reproducible.
"""

a = loaded.generate(8, num_steps=4 if SMOKE else 18, seed=1)
b = loaded.generate(8, num_steps=4 if SMOKE else 18, seed=1)
c = loaded.generate(8, num_steps=4 if SMOKE else 18, seed=2)
results["same_seed_identical"] = bool(np.array_equal(a, b))
results["different_seed_differs"] = bool(not np.allclose(a, c))
print(results)
with open(os.path.join(OUTPUT_DIR, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
shutil.rmtree(backup_dir, ignore_errors=True)
