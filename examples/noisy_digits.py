"""Train a diffusion model of CLEAN digits from NOISY digits, in one command.

The built-in default: scikit-learn's 8x8 digits (train split, 1438 images in
[-1, 1]), noised ONCE at sigma_n = 0.2 with a fixed seed, so the model never
sees a clean image. `ka.AmbientDiffusion` with the library defaults (ambient
loss M3 plus consistency loss M4) learns the clean distribution. The model is
sampled both ways (docs/method.md §5): "full" (the reverse process run to
sigma = 0, what the consistency loss is for; 18 Heun steps on levels from 80
down to `--final-sigma` 0.05, then a last step to D(x; 0.05), which leaves less
residual noise than the model's default end 0.002 at the same Fréchet distances:
docs/consistency.md §5) and "truncated" (stopped at
sigma_n, returning D(x; sigma_n)); the demo reports both and says which is
closer to clean digits. `--clip-denoised` samples with the denoiser's outputs
clipped to the data range [-1, 1] (less speckle on the background, slightly
larger Fréchet distances: docs/consistency.md §5).

Metrics compare as many samples as there are training digits with the whole
noisy and the whole clean training set: a Fréchet distance depends on the
number of images (docs/consistency.md §5: at 512 images, random subsets of the
same data differ by more than the noise makes the noisy data differ from the
clean data).

Writes to `--output-dir` (default `outputs/noisy_digits`):
- `samples.png`: column groups: noisy training data | samples, full sampling |
  samples, truncated sampling | the nearest clean training digit to each
  sample of the better mode (L2; the clean digits are used only for this
  picture and for the metrics, never for training);
- `metrics.json`: per sampling mode, the residual noise of the samples
  (`estimate_noise_level`, calibrated on clean held-out digits: ~0 on clean,
  ~sigma_n on noisy digits) and the Fréchet distances to the held-out clean
  digits on 16 PCA features (shape) and on a small digit classifier's hidden
  layer (FD_clf, FID-like); the same figures for the noisy and the clean
  training data, and for the noisy training data denoised by the model
  (`D(y; sigma_n)`, posterior means, not samples: how well the model
  recovers the clean digits behind its training data), training time,
  steps/s, backend and settings;
- `model.keras`: the trained model (`ka.models.load_model` reloads it).

Usage:
    KERAS_BACKEND=jax python examples/noisy_digits.py            # a few CPU minutes
    python examples/noisy_digits.py --sigma-n 0.1 --steps 3000
    python examples/noisy_digits.py --smoke                      # seconds (tests)
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import keras_ambient.utils.backend_choice  # noqa: E402,F401  (first: picks a backend if none is set)
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ambient as ka  # noqa: E402
from keras_ambient.evaluation import images as ev  # noqa: E402
from keras_ambient.utils.defaults import suggest_sigma_data  # noqa: E402


# Chosen so that `bash scripts/run_demo.sh` fits the 5-minute budget on 2 CPU cores (the
# measured run is in the README): 2400 steps with the library's default of the consistency
# loss on one step in three take less time than the 1300 steps with it on every step that the
# main job trained before (docs/consistency.md §2). benchmarks/digits_quality.py trains the
# same network 1600 steps.
DEFAULT_STEPS = 2400


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train on noisy digits, sample clean digits.")
    p.add_argument("--sigma-n", type=float, default=0.2, help="noise level of the training data")
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {DEFAULT_STEPS})")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (instead of --steps)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=2e-3,
                   help="peak learning rate (cosine decay to 5%% of it)")
    p.add_argument("--consistency-weight", type=float, default=None,
                   help="weight of the consistency loss (default: the library's)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="samples per mode for the metrics (default: as many as the training digits)")
    p.add_argument("--final-sigma", type=float, default=0.05,
                   help="full sampling: the last noise level of the schedule, from which the last step "
                        "jumps to D(x; final_sigma) (default 0.05, measured on the digits: "
                        "docs/consistency.md; the model's own default is 0.002)")
    p.add_argument("--clip-denoised", action="store_true",
                   help="sample with the denoiser's outputs clipped to the data range [-1, 1]")
    p.add_argument("--output-dir", default=os.path.join("outputs", "noisy_digits"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="a few steps and samples (for tests)")
    args = p.parse_args(argv)
    if args.steps is not None and args.epochs is not None:
        p.error("give --steps or --epochs, not both")
    if args.sigma_n <= 0:
        p.error(f"--sigma-n must be > 0 (the data's noise level). Received: {args.sigma_n}")
    if not 0 < args.final_sigma < args.sigma_n:
        p.error(f"--final-sigma must be in (0, sigma_n). Received: {args.final_sigma}")
    for name, minimum in (("steps", 1), ("epochs", 1), ("batch_size", 1), ("num_samples", 2)):
        value = getattr(args, name)
        if value is not None and value < minimum:
            p.error(f"--{name.replace('_', '-')} must be >= {minimum}. Received: {value}")
    if args.smoke:
        args.steps, args.epochs, args.num_samples = 3, None, 16
    return args


def save_grid(path, groups, rows=8):
    """One PNG of image groups side by side: `groups` is a list of (title, images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(3.4 * len(groups), 4))
    for ax, (title, imgs) in zip(axes, groups):
        grid = ka.utils.images.image_grid(imgs, num_columns=-(-len(imgs) // rows), pad_value=255)
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class _StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.first = None
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.first is None:
            self.first = time.perf_counter()


FD_PCA, FD_CLF, NOISE = "frechet_distance_pca16_to_clean_test", "frechet_distance_classifier_to_clean_test", \
    "residual_noise"


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    backend = keras.backend.backend()
    keras.utils.set_random_seed(args.seed)

    # Data: the clean digits are hidden; the model sees y = x + sigma_n z only.
    x_train, labels = ka.data.load_digits("train", return_labels=True)
    x_test = ka.data.load_digits("test")  # held-out clean digits, for the metrics
    y_train = ka.data.add_noise(x_train, args.sigma_n, seed=args.seed)
    num_samples = len(y_train) if args.num_samples is None else args.num_samples

    network = ka.networks.UNet(image_shape=(8, 8, 1), base_channels=16, channel_multipliers=(1, 2),
                               num_res_blocks=1, seed=args.seed)
    model_kwargs = {} if args.consistency_weight is None else {"consistency_weight": args.consistency_weight}
    # The clean data's std, estimated from the noisy data alone (docs/choosing_defaults.md).
    sigma_data = suggest_sigma_data(y_train, args.sigma_n)
    model = ka.AmbientDiffusion(network, sigma_n=args.sigma_n, sigma_data=sigma_data, seed=args.seed,
                                ambient_loss=ka.losses.AmbientLoss(sigma_data=sigma_data), **model_kwargs)

    if args.epochs is not None:
        fit_kwargs = dict(x=y_train, batch_size=args.batch_size, epochs=args.epochs, shuffle=True)
        total_steps = args.epochs * -(-len(y_train) // args.batch_size)
    else:
        steps = args.steps = DEFAULT_STEPS if args.steps is None else args.steps
        rng = np.random.default_rng(args.seed)
        need = steps * args.batch_size
        idx = np.concatenate([rng.permutation(len(y_train)) for _ in range(need // len(y_train) + 1)])[:need]
        fit_kwargs = dict(x=y_train[idx], batch_size=args.batch_size, epochs=1, shuffle=False)
        total_steps = steps
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, decay_steps=total_steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    timer = _StepTimer()
    print(f"[{backend}] training on {len(y_train)} digits noised at sigma_n={args.sigma_n} "
          f"({total_steps} steps of {args.batch_size}) ...", flush=True)
    t0 = time.perf_counter()
    history = model.fit(**fit_kwargs, verbose=0 if args.smoke else 2, callbacks=[timer])
    train_s = time.perf_counter() - t0
    first = timer.first if timer.first is not None else t0
    steps_per_s = (timer.steps - 1) / (t0 + train_s - first) if timer.steps > 1 else float("nan")

    # Metrics: residual noise (calibrated on clean held-out digits) and Fréchet
    # distances on two feature sets, for both sampling modes and for the training
    # data; every set has `num_samples` images (FD depends on the count).
    pca = ev.make_feature_extractor(x_train, "pca", num_features=16)
    clf = ev.make_feature_extractor(x_train, "classifier", num_features=64, labels=labels, seed=0)

    def measure(images):
        return {NOISE: ev.estimate_noise_level(images, reference=x_test),
                FD_PCA: ev.frechet_image_distance(images, x_test, pca),
                FD_CLF: ev.frechet_image_distance(images, x_test, clf)}

    clip = (-1.0, 1.0) if args.clip_denoised else None
    samples, nearest, by_mode = {}, {}, {}
    for mode in ("full", "truncated"):
        t1 = time.perf_counter()
        final = {"sigma_min": args.final_sigma} if mode == "full" else {}
        samples[mode] = model.generate(num_samples, seed=args.seed, mode=mode, batch_size=num_samples,
                                       clip_denoised=clip, **final)
        sampling_s = time.perf_counter() - t1
        if not np.all(np.isfinite(samples[mode])):
            print(f"error: the {mode} samples hold NaN/Inf (training diverged?)", file=sys.stderr)
            return 1
        nn_dist, nn_idx = ka.memorization.nearest_neighbors(samples[mode], x_train, metric="l2", k=1)
        nearest[mode] = x_train[nn_idx[:, 0]]
        by_mode[mode] = dict(measure(samples[mode]), mean_l2_to_nearest_clean_train=float(np.mean(nn_dist)),
                             sampling_time_s=sampling_s)
    best = min(by_mode, key=lambda m: by_mode[m][FD_CLF])
    # References with as many images as the samples.
    n_ref = min(len(y_train), num_samples)
    noisy_m, clean_m = measure(y_train[:n_ref]), measure(x_train[:n_ref])
    # The noisy training digits denoised by the model, E[x0 | y] = D(y; sigma_n): posterior
    # means, not samples. Close to the clean data's figures when the model has learned the
    # clean denoiser at sigma_n; a gap between these and the samples' figures then lies in
    # generating digits from pure noise, not in what the model learned about the noise.
    denoised_m = measure(np.asarray(model.denoise(y_train[:n_ref], args.sigma_n, batch_size=n_ref)))
    metrics = {
        "samples": by_mode,
        "better_mode": best,
        "noisy_training_data": noisy_m,
        "clean_training_data": clean_m,
        "noisy_training_data_denoised": denoised_m,
        "reference_images": n_ref,
        "training_time_s": train_s,
        "first_step_s": first - t0,
        "steps_per_s": steps_per_s,
        "steps": timer.steps,
        "final_loss": float(history.history["loss"][-1]),
        "backend": backend,
        "settings": {
            "sigma_n": args.sigma_n, "steps": args.steps, "epochs": args.epochs,
            "batch_size": args.batch_size, "learning_rate": args.learning_rate,
            "num_samples": num_samples, "seed": args.seed, "smoke": args.smoke,
            "consistency_weight": model.consistency_weight,
            "ambient_loss": model.ambient_loss.get_config(),
            "consistency_loss": model.consistency_loss.get_config(),
            "sigma_data": sigma_data, "clip_denoised": clip,
            "network": "UNet(16, (1, 2), 1 res block)", "sampler": "heun, 18 steps",
            "final_sigma": args.final_sigma,
        },
    }

    grid_n = min(32, num_samples)
    save_grid(os.path.join(args.output_dir, "samples.png"), [
        ("noisy training data", y_train[:grid_n]),
        ("samples, full (to sigma=0)" + (" *" if best == "full" else ""), samples["full"][:grid_n]),
        (f"samples, truncated (at {args.sigma_n})" + (" *" if best == "truncated" else ""),
         samples["truncated"][:grid_n]),
        (f"nearest clean digit to * ({best})", nearest[best][:grid_n]),
    ])
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    model.save(os.path.join(args.output_dir, "model.keras"))

    print(f"backend {backend}: {timer.steps} steps in {train_s:.1f} s ({steps_per_s:.2f} steps/s after the "
          f"first step, which took {first - t0:.1f} s); sampling "
          f"{sum(m['sampling_time_s'] for m in by_mode.values()):.1f} s")
    print(f"{num_samples} images each, against {len(x_test)} held-out clean digits:")
    print(f"{'':30s} residual noise   FD (PCA-16)   FD (classifier)")
    rows = (("samples, full sampling", by_mode["full"]), ("samples, truncated sampling", by_mode["truncated"]),
            ("noisy training data", noisy_m), ("clean training data", clean_m),
            ("noisy data denoised, E[x0|y]", denoised_m))
    for name, m in rows:
        print(f"{name:30s} {m[NOISE]:14.3f}   {m[FD_PCA]:11.3f}   {m[FD_CLF]:15.3f}")
    other = "truncated" if best == "full" else "full"
    below = [k for k, key in (("PCA-16", FD_PCA), ("classifier", FD_CLF)) if by_mode[best][key] < noisy_m[key]]
    print(f"better: {best} sampling (FD_clf {by_mode[best][FD_CLF]:.3f} vs {by_mode[other][FD_CLF]:.3f}); "
          f"its FD is below the noisy training data's on "
          f"{' and '.join(below) if below else 'neither feature set'}; residual noise "
          f"{by_mode[best][NOISE]:.3f} (noisy data {noisy_m[NOISE]:.3f}). One sample set: its FD moves "
          f"by about +-0.17 (classifier) / +-0.02 (PCA) between sampling seeds "
          f"(benchmarks/sampling_spread.py; the modes compare pair by pair)")
    print(f"wrote {args.output_dir}/samples.png, metrics.json, model.keras")
    return 0


if __name__ == "__main__":
    sys.exit(main())
