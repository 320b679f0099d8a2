"""Multi-process data-parallel training on PyTorch (`torchrun` + DDP).

Keras's distribution API does not cover torch, and `fit` does not run under
`DistributedDataParallel`. As in Keras's guide "Multi-GPU distributed training
with PyTorch", each process builds the Keras model (a `torch.nn.Module`),
wraps it in `DistributedDataParallel` and runs a short custom loop:

- the module given to DDP computes `ka.AmbientDiffusion.compute_loss` (which
  also updates the EMA copy from the pre-update weights, as in `fit`), so
  DDP averages the gradients of the processes during `backward()`;
- the step is taken by the model's Keras optimizer (`optimizer.apply`), so a
  model saved by rank 0 keeps training with `fit` like any other;
- every process reads its own contiguous shard of each global batch;
- process `k` draws its training noise with the seed
  `[seed + k * REPLICA_STRIDE, counter]` (automatic once `torch.distributed`
  is initialised; see `ka.utils.seeding`), so the shards get independent noise;
- the weights (and the EMA, computed from them) stay identical on all ranks;
  rank 0 saves the model.

`--check` (rank 0) verifies the first step on one process: the mean of the
ranks' losses equals the losses of the shards computed with the ranks' seeds,
and the weights after the step are those of one Adam step on the mean of the
shards' gradients.

Usage (CPU: gloo; GPUs: nccl, one process per GPU):
    torchrun --standalone --nproc_per_node=2 examples/distributed_torch.py
    torchrun --standalone --nproc_per_node=2 examples/distributed_torch.py --smoke --check
"""

import argparse
import importlib.util
import json
import os
import sys

if importlib.util.find_spec("torch") is None:  # e.g. a JAX-only environment
    sys.exit("This example needs PyTorch: bash scripts/setup_env.sh torch (or all).")
os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import keras_ambient as ka  # noqa: E402
from keras_ambient.utils.distribute import REPLICA_STRIDE  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64, help="GLOBAL batch size")
    p.add_argument("--sigma-n", type=float, default=0.2)
    p.add_argument(
        "--check", action="store_true", help="verify the first step on rank 0"
    )
    p.add_argument(
        "--smoke", action="store_true", help="a few steps on a tiny model (tests)"
    )
    p.add_argument("--output-dir", default="outputs/distributed_torch")
    return p.parse_args(argv)


def make_model(args, data_shape):
    keras.utils.set_random_seed(0)  # DDP also copies rank 0's weights to all ranks
    if args.smoke:
        net = ka.networks.MLPDenoiser(
            data_shape[-1], hidden_units=32, num_blocks=1, embedding_dim=8, seed=0
        )
    else:
        net = ka.networks.UNet(
            image_shape=data_shape, base_channels=32, channel_multipliers=(1, 2), seed=0
        )
    # The loop below calls `compute_loss` itself, which runs the consistency loss on
    # every step (`consistency_interval` applies to `fit`/`train_on_batch`): say so.
    model = ka.AmbientDiffusion(
        net, sigma_n=args.sigma_n, consistency_weight=1.0, consistency_interval=1, seed=0
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-4))
    model.build((None,) + tuple(data_shape))
    model.optimizer.build(model.trainable_variables)
    return model


class TrainingLoss(torch.nn.Module):
    """What DDP wraps: forward() is the training loss of the Keras model."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, y):
        return self.model.compute_loss(x=y, training=True)


def train_step(ddp, model, y):
    loss = ddp(y)
    loss.backward()  # DDP all-reduces (averages) the gradients here
    variables = model.trainable_variables
    grads = [v.value.grad for v in variables]
    model.optimizer.apply(grads, variables)
    for v in variables:
        v.value.grad = None
    return loss.detach()


def reference_first_step(args, y, world):
    """On one process: shard r of the first batch with rank r's seed, then one
    Adam step on the mean of the shards' gradients."""
    model = make_model(args, y.shape[1:])
    shard = args.batch_size // world
    losses = []
    grads = None
    for r in range(world):
        state = model.seed_generator.state
        state.assign(
            keras.ops.convert_to_tensor([r * REPLICA_STRIDE, 0], dtype=state.dtype)
        )
        loss = model.compute_loss(
            x=torch.as_tensor(y[r * shard : (r + 1) * shard]), training=True
        )
        g = torch.autograd.grad(loss, [v.value for v in model.trainable_variables])
        losses.append(float(loss.detach()))
        grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
    model.optimizer.apply([g / world for g in grads], model.trainable_variables)
    weights = {w.path: keras.ops.convert_to_numpy(w) for w in model.trainable_variables}
    return losses, weights


def compare_first_step(reference, first_loss, first_weights):
    losses, weights = reference
    return {
        "shard_losses": losses,
        "loss_abs_diff": abs(float(np.mean(losses)) - first_loss),
        "weight_abs_diff": max(
            float(np.max(np.abs(weights[k] - v))) for k, v in first_weights.items()
        ),
    }


def main(args):
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    x = ka.data.load_digits("train")
    if args.smoke:
        args.epochs, args.batch_size = 1, 16
        x = x[:64].reshape(64, -1)
    if args.batch_size % world:
        raise ValueError(
            f"The global batch size must divide by the number of processes ({world}). "
            f"Received: --batch-size {args.batch_size}"
        )
    n = len(x) - len(x) % args.batch_size
    y = ka.data.add_noise(x[:n], args.sigma_n, seed=0)  # the same array on every rank
    # Computed before DDP starts (rank 0 only; the other ranks wait in DDP's init).
    reference = (
        reference_first_step(args, y, world) if args.check and rank == 0 else None
    )
    model = make_model(args, y.shape[1:])
    ddp = torch.nn.parallel.DistributedDataParallel(TrainingLoss(model))
    shard = args.batch_size // world
    losses, result = [], {"world_size": world}
    for epoch in range(args.epochs):
        for start in range(0, n, args.batch_size):
            mine = torch.as_tensor(y[start + rank * shard : start + (rank + 1) * shard])
            loss = train_step(ddp, model, mine)
            dist.all_reduce(loss)  # for logging: the mean over the global batch
            losses.append(float(loss) / world)
            if args.check and rank == 0 and len(losses) == 1:
                first = {
                    w.path: keras.ops.convert_to_numpy(w)
                    for w in model.trainable_variables
                }
                result["check"] = compare_first_step(reference, losses[0], first)
    # The weights are the same on every rank: compare checksums.
    checksum = float(
        sum(float(np.sum(keras.ops.convert_to_numpy(w))) for w in model.weights)
    )
    sums = [None] * world
    dist.all_gather_object(sums, checksum)
    result.update(
        steps=len(losses), final_loss=losses[-1], weights_equal=len(set(sums)) == 1
    )
    if rank == 0:
        os.makedirs(args.output_dir, exist_ok=True)
        path = os.path.join(args.output_dir, "model.keras")
        model.save(path)
        samples = model.generate(8, num_steps=4 if args.smoke else 32, seed=0)
        result["samples_finite"] = bool(np.isfinite(samples).all())
        with open(os.path.join(args.output_dir, "result.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if keras.backend.backend() != "torch":
        sys.exit("This example needs KERAS_BACKEND=torch.")
    main(parse_args())
