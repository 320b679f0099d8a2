"""Cost of the consistency loss per training step (digits U-Net, every backend).

Times `fit` steps of the digits U-Net (base 16, multipliers (1, 2), 1 res
block) with `consistency_weight=0` (ambient only) and with the consistency
loss (the library's defaults, or the given sub-batch fractions and
`consistency_interval`s), side by side and interleaved (`--repeats` rounds of
ambient / consistency), each backend in its own subprocess, and prints the
ratio of step times. With an interval k > 1 a step's time is the mean over
the run's steps, one in k of them with the loss. Compilation (the first
epoch) is excluded.

Usage:
    python benchmarks/consistency_cost.py                       # jax, torch, tensorflow
    python benchmarks/consistency_cost.py --backends jax --batch-size 64 --repeats 3
    python benchmarks/consistency_cost.py --fractions 1.0,0.25,0.125   # sub-batch sizes
    python benchmarks/consistency_cost.py --intervals 1,2,3            # consistency on one step in k
    python benchmarks/consistency_cost.py --backends torch --generic   # also without the fast paths
"""

import argparse
import json
import os
import subprocess
import sys
import time

_MARK = "@@"


def worker(args):
    import keras
    import numpy as np

    import keras_ambient as ka
    from keras_ambient.utils import backend_fast_paths

    y = ka.data.add_noise(ka.data.load_digits("train"), 0.2, seed=0)
    rng = np.random.default_rng(0)
    data = y[rng.integers(0, len(y), args.steps * args.batch_size)]
    # (name, consistency_weight, batch_fraction, consistency_interval); every fraction
    # at each interval (the per-step time of an interval k > 1 is its mean over steps).
    settings = [("ambient", 0.0, None, 1)]
    for k in args.intervals:
        for f in args.fractions:
            name = f"consistency (batch_fraction {f:g}" + (f", interval {k})" if k > 1 else ")")
            settings.append((name, 1.0, f, k))
    if args.generic:
        # The same consistency model with utils/backend_fast_paths off: the chain's
        # network calls go through Keras's eager call (on torch: no traced call).
        k = args.intervals[0]
        settings.append((f"consistency (batch_fraction {args.fractions[0]:g}"
                         + (f", interval {k}" if k > 1 else "") + ", generic path)", 1.0, args.fractions[0], k))
    models = {}
    for name, cw, fraction, interval in settings:
        keras.utils.set_random_seed(0)
        net = ka.networks.UNet(image_shape=(8, 8, 1), base_channels=16, channel_multipliers=(1, 2),
                               num_res_blocks=1, seed=0)
        kwargs = {} if fraction is None else {"consistency_loss": ka.losses.ConsistencyLoss(batch_fraction=fraction)}
        model = ka.AmbientDiffusion(net, sigma_n=0.2, consistency_weight=cw, seed=0,
                                    consistency_interval=interval, **kwargs)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(data[: 2 * args.batch_size], batch_size=args.batch_size, epochs=1, verbose=0)  # compile
        models[name] = model
    times = {name: [] for name, *_ in settings}
    for _ in range(args.repeats):
        for name, *_ in settings:
            backend_fast_paths.set_enabled("generic path" not in name)
            t0 = time.perf_counter()
            models[name].fit(data, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
            times[name].append((time.perf_counter() - t0) / args.steps)
        backend_fast_paths.set_enabled(True)
    print(_MARK + json.dumps({"backend": keras.backend.backend(), "times": times}), flush=True)


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="jax,torch,tensorflow")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=150, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--fractions", default="default",
                   help="comma list of ConsistencyLoss batch_fraction values ('default': the library's)")
    p.add_argument("--intervals", default="default",
                   help="comma list of AmbientDiffusion consistency_interval values ('default': the library's)")
    p.add_argument("--generic", action="store_true",
                   help="also time the first fraction with utils/backend_fast_paths off")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def run(argv=None):
    args = _parse().parse_args(argv)
    if args.fractions == "default":
        os.environ.setdefault("KERAS_BACKEND", "jax")
        from keras_ambient.losses import ConsistencyLoss

        args.fractions = str(ConsistencyLoss().batch_fraction)
    if args.intervals == "default":
        os.environ.setdefault("KERAS_BACKEND", "jax")
        import inspect

        from keras_ambient import AmbientDiffusion

        args.intervals = str(inspect.signature(AmbientDiffusion).parameters["consistency_interval"].default)
    fractions = [float(f) for f in args.fractions.split(",")]
    intervals = [int(k) for k in args.intervals.split(",")]
    if args.worker:
        args.fractions, args.intervals = fractions, intervals
        worker(args)
        return 0
    print(f"# digits U-Net (16, (1, 2), 1 res block), batch {args.batch_size}, {args.steps} timed steps x "
          f"{args.repeats} interleaved repeats; ms per step (each repeat) and ratio to ambient-only")
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   TF_CPP_MIN_LOG_LEVEL="3")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--repeats", str(args.repeats), "--fractions", args.fractions,
               "--intervals", args.intervals] + (["--generic"] if args.generic else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
        if proc.returncode != 0 or not lines:
            print(f"  {backend}: FAILED\n{proc.stderr[-2000:]}")
            continue
        res = json.loads(lines[-1][len(_MARK):])
        base = min(res["times"]["ambient"])
        for name, ts in res["times"].items():
            ms = ", ".join(f"{1000 * t:.1f}" for t in ts)
            print(f"  {backend:10s} {name:46s} {ms} ms  ratio {min(ts) / base:.2f}x (best of repeats)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run())
