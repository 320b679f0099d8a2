"""Sampling speed of `AmbientDiffusion.generate` per Keras backend vs plain PyTorch.

Heun (EDM, deterministic; NFE = 2N - 1) with N = 18 and 40 steps, images/s of
a warm call (the first call, with compilation, is reported apart), for the
digits U-Net (8x8x1, multipliers (1, 2)) and the 32x32x3 U-Net of
benchmarks/speed.py (multipliers (1, 2, 2)), on each Keras backend, against
the plain-PyTorch Heun sampler of the same network (benchmarks/torch_reference.py,
tested equal to the Keras network). `old 18` times the library's previous
path (`predict_on_batch` with a NumPy round trip per network call) for
comparison.

Each backend runs in its own process; the set of workers is repeated
`--repeats` times interleaved (jax, torch, tensorflow, plain, jax, ...) and
medians are printed. Ratios are against plain PyTorch of the same repeat set.

Usage:
    python benchmarks/sampling_speed.py                          # CPU, ~10 min shared 2-core
    python benchmarks/sampling_speed.py --nets digits8 --repeats 3
    python benchmarks/sampling_speed.py --nets img32 --n 128 --dtype-policy mixed_bfloat16

This is a benchmark, not a test: nothing is asserted about the figures.
"""

import argparse
import json
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # bench_utils; this checkout's keras_ambient

import numpy as np  # noqa: E402

import bench_utils as bu  # noqa: E402

NETS = ("digits8", "img32")
STEPS = (18, 40)
SIGMA_N = 0.2
TAG = "SAMPLING_JSON"


