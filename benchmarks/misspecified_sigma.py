"""Misspecified sigma_n: training with sigma_n_used = f x sigma_true.

The data are noised at `sigma_true`; the model is told `f x sigma_true` for
f in (0.75, 0.9, 1.0, 1.1, 1.25). Two problems, both reusing the existing
benchmarks' models, budgets and metrics (no copies):

- the 2-D mixture (`benchmarks/mixture_2d.py`: 8 Gaussians, MLP, 3000 steps x
  256 by default): the ambient model without consistency sampled truncated, and
  the ambient + consistency model sampled full; SWD to held-out clean samples,
  within-cluster std (r < 0.3; the clean components have 0.05) and off-mode
  fraction, the mean over `--seeds`;
  closed-form references come first (no network): the exact posterior mean
  under the assumed level (what truncated sampling targets) and, for f <= 1,
  the distribution the ambient loss fits (the clean data plus the noise it was
  not told about);
- the digits (`benchmarks/digits_quality.py`: U-Net 16 channels, 800 steps x
  64 instead of 1600, to fit a CPU budget): by default the ambient model
  without consistency (cw = 0, cheaper per step), sampled truncated and
  full with the levels ending at 0.05 (as the main job); `--digits-models
  truncated,ambient_cons` adds the consistency model (full and truncated).
  Residual noise (calibrated on clean test digits: ~0 on clean data), FD_pca
  and FD_clf to the held-out clean digits (1438 samples).

Usage:
    KERAS_BACKEND=jax python benchmarks/misspecified_sigma.py --part mixture --seeds 0,1,2 --json mix.json
    KERAS_BACKEND=jax python benchmarks/misspecified_sigma.py --part digits --json dig.json
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
# This checkout's keras_ambient, whatever is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def exact_mixture_rows(mix, sigma_true, f, seed):
    """Closed-form references (no network) for sigma_n_used = f sigma_true.

    - exact truncated: `E[x0 | y]` computed as if the noise were `f sigma_true`
      (the posterior mean the truncated sampler targets) on `y = x0 + sigma_true z`;
    - ambient target, f <= 1: the distribution the ambient loss fits when told
      too little noise, `x0 + sqrt(sigma_true^2 - sigma_used^2) z` (the noise
      it is not told about stays in its "clean" data). For f > 1 no
      distribution convolved with N(0, sigma_used^2) gives the data.
    """
    gm, _, _, held_out = mix.make_data(seed, sigma_true)
    rng = np.random.default_rng(seed + 5)
    x0 = gm.sample(mix.NUM_EVAL, seed=seed + 6)
    y = x0 + sigma_true * rng.standard_normal(x0.shape)
    rows = [("exact truncated", gm.posterior_mean(y, f * sigma_true))]
    if f <= 1:
        extra = np.sqrt(max(sigma_true ** 2 - (f * sigma_true) ** 2, 0.0))
        rows.append(("ambient target", x0 + extra * rng.standard_normal(x0.shape)))
    return [(name, mix.sample_metrics(x, gm, held_out)) for name, x in rows]


def run_mixture(sigma_trues, factors, seeds, steps, models, out):
    mix = _load("mixture_2d")
    cfg = dict(mix.BASE, **mix.LOSS_KEYS)
    cfg["steps"] = steps
    modes = {"ambient_truncated": "truncated", "ambient_consistency_full": "full"}
    for sigma_true in sigma_trues:
        for seed in seeds:
            data = mix.make_data(seed, sigma_true)
            for f in factors:
                for name, metrics in exact_mixture_rows(mix, sigma_true, f, seed):
                    _emit({"problem": "mixture", "sigma_true": sigma_true, "factor": f, "seed": seed,
                           "model": name, "mode": "closed form", **metrics}, out)
                for kind in models:
                    mode = modes[kind]
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
                                                           extras=("[smin]", "(truncated)", "(full)[smin]"))
                base = {"problem": "digits", "sigma_true": sigma_true, "factor": f, "seed": seed,
                        "model": name, "steps": steps, "train_s": info["train_s"],
                        "total_s": time.perf_counter() - t0,
                        "steps_per_s": info["steps_per_s"]}
                if name == "truncated":
                    _emit(dict(base, mode="truncated", **evaluate(samples)), out)
                    _emit(dict(base, mode="full (ends at 0.05)", **evaluate(extra["(full)[smin]"])), out)
                else:
                    _emit(dict(base, mode="full (ends at 0.05)", **evaluate(extra["[smin]"])), out)
                    _emit(dict(base, mode="truncated", **evaluate(extra["(truncated)"])), out)


def print_tables(rows):
    mix = [r for r in rows if r["problem"] == "mixture"]
    if mix:
        print("\n2-D mixture (SWD to held-out clean; within-cluster std r<0.3, clean 0.05; off-mode):")
        print("| sigma_true | sigma_n used | model, sampling | SWD | within-cluster std | off-mode |")
        print("|---|---|---|---|---|---|")
        labels = {"ambient_truncated": "ambient, truncated", "ambient_consistency_full": "ambient + consistency, full",
                  "exact truncated": "exact posterior mean (closed form)",
                  "ambient target": "what the ambient loss fits (closed form)"}
        groups = {}
        for r in mix:
            groups.setdefault((r["sigma_true"], r["model"], r["factor"]), []).append(r)
        order = list(labels)
        for key in sorted(groups, key=lambda k: (k[0], order.index(k[1]), k[2])):
            rs = groups[key]
            mean = {m: float(np.mean([r[m] for r in rs])) for m in ("swd", "wcs_r", "off")}
            spread = f" ± {np.std([r['swd'] for r in rs]):.4f}" if len(rs) > 1 else ""
            print(f"| {key[0]:g} | {key[2]:g}x ({key[2] * key[0]:.3f}) | {labels[key[1]]} | "
                  f"{mean['swd']:.4f}{spread} | {mean['wcs_r']:.4f} | {mean['off']:.3f} |")
        seeds = sorted({r["seed"] for r in mix if r["mode"] != "closed form"})
        print(f"(trained rows: mean over seeds {seeds}; ± is the SWD's std over seeds)")
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
    p.add_argument("--steps", type=int, default=800, help="digits training steps per model")
    p.add_argument("--digits-models", default="truncated",
                   help="comma list of 'truncated' (cw=0) and 'ambient_cons'")
    p.add_argument("--mixture-models", default="ambient_truncated,ambient_consistency_full",
                   help="comma list of mixture models to train (empty: closed-form rows only)")
    p.add_argument("--seeds", default="0", help="comma list of seeds (mixture); the digits use the first")
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
    seeds = [int(v) for v in args.seeds.split(",")]
    rows = []
    t0 = time.perf_counter()
    try:
        if args.part in ("mixture", "both"):
            run_mixture([float(v) for v in args.mixture_sigma.split(",")], factors, seeds,
                        args.mixture_steps, [m for m in args.mixture_models.split(",") if m], rows)
        if args.part in ("digits", "both"):
            run_digits([float(v) for v in args.digits_sigma.split(",")], factors, seeds[0], args.steps,
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
