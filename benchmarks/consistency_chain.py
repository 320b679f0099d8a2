"""How honest is the consistency loss's reverse chain? (docs/method.md §4)

Drives `ka.losses.ConsistencyLoss` with the EXACT denoiser of the 2-D mixture
(8 Gaussians on a circle, std 0.05; closed form of docs/method.md §8). The
exact denoiser is a martingale along the true reverse process, so for an
honest chain the M4 estimator averages to zero. Its mean over N samples is an
unbiased estimate of `mean_x ||E_chain[D(x_s; s) | x_t] - D(x_t; t)||^2 / dim`;
the script prints `bias = sqrt(max(mean, 0))` (RMS per coordinate) and
`z = mean / standard error` (|z| < 3: indistinguishable from an honest chain
at this N). Start: the training sample y at t = sigma_n.

Usage:
    KERAS_BACKEND=jax python benchmarks/consistency_chain.py
    python benchmarks/consistency_chain.py --sigma-n 0.1 --num 100000
"""

import argparse
import math
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_ambient as ka  # noqa: E402

# (chain, spacing, num_steps) rows; the first is the old default.
CHAINS = [
    ("ddpm", "linear", 1), ("ddpm", "linear", 2), ("ddpm", "linear", 4),
    ("ddpm", "edm", 2), ("ddpm", "edm", 3), ("ddpm", "edm", 4), ("ddpm", "edm", 6),
    ("euler_maruyama", "edm", 3), ("euler_maruyama", "edm", 4), ("euler_maruyama", "edm", 5),
    ("euler_maruyama", "edm", 7), ("euler_maruyama", "edm", 10),
    ("ddpm", "geometric", 8), ("ddpm", "geometric", 32),
]
LEVELS = (0.02, 0.05, 0.1, 0.15)


def exact_denoiser(gm):
    """`D([x, sigma])` from the closed form (eager, NumPy inside)."""

    def D(inputs, training=None):
        x = np.asarray(ops.convert_to_numpy(inputs[0]), "float64")
        sigma = np.asarray(ops.convert_to_numpy(inputs[1]), "float64").reshape(-1)
        return ops.convert_to_tensor(gm.posterior_mean(x, sigma), dtype="float32")

    return D


class FixedLevel(ka.losses.ConsistencyLoss):
    """`s` fixed (as a fraction of nothing: an absolute level) for the table."""

    def __init__(self, level, **kwargs):
        super().__init__(**kwargs)
        self.level = level

    def sample_lower_level(self, t, seed):
        return ops.full(ops.shape(t), self.level, dtype="float32")


def measure(loss, D, y, sigma_n, seed):
    per_sample = np.asarray(ops.convert_to_numpy(loss(D, y, sigma_n, seed=keras.random.SeedGenerator(seed))))
    mean, se = per_sample.mean(), per_sample.std() / math.sqrt(len(per_sample))
    return math.sqrt(max(mean, 0.0)), mean / se


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sigma-n", type=float, default=0.2)
    p.add_argument("--num", type=int, default=200_000, help="training samples y (start points)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    gm = ka.data.GaussianMixture.circle(8, 1.0, 0.05)
    y = ka.data.add_noise(gm.sample(args.num, seed=args.seed), args.sigma_n, seed=args.seed + 1)
    sigma_n = np.full((args.num,), args.sigma_n, "float32")
    D = exact_denoiser(gm)
    print(f"# backend {keras.backend.backend()}; exact denoiser of 8 Gaussians (std 0.05), start y at "
          f"t = sigma_n = {args.sigma_n}, N = {args.num}; bias = RMS per coordinate (z = mean/SE)")
    head = " | ".join(f"s={s:<13}" for s in LEVELS)
    print(f"{'chain':30s} evals | {head} | s ~ default law")
    for chain, spacing, steps in CHAINS:
        t0 = time.perf_counter()
        kw = dict(chain=chain, spacing=spacing, num_steps=steps, batch_fraction=1.0)
        cells = [measure(FixedLevel(level, **kw), D, y, sigma_n, args.seed + 2) for level in LEVELS]
        cells.append(measure(ka.losses.ConsistencyLoss(**kw), D, y, sigma_n, args.seed + 3))
        txt = " | ".join(f"{b:.4f} (z {z:5.1f})" for b, z in cells)
        # Network evaluations per sample: target, steps - 1 chain moves x 2 draws, final x 2.
        evals = 1 + 2 * (steps - 1) + 2
        print(f"{chain + ' ' + spacing + ' ' + str(steps):30s} {evals:5d} | {txt}   "
              f"[{time.perf_counter() - t0:.0f}s]", flush=True)


if __name__ == "__main__":
    main()