def _time(fn, repeats=1):
    """Seconds of the first call, and the best of `repeats` warm calls."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    return first, min(warm)


def _keras_worker(args, out):
    import keras
    from keras import ops

    import keras_ambient as ka

    bu.setup_threads(args.threads)
    bu.generic_paths(args.worker)  # "torch-generic": the library's fast paths off
    backend = args.worker  # "torch-nhwc": channels-last U-Nets
    if args.dtype_policy != "float32":
        keras.config.set_dtype_policy(args.dtype_policy)
    for net in args.nets:
        n = _n(args, net)
        network = ka.networks.UNet(**bu.unet_kwargs(net, args.base_channels, args.worker), seed=0)
        model = ka.AmbientDiffusion(network=network, sigma_n=SIGMA_N, seed=0,
                                    data_shape=bu.data_shape(net))
        model.build()
        rec = dict(backend=backend, net=net, n=n, policy=args.dtype_policy)
        for steps in STEPS:
            first, dt = _time(lambda: model.generate(n, num_steps=steps, seed=0,
                                                     batch_size=n))
            out.append(dict(rec, variant=f"generate {steps}", nfe=2 * steps - 1,
                            images_per_s=n / dt, first_call_s=first))
            bu.flush(out, TAG)
        if args.old:
            # The previous path: predict_on_batch + a NumPy round trip per call.
            den = model.ema_denoiser

            def old_fn(x, sigma):
                x = ops.convert_to_numpy(x)
                return den.predict_on_batch([x, np.full((len(x),), sigma, "float32")])

            sigmas = ka.samplers.edm_sigmas(18)
            x0 = float(sigmas[0]) * np.random.default_rng(0).normal(
                size=(n,) + bu.data_shape(net)).astype("float32")
            first, dt = _time(lambda: ops.convert_to_numpy(
                ka.samplers.sample_heun(old_fn, x0, sigmas)))
            out.append(dict(rec, variant="old 18", nfe=35, images_per_s=n / dt,
                            first_call_s=first))
            bu.flush(out, TAG)
        keras.backend.clear_session()


def _plain_worker(args, out):
    import torch
    import torch_reference as ref

    bu.setup_threads(args.threads, plain=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for net in args.nets:
        n = _n(args, net)
        tnet = ref.build_net(net, base_channels=args.base_channels).to(device).eval()
        shape = bu.data_shape(net)
        x0 = torch.randn((n, shape[2], shape[0], shape[1]), device=device)
        for steps in STEPS:
            sigmas = ref.edm_sigmas(steps)

            def run():
                if args.dtype_policy == "mixed_bfloat16":
                    with torch.autocast(device, dtype=torch.bfloat16):
                        out_x = ref.sample_heun(tnet, float(sigmas[0]) * x0, sigmas)
                else:
                    out_x = ref.sample_heun(tnet, float(sigmas[0]) * x0, sigmas)
                out_x.float().cpu().numpy()  # to the host, as generate returns NumPy

            first, dt = _time(run)
            out.append(dict(backend="plain_torch", net=net, n=n, variant=f"generate {steps}",
                            nfe=2 * steps - 1, images_per_s=n / dt, first_call_s=first,
                            device=device, params=ref.num_params(tnet),
                            policy=args.dtype_policy))
            bu.flush(out, TAG)


def _n(args, net):
    return args.n if args.n else (32 if net == "digits8" else 8)


def report(records, args):
    backends = list(args.backends)
    header = ["net (images/call)", "variant", "NFE", "plain torch"]
    header += [f"{b} (ratio)" for b in backends]
    rows = []
    variants = [f"generate {s}" for s in STEPS] + (["old 18"] if args.old else [])
    for net in args.nets:
        for variant in variants:
            ref_variant = "generate 18" if variant == "old 18" else variant
            ref = bu.value(records, "images_per_s", backend="plain_torch", net=net,
                           variant=ref_variant)
            row = [f"{net} ({_n(args, net)})", variant,
                   str(2 * int(variant.split()[1]) - 1), bu.fmt(ref)]
            for b in backends:
                v = bu.value(records, "images_per_s", backend=b, net=net, variant=variant)
                row.append(f"{bu.fmt(v)} ({bu.fmt(v / ref, 2)})" if v and ref else bu.fmt(v))
            rows.append(row)
    first_rows = []
    for net in args.nets:
        for variant in variants:
            first_rows.append([net, variant] + [
                bu.fmt(bu.value(records, "first_call_s", backend=b, net=net, variant=variant), 2)
                for b in backends + ["plain_torch"]])
    text = [f"Sampling, Heun, images/s of a warm call (median of repeats), policy "
            f"{args.dtype_policy}; ratio = keras backend / plain PyTorch "
            "('old 18': the previous predict_on_batch path, vs plain 18)",
            bu.table(header, rows),
            "\nFirst call (s, incl. compilation)",
            bu.table(["net", "variant"] + backends + ["plain torch"], first_rows)]
    errors = [r for r in records if "error" in r]
    if errors:
        text.append("\nErrors / failures:")
        text += [f"- {r.get('backend')} {r.get('task', '')}: {r['error']}" for r in errors]
    return "\n".join(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(bu.KERAS_BACKENDS),
                        help="Keras backends; 'torch-nhwc' (etc.): U-Nets built channels last")
    parser.add_argument("--nets", default=",".join(NETS), help=f"subset of {','.join(NETS)}")
    parser.add_argument("--n", type=int, default=None,
                        help="images per call (default: digits8 32, img32 8)")
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats")
    parser.add_argument("--no-old", dest="old", action="store_false",
                        help="skip the previous predict_on_batch path")
    parser.add_argument("--dtype-policy", default="float32",
                        choices=("float32", "mixed_bfloat16", "mixed_float16"))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    parser.add_argument("--timeout", type=float, default=900, help="per-worker timeout (s)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--task", default="sampling", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.backends = [b for b in args.backends.split(",") if b]
    args.nets = [s for s in args.nets.split(",") if s]
    if args.worker:
        out = []
        try:
            (_plain_worker if args.worker == "plain" else _keras_worker)(args, out)
        finally:
            bu.flush(out, TAG)
        return out
    argv = ["--nets", ",".join(args.nets), "--base-channels", str(args.base_channels),
            "--dtype-policy", args.dtype_policy] + ([] if args.old else ["--no-old"])
    argv += ["--n", str(args.n)] if args.n else []
    records, t_start = [], time.perf_counter()
    for rep in range(args.repeats):
        print(f"repeat {rep + 1}/{args.repeats}", flush=True)
        for worker in args.backends + ["plain"]:
            for r in bu.spawn(__file__, worker, "sampling", argv, args.threads, args.timeout,
                              tag=TAG):
                r["repeat"] = rep
                records.append(r)
    total = time.perf_counter() - t_start
    print("\n" + report(records, args))
    print(f"\n(total {total:.0f} s, {args.repeats} repeat(s), {args.threads} thread(s) per worker)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), records=records, total_s=total), f, indent=1)
    return records


if __name__ == "__main__":
    main()
