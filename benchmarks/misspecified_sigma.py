"""Misspecified sigma_n: training with sigma_n_used = f x sigma_true.

The data are noised at `sigma_true`; the model is told `f x sigma_true` for
f in (0.75, 0.9, 1.0, 1.1, 1.25). Two problems, both reusing the existing
benchmarks' models, budgets and metrics (no copies):

- the 2-D mixture (`benchmarks/mixture_2d.py`: 8 Gaussians, MLP, 3000 steps x
  256 by default): the ambient model without consistency sampled truncated, and
  the ambient + consistency model sampled full; SWD to held-out clean samples,
  within-cluster std (r < 0.3; the clean components have 0.05) and off-mode
  fraction;
- the digits (`benchmarks/digits_quality.py`: U-Net 16 channels, a reduced
  step count): the ambient model without consistency sampled truncated, and the
  ambient + consistency model sampled full with the levels ending at 0.05 (as
  the main job) and truncated; residual noise (calibrated on clean test
  digits: ~0 on clean data), FD_pca and FD_clf to the held-out clean digits.

Usage:
    KERAS_BACKEND=jax python benchmarks/misspecified_sigma.py --part mixture --json mix.json
    KERAS_BACKEND=jax python benchmarks/misspecified_sigma.py --part digits --steps 600 --json dig.json
    python benchmarks/misspecified_sigma.py --summarize mix.json,dig.json

Results: docs/choosing_defaults.md ("A misspecified sigma_n") and the README.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
FACTORS = (0.75, 0.9, 1.0, 1.1, 1.25)


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _emit(row, out):
    out.append(row)
    print("@@ " + json.dumps(row), flush=True)


def run_mixture(sigma_trues, factors, seed, steps, out):
    mix = _load("mixture_2d")
    cfg = dict(mix.BASE, **mix.LOSS_KEYS)
    cfg["steps"] = steps
    for sigma_true in sigma_trues:
        data = mix.make_data(seed, sigma_true)
        for f in factors:
            for kind, mode in (("ambient_truncated", "truncated"), ("ambient_consistency_full", "full")):
                t0 = time.perf_counter()
                r = mix.run_one(kind, dict(cfg, sigma_n=f * sigma_true), seed, data)
                _emit({"problem": "mixture", "sigma_true": sigma_true, "factor": f, "seed": seed,
                       "model": kind, "mode": mode, **r[mode], "d_err_sn": r["d_err"][1.0],
                       "train_s": time.perf_counter() - t0, "steps": r["steps"]}, out)


def run_digits(sigma_trues, factors, seed, steps, models, out):
    dq = _load("digits_quality")
    import keras_ambient as ka

    args = dq.parse_args(["--steps", str(steps), "--seeds", str(seed)])
    x_train = ka.data.load_digits("train")
    evaluate = dq.Evaluator()
    for sigma_true in sigma_trues:
        for f in factors:
            for name in models:
                t0 = time.perf_counter()
                samples, extra, info = dq.train_and_sample(name, sigma_true, seed, args, x_train,
                                                           model_sigma_n=f * sigma_true,
                                                           extras=("[smin]", "(truncated)"))
                base = {"problem": "digits", "sigma_true": sigma_true, "factor": f, "seed": seed,
                        "model": name, "steps": steps, "train_s": info["train_s"],
                        "total_s": time.perf_counter() - t0,
                        "steps_per_s": info["steps_per_s"]}
                if name == "truncated":
                    _emit(dict(base, mode="truncated", **evaluate(samples)), out)
                else:
                    _emit(dict(base, mode="full (ends at 0.05)", **evaluate(extra["[smin]"])), out)
                    _emit(dict(base, mode="truncated", **evaluate(extra["(truncated)"])), out)


def print_tables(rows):
    mix = [r for r in rows if r["problem"] == "mixture"]
    if mix:
        print("\n2-D mixture (SWD to held-out clean; within-cluster std r<0.3, clean 0.05; off-mode):")
        print("| sigma_true | sigma_n used | model, sampling | SWD | within-cluster std | off-mode |")
        print("|---|---|---|---|---|---|")
        for r in sorted(mix, key=lambda r: (r["sigma_true"], r["model"], r["factor"])):
            label = {"ambient_truncated": "ambient, truncated",
                     "ambient_consistency_full": "ambient + consistency, full"}[r["model"]]
            print(f"| {r['sigma_true']:g} | {r['factor']:g}x ({r['factor'] * r['sigma_true']:.3f}) | {label} | "
                  f"{r['swd']:.4f} | {r['wcs_r']:.4f} | {r['off']:.3f} |")
    dig = [r for r in rows if r["problem"] == "digits"]
    if dig:
        steps = sorted({r["steps"] for r in dig})
        print(f"\nDigits ({steps} steps x 64; residual noise calibrated on clean test digits; FD to held-out "
              "clean digits):")
        print("| sigma_true | sigma_n used | model, sampling | residual noise | FD_pca | FD_clf |")
        print("|---|---|---|---|---|---|")
        for r in sorted(dig, key=lambda r: (r["sigma_true"], r["model"], r["mode"], r["factor"])):
            label = {"truncated": "ambient", "ambient_cons": "ambient + consistency"}[r["model"]]
            print(f"| {r['sigma_true']:g} | {r['factor']:g}x ({r['factor'] * r['sigma_true']:.3f}) | "
                  f"{label}, {r['mode']} | {r['residual_noise']:.3f} | {r['fd_pca']:.3f} | "
                  f"{r['fd_classifier']:.3f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("mixture", "digits", "both"), default="both")
    p.add_argument("--factors", default=",".join(str(f) for f in FACTORS))
    p.add_argument("--mixture-sigma", default="0.2", help="comma list of true levels on the mixture")
    p.add_argument("--digits-sigma", default="0.2", help="comma list of true levels on the digits")
    p.add_argument("--mixture-steps", type=int, default=3000)
    p.add_argument("--steps", type=int, default=600, help="digits training steps per model")
    p.add_argument("--digits-models", default="truncated,ambient_cons",
                   help="comma list of 'truncated' (cw=0) and 'ambient_cons'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the rows to this file")
    p.add_argument("--summarize", default=None, help="comma list of --json files: print their tables")
    args = p.parse_args(argv)
    if args.summarize:
        rows = []
        for path in args.summarize.split(","):
            with open(path) as fh:
                rows += json.load(fh)
        print_tables(rows)
        return 0
    factors = [float(v) for v in args.factors.split(",")]
    rows = []
    t0 = time.perf_counter()
    try:
        if args.part in ("mixture", "both"):
            run_mixture([float(v) for v in args.mixture_sigma.split(",")], factors, args.seed,
                        args.mixture_steps, rows)
        if args.part in ("digits", "both"):
            run_digits([float(v) for v in args.digits_sigma.split(",")], factors, args.seed, args.steps,
                       [m for m in args.digits_models.split(",") if m], rows)
    finally:
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
    print(f"# wall time {time.perf_counter() - t0:.0f} s")
    print_tables(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
