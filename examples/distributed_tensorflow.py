"""Data-parallel training on TensorFlow with `tf.distribute.MirroredStrategy`.

Create (and compile) the model inside `strategy.scope()`; `fit` then splits
every global batch over the replicas. Each replica runs its own train step:

- the loss of `ka.AmbientDiffusion.compute_loss` is divided by the number of
  replicas (the gradients are summed across replicas), so the update is the
  one of the mean loss over the global batch and the reported `loss` is that
  mean;
- replica `k` draws its training noise with the seed
  `[seed + k * REPLICA_STRIDE, counter]` (see `ka.utils.seeding`): the
  replicas do not add identical noise to their shards.

Because of the second point a 2-replica run is not the single-device run with
the same global batch (that one draws one noise array for the whole batch).
`--check` verifies the first step exactly instead: the reported loss is the
mean of the losses of the two shards computed on one device with the two
replica seeds, and the weights after the step are those of one Adam step on
the mean of the two shards' gradients.

On a CPU-only machine `--cpu-devices 2` splits the CPU into 2 logical devices.

Usage:
    KERAS_BACKEND=tensorflow python examples/distributed_tensorflow.py              # all GPUs
    KERAS_BACKEND=tensorflow python examples/distributed_tensorflow.py --smoke --cpu-devices 2 --check
"""

import argparse
import importlib.util
import json
import os
import sys

if importlib.util.find_spec("tensorflow") is None:  # e.g. a JAX-only environment
    sys.exit("This example needs TensorFlow: bash scripts/setup_env.sh tensorflow (or all).")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ambient as ka  # noqa: E402
from keras_ambient.utils.distribute import REPLICA_STRIDE  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="split the CPU into this many logical devices (testing)",
    )
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64, help="GLOBAL batch size")
    p.add_argument("--sigma-n", type=float, default=0.2)
    p.add_argument(
        "--check", action="store_true", help="verify the first step on one device"
    )
    p.add_argument(
        "--smoke", action="store_true", help="a few steps on a tiny model (tests)"
    )
    p.add_argument("--output-dir", default="outputs/distributed_tensorflow")
    return p.parse_args(argv)


def make_model(args, seed=0):
    keras.utils.set_random_seed(0)  # the same initial weights everywhere
    if args.smoke:
        net = ka.networks.MLPDenoiser(
            64, hidden_units=32, num_blocks=1, embedding_dim=8, seed=0
        )
    else:
        net = ka.networks.UNet(
            image_shape=(8, 8, 1), base_channels=32, channel_multipliers=(1, 2), seed=0
        )
    # The consistency loss on every step: `--check` compares fit's first step with
    # one `compute_loss` call, which has no lazy (one step in k) weighting.
    model = ka.AmbientDiffusion(
        net, sigma_n=args.sigma_n, consistency_weight=1.0, consistency_interval=1, seed=seed
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-4))
    return model


def load_data(args):
    x = ka.data.load_digits("train")
    if args.smoke:
        args.epochs, args.batch_size = 1, 16
        x = x[:64].reshape(64, -1)  # the MLP takes flat digits
    n = len(x) - len(x) % args.batch_size
    return ka.data.add_noise(x[:n], args.sigma_n, seed=0)


class StepLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def check_first_step(args, y, first_loss, first_weights, replicas):
    """One device: shard r of the first batch with replica r's seed."""
    import tensorflow as tf

    model = make_model(args)
    model.build((None,) + y.shape[1:])
    shard = args.batch_size // replicas
    losses, grads = [], None
    for r in range(replicas):
        state = model.seed_generator.state
        model.seed_generator.state.assign(
            keras.ops.convert_to_tensor([r * REPLICA_STRIDE, 0], dtype=state.dtype)
        )
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=y[r * shard : (r + 1) * shard], training=True)
        g = tape.gradient(loss, model.trainable_variables)
        losses.append(float(loss))
        grads = g if grads is None else [a + b for a, b in zip(grads, g)]
    model.optimizer.apply([g / replicas for g in grads], model.trainable_variables)
    weight_diff = max(
        float(np.max(np.abs(keras.ops.convert_to_numpy(w) - first_weights[w.path])))
        for w in model.trainable_variables
    )
    return {
        "shard_losses": losses,
        "loss_abs_diff": abs(float(np.mean(losses)) - first_loss),
        "weight_abs_diff": weight_diff,
    }


def main(args):
    import tensorflow as tf

    if args.cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_devices
        )
        devices = [f"/cpu:{i}" for i in range(args.cpu_devices)]
    else:
        devices = None  # all GPUs (or the CPU)
    strategy = tf.distribute.MirroredStrategy(devices)
    replicas = strategy.num_replicas_in_sync
    y = load_data(args)
    result = {"replicas": replicas}
    with strategy.scope():
        model = make_model(args)
    if args.check:  # the weights after the first step, then the rest of the run
        model.fit(
            y[: args.batch_size],
            batch_size=args.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[first := StepLosses()],
        )
        first_weights = {
            w.path: keras.ops.convert_to_numpy(w) for w in model.trainable_variables
        }
        result["check"] = check_first_step(
            args, y, first.losses[0], first_weights, replicas
        )
    steps = StepLosses()
    model.fit(
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=False,
        verbose=0,
        callbacks=[steps],
    )
    result.update(steps=len(steps.losses), final_loss=steps.losses[-1])
    # Sample from the saved model loaded outside the strategy: Keras's
    # `predict_on_batch` on a model created in a MirroredStrategy scope returns
    # the replicas' outputs concatenated, which the samplers cannot use.
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "model.keras")
    model.save(path)
    trained = keras.models.load_model(path)
    samples = trained.generate(8, num_steps=4 if args.smoke else 32, seed=0)
    result["samples_finite"] = bool(np.isfinite(samples).all())
    with open(os.path.join(args.output_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    if keras.backend.backend() != "tensorflow":
        sys.exit("This example needs KERAS_BACKEND=tensorflow.")
    main(parse_args())
