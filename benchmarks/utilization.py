"""How close a training step comes to this machine's dense float32 matmul rate.

1. FLOPs of one training step of the digits U-Net and the 32x32 U-Net (the
   presets of benchmarks/speed.py, consistency off): XLA's cost analysis of the
   compiled forward + backward pass of the preconditioned denoiser D on one batch
   (JAX; the optimizer and EMA updates, ~10 FLOPs per parameter, are added).
2. This machine's dense float32 matmul rate, 1 thread, per framework (a 1024^2
   matmul repeated; the best of 5 timings), each in its own process.
3. Utilization = FLOPs per step x steps/s / the median of the three matmul
   rates, with the steps/s
   of a `benchmarks/speed.py --sections train --json FILE` run (`--speed-json`).

Usage:
    python benchmarks/speed.py --sections train --nets digits8,img32 --json speed.json
    python benchmarks/utilization.py --speed-json speed.json
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_utils as bu  # noqa: E402
import speed  # noqa: E402

TAG = "UTIL_JSON"


def _flops_task(out):
    import jax
    import keras
    import numpy as np

    cfg = speed.PRESETS["default"]
    for net in ("digits8", "img32"):
        c = cfg[net]
        model = speed._keras_model(net, cfg)
        model.build()
        denoiser = model.denoiser
        x = bu.make_data(net, c["batch"], speed.SIGMA_N)
        sigma = np.full((c["batch"],), 0.5, "float32")
        trainable = [v.value for v in denoiser.trainable_variables]
        non_trainable = [v.value for v in denoiser.non_trainable_variables]

        def loss(t, nt, x, sigma):
            out, _ = denoiser.stateless_call(t, nt, [x + sigma[:, None, None, None], sigma],
                                             training=True)
            return keras.ops.mean((out - x) ** 2)

        compiled = jax.jit(jax.value_and_grad(loss)).lower(trainable, non_trainable, x, sigma).compile()
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
        params = speed._trainable_params(model)
        out.append(dict(net=net, batch=c["batch"], params=params,
                        flops=float(analysis["flops"]) + 10.0 * params))


def _matmul_task(backend, out, n=1024, repeats=20):
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n)).astype("float32")
    if backend == "torch":
        import torch

        ta = torch.from_numpy(a)
        run = lambda: torch.mm(ta, ta)  # noqa: E731
        sync = lambda r: None  # noqa: E731
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        ja = jnp.asarray(a)
        f = jax.jit(lambda m: m @ m)
        run = lambda: f(ja)  # noqa: E731
        sync = lambda r: r.block_until_ready()  # noqa: E731
    else:
        import tensorflow as tf

        tfa = tf.constant(a)
        f = tf.function(lambda m: tf.matmul(m, m))
        run = lambda: f(tfa)  # noqa: E731
        sync = lambda r: r.numpy()  # noqa: E731
    sync(run())
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats):
            r = run()
        sync(r)
        best = min(best, (time.perf_counter() - t0) / repeats)
    out.append(dict(backend=backend, gflops=2.0 * n**3 / best / 1e9))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--speed-json", required=False, help="records of speed.py --sections train")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--task", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.worker:
        out = []
        try:
            bu.setup_threads(args.threads, plain=args.worker == "plain")
            if args.task == "flops":
                _flops_task(out)
            else:
                _matmul_task("torch" if args.worker == "plain" else args.worker, out)
        finally:
            bu.flush(out, tag=TAG)
        return
    flops = bu.spawn(__file__, "jax", "flops", [], 1, 600, tag=TAG)
    rates = []
    for worker in ("jax", "plain", "tensorflow"):
        rates += bu.spawn(__file__, worker, "matmul", [], 1, 300, tag=TAG)
    print("dense float32 matmul, 1024^2, 1 thread (GFLOP/s): "
          + ", ".join(f"{r.get('backend', r.get('worker'))} {r.get('gflops', float('nan')):.1f}"
                      for r in rates))
    # The median of the three frameworks: JAX's reading varied between runs (213-321 GFLOP/s
    # on the 2-core machine, as if XLA used a second thread despite the single-thread flags).
    readings = [r["gflops"] for r in rates if "gflops" in r]
    peak = bu.median(readings)
    records = json.load(open(args.speed_json))["records"] if args.speed_json else []
    rows = []
    for f in flops:
        if "flops" not in f:
            continue
        row = [f"{f['net']} ({f['batch']})", f"{f['flops'] / 1e9:.3f}"]
        for b in ("plain_torch", "jax", "torch", "tensorflow"):
            sps = bu.value(records, "steps_per_s", backend=b, net=f["net"], kind="train") if records else None
            row.append("—" if not sps else f"{sps:.2f} / {100 * f['flops'] * sps / 1e9 / peak:.0f}%")
        rows.append(row)
    print(f"\nUtilization of a training step (consistency off) against the median matmul rate "
          f"{peak:.1f} GFLOP/s (against the highest reading, {max(readings):.1f}: multiply by "
          f"{peak / max(readings):.2f}): steps/s / % of that rate\n"
          + bu.table(["net (batch)", "GFLOP per step", "plain torch", "jax", "torch", "tensorflow"], rows))
    failures = [r for r in flops + rates if r.get("kind") == "failure"]
    if failures:
        print("failures:", failures)


if __name__ == "__main__":
    main()
