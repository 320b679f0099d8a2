"""Ambient diffusion on CIFAR-10 noised at sigma_n = 0.05, 0.1 and 0.2.

    python examples/cifar10.py --sigma-n 0.1          # one level
    python examples/cifar10.py --sigma-n all          # the three levels in turn
    python examples/cifar10.py --smoke                # tiny fake data, CPU, no download

Mirrors the CIFAR-10 setting of "How much is a noisy image worth? Data scaling
laws for ambient diffusion" (Daras et al. 2024): the 50,000 training images, in
[-1, 1], are noised ONCE at sigma_n (fixed seed) and the clean images are never
used for training. For each level the script writes to
`--output-dir/sigma_<level>/`: `model.keras`, sample grids, `samples.npz`
(`--num-samples` full-mode samples in [-1, 1], ready for your FID tool, e.g.
with 50,000 samples to compare with published numbers) and `metrics.json`
(losses, the noise level measured in the samples).

Data comes from `keras.datasets.cifar10.load_data()` (downloads ~170 MB on
first use). The defaults (a 4-level UNet with 128 channels, 200 epochs) are
sized for a GPU and take hours; use `--epochs` and `--base-channels` to scale.
`--smoke` (or `KERAS_AMBIENT_SMOKE=1`) replaces CIFAR-10 by 32 random smooth
32x32 images and trains for one epoch.
"""

import argparse
import json
import os
import time

LEVELS = (0.05, 0.1, 0.2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sigma-n", default="0.1", help="0.05, 0.1, 0.2 (or any level) or 'all'"
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny fake data, a few seconds of training"
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--base-channels", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--consistency-weight", type=float, default=0.1)
    p.add_argument(
        "--num-samples", type=int, default=None, help="samples saved to samples.npz"
    )
    p.add_argument(
        "--num-steps",
        type=int,
        default=None,
        help="sampling steps (default 18, EDM's CIFAR setting)",
    )
    p.add_argument("--output-dir", default="outputs/cifar10")
    args = p.parse_args(argv)
    args.smoke = args.smoke or os.environ.get("KERAS_AMBIENT_SMOKE", "0") == "1"
    defaults = (
        dict(epochs=1, batch_size=16, base_channels=8, num_samples=4, num_steps=3)
        if args.smoke
        else dict(
            epochs=200,
            batch_size=128,
            base_channels=128,
            num_samples=1000,
            num_steps=18,
        )
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.levels = LEVELS if args.sigma_n == "all" else (float(args.sigma_n),)
    return args


def load_images(smoke):
    import numpy as np

    if smoke:
        # Random smooth images (upsampled 4x4 noise), no download.
        rng = np.random.default_rng(0)
        coarse = rng.uniform(-1, 1, size=(32, 4, 4, 3)).astype("float32")
        return np.clip(coarse.repeat(8, axis=1).repeat(8, axis=2), -1, 1)
    import keras_ambient.utils.backend_choice  # noqa: F401  (first: picks a backend if none is set)
    import keras

    (x_train, _), _ = keras.datasets.cifar10.load_data()
    return x_train.astype("float32") / 127.5 - 1.0


def train_one(x_clean, sigma_n, args):
    import keras_ambient.utils.backend_choice  # noqa: F401  (first: picks a backend if none is set)
    import keras
    import numpy as np

    import keras_ambient as ka
    from keras_ambient.callbacks.sample_grid import SampleGrid
    from keras_ambient.evaluation.images import estimate_noise_level
    from keras_ambient.utils.images import save_image_grid

    out = os.path.join(args.output_dir, f"sigma_{sigma_n:g}")
    y = ka.data.add_noise(x_clean, sigma_n, seed=0)  # noised once, fixed seed
    network = ka.networks.UNet(
        image_shape=(32, 32, 3),
        base_channels=args.base_channels,
        channel_multipliers=(1, 2) if args.smoke else (1, 2, 2, 2),
        num_res_blocks=1 if args.smoke else 2,
        attention_resolutions=() if args.smoke else (16,),
        seed=0,
    )
    model = ka.AmbientDiffusion(
        network,
        sigma_n=sigma_n,
        sigma_data=0.5,
        consistency_weight=args.consistency_weight,
        seed=0,
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    grid = SampleGrid(
        os.path.join(out, "grids"),
        every_n_epochs=1 if args.smoke else 10,
        num_samples=4 if args.smoke else 64,
        num_steps=args.num_steps,
    )
    start = time.time()
    history = model.fit(
        y, batch_size=args.batch_size, epochs=args.epochs, callbacks=[grid], verbose=2
    )
    seconds = time.time() - start
    model.save(os.path.join(out, "model.keras"))
    samples = model.generate(
        args.num_samples, num_steps=args.num_steps, seed=0, verbose=1
    )
    np.savez(os.path.join(out, "samples.npz"), x=samples)
    save_image_grid(os.path.join(out, "samples.png"), samples[:64], scale=1)
    # Noise left in the samples (reference-free estimate; it reads >0 on clean photos
    # too, so compare it with the same number on clean images).
    metrics = {
        "backend": keras.backend.backend(),
        "smoke": args.smoke,
        "sigma_n": sigma_n,
        "epochs": args.epochs,
        "train_seconds": seconds,
        "noise_estimate_samples": float(estimate_noise_level(np.clip(samples, -1, 1))),
        "noise_estimate_clean_data": float(estimate_noise_level(x_clean[:1000])),
        "noise_estimate_noisy_data": float(estimate_noise_level(y[:1000])),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
    }
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(
        f"sigma_n={sigma_n:g}: wrote {out}/model.keras, samples.npz, samples.png, metrics.json"
    )
    return metrics


def main(argv=None):
    args = parse_args(argv)
    x_clean = load_images(args.smoke)
    print(f"{len(x_clean)} training images; levels {args.levels}")
    summary = {f"{s:g}": train_one(x_clean, s, args) for s in args.levels}
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
        json.dump(
            {
                k: {"noise_estimate_samples": v["noise_estimate_samples"]}
                for k, v in summary.items()
            },
            f,
        )


if __name__ == "__main__":
    main()
