"""Long CPU soak: many training steps on the 2-D Gaussian mixture with the
consistency loss, checking that nothing diverges, optionally with bad batches
injected.

Trains `ka.AmbientDiffusion` (MLP denoiser, ambient + consistency loss at the
model's defaults) on noisy samples of the 8-component circle mixture for
`--steps` optimizer steps and prints, every `--window` steps, the mean / std /
min / max of the per-step loss, the number of non-finite losses, the bad samples
counted by the model, and the error of the EMA denoiser against the closed-form
posterior mean `E[x0 | x_0.5]` (docs/method.md §8). Also checks the weights for
NaN/Inf at every window. Writes the table as JSON.

`--inject-faults` streams the data through a `keras.utils.PyDataset` that puts
1-3 bad samples into one batch every `--fault-every` steps, cycling through NaN
data, Inf data, a NaN level, a negative level and a level above `sigma_max`, and
trains with `TerminateOnNonFinite(bad_samples="skip")`: the bad samples must be
left out and counted (the `bad_samples` totals of the epochs must equal what
was injected) and the weights must stay finite.

A run is healthy when the NaN count is 0, the window means level off, the
denoiser error decreases and then stays flat, and (with faults) the counted
bad samples equal the injected ones.

Usage:
    KERAS_BACKEND=jax python benchmarks/soak.py                   # 20k steps
    KERAS_BACKEND=jax python benchmarks/soak.py --inject-faults   # with bad batches
    KERAS_BACKEND=jax python benchmarks/soak.py --steps 2000 --window 500
"""

import argparse
import json
import math
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ambient as ka  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--window", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-samples", type=int, default=8192)
    p.add_argument("--sigma-n", type=float, default=0.2)
    p.add_argument("--consistency-weight", type=float, default=None,
                   help="default: the model's default")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inject-faults", action="store_true",
                   help="stream the data with bad samples injected; skip and count them")
    p.add_argument("--fault-every", type=int, default=250,
                   help="steps between batches holding bad samples")
    p.add_argument("--output", default=None,
                   help="default: outputs/benchmarks/soak[_faults].json")
    return p.parse_args(argv)


class StepRecorder(keras.callbacks.Callback):
    """Per-step losses (Keras logs the running mean of the epoch; undo it), the
    bad samples counted per step and per epoch (`bad_samples` is a running sum)."""

    def __init__(self):
        super().__init__()
        self.losses, self.bad_per_step, self.bad_per_epoch = [], [], []
        self._k = 0
        self._mean = 0.0
        self._bad = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._k, self._mean, self._bad = 0, 0.0, 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        self._k += 1
        self.losses.append(self._k * mean - (self._k - 1) * self._mean)
        self._mean = mean
        bad = float(logs.get("bad_samples", 0.0))
        self.bad_per_step.append(bad - self._bad)
        self._bad = bad

    def on_epoch_end(self, epoch, logs=None):
        self.bad_per_epoch.append(float((logs or {}).get("bad_samples", 0.0)))


FAULT_KINDS = ("nan_data", "inf_data", "nan_sigma_n", "negative_sigma_n", "sigma_n_above_max")


