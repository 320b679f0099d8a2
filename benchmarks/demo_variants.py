"""The main job's model with one change at a time, measured over several sample sets.

`examples/noisy_digits.py` (the README's main job) trains a U-Net of 16 channels
for 2400 steps of 64 on the 8x8 digits noised at sigma_n = 0.2 and samples it
once per mode (until 2026-12-07: 1300 steps with the consistency loss on every
step, `--steps 1300 --consistency-interval 1` here). This script trains the same model (same data, noise draw,
network, learning-rate schedule and batch order) with the changes given on
the command line, then draws `--sets` sets of as many samples as there are
training digits per mode (full sampling ending at 0.05, and truncated) and
prints the mean and standard deviation over the sets of the residual noise and
the Fréchet distances to the held-out clean digits, as the main job measures
them. It answers "would more budget, capacity or another training-level law
bring the main job's samples below the noisy training data's FD?"
(docs/consistency.md §5).

`--ambient-steps K` trains K ambient-only steps first (consistency weight 0,
so each step costs what a step without consistency costs) and then `--steps`
steps with the consistency loss, on one learning-rate schedule over both.

Usage:
    KERAS_BACKEND=jax python benchmarks/demo_variants.py                 # the main job's model
    KERAS_BACKEND=jax python benchmarks/demo_variants.py --steps 1300 --consistency-interval 1
    KERAS_BACKEND=jax python benchmarks/demo_variants.py --base-channels 32 --json c32.json
    KERAS_BACKEND=jax python benchmarks/demo_variants.py --online --num-steps 18 40  # EMA or not; sampler steps
    KERAS_BACKEND=jax python benchmarks/demo_variants.py --guide-step 600 --guidance 1.5 2  # autoguidance
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_utils

import keras_ambient.utils.backend_choice  # noqa: E402,F401  (first: picks a backend if none is set)
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ambient as ka  # noqa: E402
from keras_ambient.evaluation import images as ev  # noqa: E402
from keras_ambient.utils.defaults import suggest_sigma_data  # noqa: E402

import bench_utils as bu  # noqa: E402

SIGMA_N = 0.2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2400, help="steps with the consistency loss")
    p.add_argument("--ambient-steps", type=int, default=0, help="ambient-only steps before them")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--num-res-blocks", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.0, help="dropout rate in the residual blocks")
    p.add_argument("--attention", type=int, nargs="*", default=[],
                   help="feature-map heights with self-attention (e.g. 4)")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="decoupled weight decay (AdamW instead of Adam when > 0)")
    p.add_argument("--consistency-weight", type=float, default=30.0)
    p.add_argument("--p-mean", type=float, default=-1.2, help="AmbientLoss p_mean (training-level law)")
    p.add_argument("--batch-fraction", type=float, default=0.25, help="ConsistencyLoss batch_fraction")
    p.add_argument("--consistency-interval", type=int, default=None,
                   help="AmbientDiffusion consistency_interval, the loss on one step in this many "
                        "(default: the library's; 1 = every step, the default before 2026-12-07)")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="AmbientDiffusion ema_decay (default: the library's)")
    p.add_argument("--num-steps", type=int, nargs="+", default=[18],
                   help="sampler levels; several values sample the one model with each")
    p.add_argument("--online", action="store_true",
                   help="also sample the online network (use_ema=False)")
    p.add_argument("--guide-step", type=int, default=None,
                   help="autoguidance (Karras et al. 2024): keep the EMA network of this training step as "
                        "the guide and sample full mode also with D_guide + w (D - D_guide)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.5],
                   help="autoguidance weights w (with --guide-step; w = 1 is no guidance)")
    p.add_argument("--sets", type=int, default=3, help="sample sets per mode (sampling seeds 0..sets-1)")
    p.add_argument("--num-samples", type=int, default=None, help="images per set (default: as many as "
                   "the training digits, as the main job; FD depends on the count)")
    p.add_argument("--seed", type=int, default=0, help="data noise, initialisation and batch order")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(args):
    keras.utils.set_random_seed(args.seed)
    x_train, labels = ka.data.load_digits("train", return_labels=True)
    x_test = ka.data.load_digits("test")
    y = ka.data.add_noise(x_train, SIGMA_N, seed=args.seed)
    network = ka.networks.UNet(image_shape=(8, 8, 1), base_channels=args.base_channels,
                               channel_multipliers=(1, 2), num_res_blocks=args.num_res_blocks,
                               dropout=args.dropout, attention_resolutions=tuple(args.attention),
                               seed=args.seed)
    sigma_data = suggest_sigma_data(y, SIGMA_N)
    model = ka.AmbientDiffusion(
        network, sigma_n=SIGMA_N, sigma_data=sigma_data, seed=args.seed,
        consistency_weight=args.consistency_weight,
        **({} if args.consistency_interval is None else {"consistency_interval": args.consistency_interval}),
        **({} if args.ema_decay is None else {"ema_decay": args.ema_decay}),
        ambient_loss=ka.losses.AmbientLoss(sigma_data=sigma_data, p_mean=args.p_mean),
        consistency_loss=ka.losses.ConsistencyLoss(batch_fraction=args.batch_fraction))

    # The main job's batch order: shuffled passes over the data, cut to the steps.
    total = args.ambient_steps + args.steps
    rng = np.random.default_rng(args.seed)
    need = total * args.batch_size
    order = np.concatenate([rng.permutation(len(y)) for _ in range(need // len(y) + 1)])[:need]
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, decay_steps=total, alpha=0.05)
    optimizer = (keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay) if args.weight_decay
                 else keras.optimizers.Adam(schedule))
    split = args.ambient_steps * args.batch_size
    t0 = time.perf_counter()
    if args.ambient_steps:
        # consistency_weight is read when the train step is traced; compiling again with
        # the same (built) optimizer keeps its state and its place in the schedule.
        model.consistency_weight = 0.0
        model.compile(optimizer=optimizer)
        model.fit(y[order[:split]], batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
        model.consistency_weight = args.consistency_weight
    t1 = time.perf_counter()
    model.compile(optimizer=optimizer)
    guide_weights = []

    class KeepGuide(keras.callbacks.Callback):
        # The EMA weights at `--guide-step` (`self.model` syncs JAX's training state).
        def on_train_batch_end(self, batch, logs=None):
            if args.ambient_steps + batch + 1 == args.guide_step:
                guide_weights[:] = [keras.ops.convert_to_numpy(v) for v in self.model.ema_denoiser.weights]

    if args.steps:
        model.fit(y[order[split:]], batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0,
                  callbacks=[KeepGuide()] if args.guide_step else [])
    train_s = time.perf_counter() - t0

    pca = ev.make_feature_extractor(x_train, "pca", num_features=16)
    clf = ev.make_feature_extractor(x_train, "classifier", num_features=64, labels=labels, seed=0)

    def measure(images):
        return [ev.estimate_noise_level(images, reference=x_test), ev.frechet_image_distance(images, x_test, pca),
                ev.frechet_image_distance(images, x_test, clf)]

    n = len(y) if args.num_samples is None else args.num_samples
    results = {}
    for use_ema in (True, False) if args.online else (True,):
        for num_steps in args.num_steps:
            for mode, kwargs in (("full", dict(mode="full", sigma_min=0.05)), ("truncated", dict(mode="truncated"))):
                rows = np.asarray([measure(model.generate(n, seed=s, batch_size=n, num_steps=num_steps,
                                                          use_ema=use_ema, **kwargs))
                                   for s in range(args.sets)])
                mean, std = bu.mean_std(rows)
                label = mode + ("" if len(args.num_steps) == 1 else f"@{num_steps}")
                label += "" if use_ema else "/online"
                results[label] = {"mean": mean.tolist(), "std": std.tolist()}
    if args.guide_step:
        if not guide_weights:
            raise SystemExit(f"--guide-step {args.guide_step} is not a step of the run")
        guide = ka.AmbientDiffusion.from_config(model.get_config())
        guide.build()
        for v, w in zip(guide.ema_denoiser.weights, guide_weights):
            v.assign(w)
        for weight in args.guidance:
            def guided_heun(denoise_fn, x, sigmas, *, seed=None, verbose=0, weight=weight, **options):
                def guided(x, sigma):  # D_w = D_guide + w (D - D_guide)
                    d_guide = keras.ops.convert_to_tensor(guide.denoise(x, sigma, batch_size=n))
                    return d_guide + weight * (denoise_fn(x, sigma) - d_guide)
                return ka.samplers.sample_heun(guided, x, sigmas, seed=seed, verbose=verbose, **options)

            rows = np.asarray([measure(model.generate(n, seed=s, batch_size=n, mode="full", sigma_min=0.05,
                                                      sampler=guided_heun)) for s in range(args.sets)])
            mean, std = bu.mean_std(rows)
            results[f"full/guide{args.guide_step}/w{weight:g}"] = {"mean": mean.tolist(), "std": std.tolist()}
    print(f"training: {train_s:.0f} s ({t1 - t0:.0f} s of it ambient-only); "
          f"{args.sets} sample sets of {n} per mode, mean ± std:")
    print(f"{'mode':<18} {'resid_noise':>15} {'FD_pca':>15} {'FD_clf':>15}")
    for mode, r in results.items():
        print(f"{mode:<18} " + " ".join(f"{m:>7.3f} ± {s:<5.3f}" for m, s in zip(r["mean"], r["std"])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "training_s": train_s, "ambient_only_s": t1 - t0,
                       "columns": ["resid_noise", "FD_pca", "FD_clf"], "results": results}, f, indent=1)
    return results, model


if __name__ == "__main__":
    main(parse_args())
