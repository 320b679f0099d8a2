"""Train an ambient diffusion model on any folder of (noisy) images.

    python examples/image_folder.py PATH/TO/IMAGES --sigma-n 0.1 --resolution 64
    python examples/image_folder.py PATH/TO/IMAGES --sigma-n auto   # estimate it

The images are read with `keras.utils.image_dataset_from_directory` (every
image under the folder, subfolders included), resized to a square resolution
and scaled to [-1, 1]. `--sigma-n` is the standard deviation of the noise in
those units (noise of std 10 on 0..255 pixels is sigma_n = 10 / 127.5 = 0.078);
with `auto` it is estimated from the images, and an explicit value that
disagrees strongly with the estimate prints a warning.

Outputs in `--output-dir`: `model.keras`, `samples/samples_epoch_XXXX.png`
(fixed-seed grids from the EMA weights), `samples_final.png` and
`metrics.json`.

Defaults are sized for a GPU (a UNet with 64 base channels, 100 epochs). Set
`KERAS_AMBIENT_SMOKE=1` for a tiny run that finishes in a minute on a CPU.
Needs TensorFlow installed for `image_dataset_from_directory` (any backend).
"""

import argparse
import json
import os
import sys
import time

SMOKE = os.environ.get("KERAS_AMBIENT_SMOKE", "0") == "1"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("folder", help="folder of images (png, jpg, bmp, gif)")
    p.add_argument(
        "--sigma-n",
        default="auto",
        help="noise level in [-1, 1] units, or 'auto' (default)",
    )
    p.add_argument("--resolution", type=int, default=16 if SMOKE else 64)
    p.add_argument("--grayscale", action="store_true")
    p.add_argument("--base-channels", type=int, default=8 if SMOKE else 64)
    p.add_argument("--channel-multipliers", default="1,2" if SMOKE else "1,2,2,2")
    p.add_argument("--num-res-blocks", type=int, default=1 if SMOKE else 2)
    p.add_argument("--consistency-weight", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=1 if SMOKE else 100)
    p.add_argument("--batch-size", type=int, default=8 if SMOKE else 64)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--grid-every", type=int, default=1 if SMOKE else 10)
    p.add_argument(
        "--num-steps", type=int, default=4 if SMOKE else 32, help="sampling steps"
    )
    p.add_argument("--output-dir", default="outputs/image_folder")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import keras_ambient.utils.backend_choice  # noqa: F401  (first: picks a backend if none is set)
    import keras
    import numpy as np

    import keras_ambient as ka
    from keras_ambient.callbacks.sample_grid import SampleGrid
    from keras_ambient.evaluation.images import estimate_noise_level
    from keras_ambient.utils.defaults import suggest_sigma_data
    from keras_ambient.utils.images import save_image_grid

    if not os.path.isdir(args.folder):
        sys.exit(f"error: {args.folder!r} is not a folder of images")
    dataset = keras.utils.image_dataset_from_directory(
        args.folder,
        labels=None,
        color_mode="grayscale" if args.grayscale else "rgb",
        image_size=(args.resolution, args.resolution),
        batch_size=256,
        shuffle=False,
    )
    y = (
        np.concatenate([np.asarray(batch) for batch in dataset]).astype("float32")
        / 127.5
        - 1.0
    )
    print(f"{len(y)} images of shape {y.shape[1:]}")

    # Reference-free (estimate_noise_level's default): the noise eigenvalues of
    # the covariance of 8x8 patches, found with the Marchenko-Pastur bulk edge.
    estimate = float(estimate_noise_level(y))
    if args.sigma_n == "auto":
        sigma_n = estimate
        print(f"estimated noise level: sigma_n = {sigma_n:.4f}")
    else:
        sigma_n = float(args.sigma_n)
        if (
            sigma_n > 0
            and estimate > 0
            and max(sigma_n / estimate, estimate / sigma_n) > 1.5
        ):
            print(
                f"warning: --sigma-n {sigma_n:g} disagrees with the estimated noise level "
                f"{estimate:.3f} by more than a factor 1.5; check it",
                file=sys.stderr,
            )
    sigma_data = suggest_sigma_data(y, sigma_n)

    multipliers = tuple(int(m) for m in args.channel_multipliers.split(","))
    network = ka.networks.UNet(
        image_shape=y.shape[1:],
        base_channels=args.base_channels,
        channel_multipliers=multipliers,
        num_res_blocks=args.num_res_blocks,
        seed=0,
    )
    model = ka.AmbientDiffusion(
        network,
        sigma_n=sigma_n,
        sigma_data=sigma_data,
        consistency_weight=args.consistency_weight,
        seed=0,
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    mode = "full" if args.consistency_weight > 0 or sigma_n == 0 else "truncated"
    grid = SampleGrid(
        os.path.join(args.output_dir, "samples"),
        every_n_epochs=args.grid_every,
        num_samples=4 if SMOKE else 16,
        num_steps=args.num_steps,
        mode=mode,
    )
    start = time.time()
    history = model.fit(
        y,
        batch_size=min(args.batch_size, len(y)),
        epochs=args.epochs,
        callbacks=[grid],
        verbose=2,
    )
    seconds = time.time() - start
    model.save(os.path.join(args.output_dir, "model.keras"))
    samples = model.generate(
        4 if SMOKE else 64, num_steps=args.num_steps, mode=mode, seed=0
    )
    save_image_grid(os.path.join(args.output_dir, "samples_final.png"), samples)
    metrics = {
        "backend": keras.backend.backend(),
        "num_images": int(len(y)),
        "image_shape": list(y.shape[1:]),
        "sigma_n": sigma_n,
        "sigma_n_estimate": estimate,
        "sigma_data": sigma_data,
        "epochs": args.epochs,
        "train_seconds": seconds,
        "residual_noise_of_samples": float(
            estimate_noise_level(np.clip(samples, -1, 1))
        ),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
    }
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"wrote {args.output_dir}/model.keras, samples_final.png and metrics.json")


if __name__ == "__main__":
    main()
