"""Data- and model-parallel training on JAX with `keras.distribution`.

`ka.AmbientDiffusion` trains through Keras's own `fit`, so Keras's
distribution API applies unchanged:

- `keras.distribution.DataParallel()`: every device holds all the weights
  (the EMA copy too) and gets `global_batch / num_devices` samples;
- `keras.distribution.ModelParallel(layout_map=...)`: a 2-D device mesh
  `("batch", "model")`; the U-Net's convolution and embedding kernels are split
  along their output channels over the "model" axis, the batch over "batch".

Set the distribution BEFORE creating the model (its variables are created
with their layouts). JAX compiles one SPMD program over the global batch: the
training noise is drawn once for the global batch from the model's
`SeedGenerator` and each device uses its slice, so there are no per-replica
seeds and the run is the single-device run up to the order of floating-point
reductions (`--check` measures it).

On a machine without accelerators, `--cpu-devices N` creates N virtual CPU
devices (it sets `XLA_FLAGS=--xla_force_host_platform_device_count=N` before
JAX is imported), which is how the tests run it.

Usage:
    KERAS_BACKEND=jax python examples/distributed_jax.py                  # all devices
    KERAS_BACKEND=jax python examples/distributed_jax.py --model-parallel 2
    KERAS_BACKEND=jax python examples/distributed_jax.py --smoke --cpu-devices 4 --check
"""

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="create this many virtual CPU devices (testing without accelerators)",
    )
    p.add_argument(
        "--model-parallel",
        type=int,
        nargs="+",
        default=[1],
        help="size of the 'model' mesh axis (1: pure data parallel); several "
        "values train one model per layout",
    )
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="GLOBAL batch size; must divide by the number of devices",
    )
    p.add_argument("--sigma-n", type=float, default=0.2)
    p.add_argument(
        "--check",
        action="store_true",
        help="also train on one device and compare the losses and weights",
    )
    p.add_argument(
        "--smoke", action="store_true", help="a few steps on a tiny U-Net (tests)"
    )
    p.add_argument("--output-dir", default="outputs/distributed_jax")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.cpu_devices:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={ARGS.cpu_devices}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ambient as ka  # noqa: E402


def layout_map_for_unet(mesh):
    """Splits the U-Net's kernels along their output channels (the "model" axis).

    Keys are regular expressions matched against variable paths; the EMA copy
    of the network has the same layer names, so it is split the same way.
    """
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[r".*(input_conv|_conv1|_conv2|_skip|_downsample|_upconv)/kernel"] = (
        None,
        None,
        None,
        "model",
    )
    layout_map[r".*_emb/kernel"] = (None, "model")
    return layout_map


def make_distribution(model_parallel):
    devices = keras.distribution.list_devices()
    if model_parallel <= 1:
        return keras.distribution.DataParallel(devices=devices)
    if len(devices) % model_parallel:
        raise ValueError(
            f"--model-parallel must divide the number of devices ({len(devices)}). "
            f"Received: --model-parallel {model_parallel}"
        )
    mesh = keras.distribution.DeviceMesh(
        shape=(len(devices) // model_parallel, model_parallel),
        axis_names=("batch", "model"),
        devices=devices,
    )
    return keras.distribution.ModelParallel(
        layout_map=layout_map_for_unet(mesh), batch_dim_name="batch"
    )


def make_model(args):
    keras.utils.set_random_seed(0)  # the same initial weights in every configuration
    if args.smoke:
        net = ka.networks.UNet(
            image_shape=(8, 8, 1),
            base_channels=8,
            channel_multipliers=(1, 2),
            num_res_blocks=1,
            num_groups=4,
            seed=0,
        )
    else:
        net = ka.networks.UNet(
            image_shape=(8, 8, 1), base_channels=32, channel_multipliers=(1, 2), seed=0
        )
    model = ka.AmbientDiffusion(
        net, sigma_n=args.sigma_n, consistency_weight=1.0, seed=0
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-4))
    return model


class StepLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def train(args, y, distribution):
    keras.distribution.set_distribution(distribution)
    try:
        model = make_model(args)
        steps = StepLosses()
        start = time.time()
        # Every batch, the last one included, must divide by the number of devices.
        model.fit(
            y,
            batch_size=args.batch_size,
            epochs=args.epochs,
            shuffle=False,
            verbose=0,
            callbacks=[steps],
        )
        seconds = time.time() - start
        weights = [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]
    finally:
        keras.distribution.set_distribution(None)
    return model, steps.losses, weights, seconds


def main(args):
    devices = keras.distribution.list_devices()
    x = ka.data.load_digits("train")
    if args.smoke:
        args.epochs, args.batch_size = 1, 16
        x = x[:64]
    n = len(x) - len(x) % args.batch_size  # whole batches only
    y = ka.data.add_noise(x[:n], args.sigma_n, seed=0)
    print(f"{len(devices)} devices: {devices}")
    reference = train(args, y, None) if args.check else None
    results = []
    for model_parallel in args.model_parallel:
        distribution = make_distribution(model_parallel)
        model, losses, weights, seconds = train(args, y, distribution)
        result = {
            "devices": len(devices),
            "distribution": type(distribution).__name__,
            "model_parallel": model_parallel,
            "steps": len(losses),
            "losses": losses,
            "seconds": seconds,
        }
        if reference is not None:
            _, ref_losses, ref_weights, _ = reference
            result["max_loss_rel_diff"] = float(
                max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, ref_losses))
            )
            result["max_weight_abs_diff"] = float(
                max(
                    np.max(np.abs(a - b)) if a.size else 0.0
                    for a, b in zip(weights, ref_weights)
                )
            )
            result["reference_losses"] = ref_losses
        print(json.dumps({k: v for k, v in result.items() if "losses" not in k}))
        results.append(result)
    # Sampling and saving work as usual (while a distribution is set, sampling
    # batches must also divide by the number of devices; here it is unset again).
    samples = model.generate(8, num_steps=4 if args.smoke else 32, seed=0)
    summary = {"runs": results, "samples_finite": bool(np.isfinite(samples).all())}
    os.makedirs(args.output_dir, exist_ok=True)
    model.save(os.path.join(args.output_dir, "model.keras"))
    with open(os.path.join(args.output_dir, "result.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    if keras.backend.backend() != "jax":
        sys.exit(
            "This example needs KERAS_BACKEND=jax (torch: distributed_torch.py, "
            "tensorflow: distributed_tensorflow.py)."
        )
    main(ARGS)
