"""What `AmbientDiffusion.fit`'s divergence check costs per step.

`fit` adds `ka.callbacks.TerminateOnNonFinite`, which reads the logged loss and
`bad_samples` every batch. It is `async_safe`, so Keras keeps dispatching steps
while it reads them. This script times, side by side in one process with
interleaved repeats, the steps/s of `fit` on the digits U-Net with
- `default`: the callback `fit` adds (async),
- `sync`: the same checks run synchronously (what a callback without
  `async_safe` costs: a host sync every batch; forced here with a mid-epoch
  weight check too rare to run),
- `none`: Keras's `fit` with no callback of ours (the floor).
The first `fit` compiles and is not timed.

    KERAS_BACKEND=jax python benchmarks/fit_overhead.py --steps 200 --repeats 2
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_ambient as ka  # noqa: E402  (before keras: chooses a backend)
import keras  # noqa: E402
import numpy as np  # noqa: E402

MODES = ("default", "sync", "none")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="timed steps per fit")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of every mode")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--consistency-weight", type=float, default=None,
                   help="default: the library's (0 times the ambient step only)")
    args = p.parse_args(argv)

    x = ka.data.load_digits("train")
    y = ka.data.add_noise(x, 0.2, seed=0)
    n = args.steps * args.batch_size
    data = np.concatenate([y] * (n // len(y) + 1))[:n]
    net = ka.networks.UNet(image_shape=(8, 8, 1), base_channels=args.base_channels,
                           channel_multipliers=(1, 2), seed=0)
    kwargs = {} if args.consistency_weight is None else {"consistency_weight": args.consistency_weight}
    model = ka.AmbientDiffusion(net, sigma_n=0.2, seed=0, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))

    def run(mode):
        fit_kwargs = dict(batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
        start = time.perf_counter()
        if mode == "none":
            keras.Model.fit(model, data, **fit_kwargs)  # Keras's fit: no callback, no input checks
        elif mode == "sync":
            check = ka.callbacks.TerminateOnNonFinite(weights_check_freq=10 ** 9)
            model.fit(data, callbacks=[check], **fit_kwargs)
        else:
            model.fit(data, **fit_kwargs)
        return args.steps / (time.perf_counter() - start)

    run("default")  # compiles
    rates = {m: [] for m in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            rates[mode].append(run(mode))
    print(f"backend {keras.backend.backend()}, digits U-Net {args.base_channels}, batch {args.batch_size}, "
          f"consistency_weight {model.consistency_weight:g}, {args.steps} steps per fit, "
          f"{args.repeats} interleaved repeats")
    print(f"{'fit':<10}{'steps/s (median)':>18}{'repeats':>28}{'vs none':>10}")
    floor = float(np.median(rates["none"]))
    for mode in MODES:
        med = float(np.median(rates[mode]))
        reps = ", ".join(f"{r:.1f}" for r in rates[mode])
        print(f"{mode:<10}{med:>18.1f}{reps:>28}{med / floor:>10.2f}")


if __name__ == "__main__":
    main()
