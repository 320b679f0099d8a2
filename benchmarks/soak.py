"""Long CPU soak: many training steps on the 2-D Gaussian mixture with the
consistency loss, checking that nothing diverges.

Trains `ka.AmbientDiffusion` (MLP denoiser, ambient + consistency loss) on
noisy samples of the 8-component circle mixture for `--steps` optimizer steps
and prints, every `--window` steps, the mean / std / min / max of the per-step
loss, the number of non-finite losses, and the error of the EMA denoiser
against the closed-form posterior mean `E[x0 | x_0.5]` (docs/method.md §8). Also
checks the weights for NaN/Inf at every window. Writes the table as JSON.

A run is healthy when the NaN count is 0, the window means level off, and the
denoiser error decreases and then stays flat.

Usage:
    KERAS_BACKEND=jax python benchmarks/soak.py                   # 20k steps
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
    p.add_argument("--consistency-weight", type=float, default=1.0)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="outputs/benchmarks/soak.json")
    return p.parse_args(argv)


class StepRecorder(keras.callbacks.Callback):
    """Per-step losses (Keras logs the running mean of the epoch; undo it)."""

    def __init__(self):
        super().__init__()
        self.losses = []
        self._k = 0
        self._mean = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._k, self._mean = 0, 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        self._k += 1
        self.losses.append(self._k * mean - (self._k - 1) * self._mean)
        self._mean = mean


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
    model = ka.AmbientDiffusion(
        net,
        sigma_n=args.sigma_n,
        sigma_data=float(x.std()),
        consistency_weight=args.consistency_weight,
        seed=args.seed,
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    steps_per_epoch = args.num_samples // args.batch_size
    epochs_per_window = max(1, args.window // steps_per_epoch)
    recorder = StepRecorder()
    rows, error, start, epoch = [], None, time.time(), 0
    print(
        f"backend={keras.backend.backend()} steps={args.steps} window={args.window} "
        f"consistency_weight={args.consistency_weight}"
    )
    print(
        f"{'steps':>7} {'mean':>8} {'std':>7} {'min':>7} {'max':>7} {'nan':>4} "
        f"{'D err':>8} {'steps/s':>8}"
    )
    while len(recorder.losses) < args.steps and error is None:
        begin, t0 = len(recorder.losses), time.time()
        epochs = min(
            epoch + epochs_per_window,
            epoch + math.ceil((args.steps - begin) / steps_per_epoch),
        )
        try:
            model.fit(
                y,
                batch_size=args.batch_size,
                epochs=epochs,
                initial_epoch=epoch,
                shuffle=True,
                verbose=0,
                callbacks=[recorder],
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
            "denoiser_mse": d_err,
            "steps_per_s": window.size / max(time.time() - t0, 1e-9),
        }
        rows.append(row)
        print(
            f"{row['steps']:>7} {row['mean']:>8.4f} {row['std']:>7.4f} {row['min']:>7.4f} "
            f"{row['max']:>7.4f} {row['non_finite']:>4} {d_err:>8.5f} "
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
        "error": error,
        "seconds": time.time() - start,
        "second_half_window_mean_spread": (
            float(max(half) - min(half)) if half else None
        ),
        "second_half_loss_mean": float(np.mean(half)) if half else None,
        "windows": rows,
    }
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(summary, f, indent=1)
    print(
        json.dumps({k: v for k, v in summary.items() if k not in ("windows", "args")})
    )
    return summary


if __name__ == "__main__":
    main(parse_args())