class FaultyBatches(keras.utils.PyDataset):
    """Shuffled batches of `(y, sigma_n)`; every `fault_every`-th step holds 1-3
    bad samples of one kind (cycling through `FAULT_KINDS`). The faults are a
    pure function of (epoch, batch index), so a batch read twice is the same
    batch; `injected[(epoch, index)]` records the bad samples of each."""

    def __init__(self, y, sigma_n, batch_size, fault_every, seed, inject=True):
        super().__init__()
        self.y, self.sigma_n, self.batch_size = y, float(sigma_n), batch_size
        self.fault_every, self.seed, self.inject = fault_every, seed, inject
        self.epoch, self.injected = 0, {}

    def __len__(self):
        return len(self.y) // self.batch_size

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, index):
        order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.y))
        rows = order[index * self.batch_size:(index + 1) * self.batch_size]
        y = self.y[rows].copy()
        sigma = np.full((len(rows),), self.sigma_n, "float32")
        step = self.epoch * len(self) + index + 1
        if self.inject and step % self.fault_every == 0:
            rng = np.random.default_rng((self.seed, self.epoch, index, 1))
            kind = FAULT_KINDS[(step // self.fault_every) % len(FAULT_KINDS)]
            bad = rng.choice(len(rows), size=int(rng.integers(1, 4)), replace=False)
            if kind == "nan_data":
                y[bad, 0] = np.nan
            elif kind == "inf_data":
                y[bad, 1] = np.inf
            elif kind == "nan_sigma_n":
                sigma[bad] = np.nan
            elif kind == "negative_sigma_n":
                sigma[bad] = -0.1
            else:
                sigma[bad] = 1000.0
            self.injected[(self.epoch, index)] = (kind, len(bad))
        return y, sigma


def main(args):
    keras.utils.set_random_seed(args.seed)
    gm = ka.data.GaussianMixture.circle()
    x = gm.sample(args.num_samples, seed=args.seed)
    y = ka.data.add_noise(x, args.sigma_n, seed=args.seed + 1)
    probe = gm.sample(1024, seed=args.seed + 2)
    probe = probe + 0.5 * np.random.default_rng(args.seed + 3).standard_normal(
        probe.shape
    )
    probe = probe.astype("float32")
    exact = gm.posterior_mean(probe, 0.5)

    net = ka.networks.MLPDenoiser(2, hidden_units=128, num_blocks=3, seed=args.seed)
    weight = {} if args.consistency_weight is None else {"consistency_weight": args.consistency_weight}
    model = ka.AmbientDiffusion(
        net, sigma_n=args.sigma_n, sigma_data=float(x.std()), seed=args.seed, **weight
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    steps_per_epoch = args.num_samples // args.batch_size
    epochs_per_window = max(1, args.window // steps_per_epoch)
    recorder = StepRecorder()
    rows, error, start, epoch = [], None, time.time(), 0
    batches = FaultyBatches(y, args.sigma_n, args.batch_size, args.fault_every, args.seed,
                            inject=args.inject_faults)
    callbacks = [recorder]
    if args.inject_faults:
        callbacks.append(ka.callbacks.TerminateOnNonFinite(bad_samples="skip"))
    print(
        f"backend={keras.backend.backend()} steps={args.steps} window={args.window} "
        f"consistency_weight={model.consistency_weight} inject_faults={args.inject_faults}"
    )
    print(
        f"{'steps':>7} {'mean':>8} {'std':>7} {'min':>7} {'max':>7} {'nan':>4} "
        f"{'bad':>5} {'D err':>8} {'steps/s':>8}"
    )
    while len(recorder.losses) < args.steps and error is None:
        begin, t0 = len(recorder.losses), time.time()
        epochs = min(
            epoch + epochs_per_window,
            epoch + math.ceil((args.steps - begin) / steps_per_epoch),
        )
        try:
            model.fit(
                batches,
                epochs=epochs,
                initial_epoch=epoch,
                verbose=0,
                callbacks=callbacks,
            )
        except (FloatingPointError, ValueError) as e:  # TerminateOnNonFinite
            error = str(e)
        epoch = epochs
        window = np.asarray(recorder.losses[begin:])
        finite = window[np.isfinite(window)]
        weights_ok = all(
            np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights
        )
        d_err = float(np.mean((model.denoise(probe, 0.5) - exact) ** 2))
        row = {
            "steps": len(recorder.losses),
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std()) if finite.size else None,
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "non_finite": int(window.size - finite.size) + (0 if weights_ok else 1),
            "bad_samples": int(sum(recorder.bad_per_step[begin:])),
            "denoiser_mse": d_err,
            "steps_per_s": window.size / max(time.time() - t0, 1e-9),
        }
        rows.append(row)
        print(
            f"{row['steps']:>7} {row['mean']:>8.4f} {row['std']:>7.4f} {row['min']:>7.4f} "
            f"{row['max']:>7.4f} {row['non_finite']:>4} {row['bad_samples']:>5} {d_err:>8.5f} "
            f"{row['steps_per_s']:>8.1f}",
            flush=True,
        )
    means = [r["mean"] for r in rows if r["mean"] is not None]
    half = means[len(means) // 2 :]
    summary = {
        "backend": keras.backend.backend(),
        "args": vars(args),
        "total_steps": len(recorder.losses),
        "non_finite_total": sum(r["non_finite"] for r in rows),
        "weights_finite": all(
            np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights),
        "bad_samples_injected": sum(n for _, n in batches.injected.values()),
        "bad_batches_injected": len(batches.injected),
        "bad_samples_injected_by_kind": {
            kind: sum(n for k, n in batches.injected.values() if k == kind) for kind in FAULT_KINDS},
        "bad_samples_counted": int(sum(recorder.bad_per_epoch)),
        "final_denoiser_mse": rows[-1]["denoiser_mse"] if rows else None,
        "error": error,
        "seconds": time.time() - start,
        "second_half_window_mean_spread": (
            float(max(half) - min(half)) if half else None
        ),
        "second_half_loss_mean": float(np.mean(half)) if half else None,
        "windows": rows,
    }
    output = args.output or (
        "outputs/benchmarks/soak_faults.json" if args.inject_faults else "outputs/benchmarks/soak.json")
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w") as f:
        json.dump(summary, f, indent=1)
    print(
        json.dumps({k: v for k, v in summary.items() if k not in ("windows", "args")})
    )
    return summary


if __name__ == "__main__":
    main(parse_args())
