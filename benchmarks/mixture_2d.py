"""Quality on a 2-D mixture: learning the CLEAN distribution from noisy data.

8 Gaussians on a circle of radius 1 (component std 0.05); the training data
are noised once at sigma_n (default: 0.1 and 0.2). Four models get the same
budget (steps, batch size, network, optimizer):

- oracle: clean data, sigma_n = 0, no consistency, sampled with mode="full";
- naive: noisy data, sigma_n = 0 (believes the data are clean), mode="full";
- ambient truncated: sigma_n given, consistency_weight = 0, mode="truncated";
- ambient + consistency full: sigma_n given, consistency_weight > 0 (library
  defaults unless overridden), mode="full".

Printed per model: sliced Wasserstein distance (W1, 256 directions) of 5000
samples to 5000 held-out clean samples, the mean within-cluster std (plain
nearest-centre assignment, and with a 0.3 assignment radius), the fraction of
samples more than 0.3 from every centre (off-mode), the RMS error of the
trained denoiser against the exact posterior mean E[x0|x_sigma] at sigma_n,
1.5 sigma_n and a few levels below, wall time and steps/s. Calibration rows
(clean and noisy data themselves, exact truncated sampling) come first.

Usage:
    python benchmarks/mixture_2d.py                        # JAX (KERAS_BACKEND), library defaults
    python benchmarks/mixture_2d.py --sigma-n 0.1 --seeds 0,1 --steps 6000
    python benchmarks/mixture_2d.py --sweep --only "ema;start"   # consistency settings, side by side
    python benchmarks/mixture_2d.py --backends jax,torch,tensorflow --steps 2000

Each backend in `--backends` runs in its own subprocess. Results: README and
docs/consistency.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SIGMA_NS = (0.1, 0.2)
OFF_MODE_RADIUS = 0.3
COMPONENT_STD = 0.05
NUM_TRAIN = 16384
NUM_EVAL = 5000
EPOCHS = 5
CHECK_FRACTIONS = (0.1, 0.5, 1.0, 1.5)  # D error at these multiples of sigma_n
MODELS = ("oracle", "naive", "ambient_truncated", "ambient_consistency_full")

# Training / sampling settings shared by the four models (not library defaults:
# the library has no defaults for these).
BASE = dict(steps=3000, batch=256, lr=2e-3, hidden=64, blocks=2, ema=None,
            sampler_steps=32, sigma_data=None)
# Loss settings: None means "the library default" (read from the source).
LOSS_KEYS = dict(weighting=None, max_weight_ratio=None, cw=None, start=None, num_steps=None,
                 s_dist=None, max_gap=None, sg_target=None, chain=None, spacing=None, start_scale=None,
                 batch_fraction=None, target=None, start_step=None, p_mean=None, p_std=None,
                 interval=None)


# ----------------------------------------------------------------- one run
def build_model(kind, cfg, seed):
    import keras

    import keras_ambient as ka

    sigma_n = cfg["sigma_n"] if kind.startswith("ambient") else 0.0
    sigma_data = cfg["sigma_data"] or 0.7  # std of the clean mixture per axis (~0.71)
    amb_kwargs = {"sigma_data": sigma_data}
    if cfg.get("weighting") is not None:
        amb_kwargs["weighting"] = cfg["weighting"]
    for key in ("max_weight_ratio", "p_mean", "p_std"):
        if cfg.get(key) is not None:
            amb_kwargs[key] = cfg[key]
    cons_kwargs = {}
    for key, arg in (("start", "start"), ("num_steps", "num_steps"), ("s_dist", "s_distribution"),
                     ("max_gap", "max_gap"), ("sg_target", "stop_gradient_target"), ("chain", "chain"),
                     ("spacing", "spacing"), ("batch_fraction", "batch_fraction"),
                     ("start_scale", "start_scale")):
        if cfg.get(key) is not None:
            cons_kwargs[arg] = cfg[key]
    cons = ka.losses.ConsistencyLoss(**cons_kwargs)
    kwargs = dict(sigma_n=sigma_n, sigma_data=sigma_data, ambient_loss=ka.losses.AmbientLoss(**amb_kwargs),
                  consistency_loss=cons, seed=seed)
    if kind == "ambient_consistency_full":
        if cfg.get("cw") is not None:
            kwargs["consistency_weight"] = cfg["cw"]
        if cfg.get("target") is not None:
            kwargs["consistency_target"] = cfg["target"]
        if cfg.get("start_step") is not None:
            kwargs["consistency_start_step"] = int(cfg["start_step"] * cfg["steps"])
        if cfg.get("interval") is not None:
            kwargs["consistency_interval"] = cfg["interval"]
    else:
        kwargs["consistency_weight"] = 0.0
    if cfg.get("ema") is not None:
        kwargs["ema_decay"] = cfg["ema"]
    net = ka.networks.MLPDenoiser(data_dim=2, hidden_units=cfg["hidden"], num_blocks=cfg["blocks"], seed=seed)
    model = ka.AmbientDiffusion(net, **kwargs)
    schedule = keras.optimizers.schedules.CosineDecay(cfg["lr"], decay_steps=cfg["steps"], alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    return model


class _Timer:
    def __init__(self):
        import keras

        class T(keras.callbacks.Callback):
            def on_train_begin(s, logs=None):
                s.times = [time.perf_counter()]

            def on_epoch_end(s, epoch, logs=None):
                s.times.append(time.perf_counter())
                s.logs = logs
        self.cb = T()


def denoiser_errors(model, gm, seed, sigma_n):
    """RMS of D(x; sigma) - E[x0|x_sigma] over x_sigma = x0 + sigma z (clean x0),
    at the levels CHECK_FRACTIONS x sigma_n (0.2 for a model of clean data)."""
    rng = np.random.default_rng(seed + 777)
    x0 = gm.sample(2000, seed=seed + 778)
    out = {}
    for f in CHECK_FRACTIONS:
        s = f * sigma_n
        x = (x0 + s * rng.standard_normal(x0.shape)).astype("float32")
        out[f] = float(np.sqrt(np.mean((model.denoise(x, s) - gm.posterior_mean(x, s)) ** 2)))
    return out


def sample_metrics(x, gm, held_out):
    from keras_ambient.evaluation.distribution import sliced_wasserstein_distance, within_cluster_std

    if not np.all(np.isfinite(x)):
        return {"swd": float("nan"), "wcs": float("nan"), "wcs_r": float("nan"), "off": float("nan")}
    dist = np.sqrt(((x[:, None, :] - gm.means[None]) ** 2).sum(-1)).min(axis=1)
    return {"swd": sliced_wasserstein_distance(x, held_out), "wcs": within_cluster_std(x, gm.means),
            "wcs_r": within_cluster_std(x, gm.means, max_radius=OFF_MODE_RADIUS),
            "off": float(np.mean(dist > OFF_MODE_RADIUS))}


def run_one(kind, cfg, seed, data):
    import keras

    gm, clean, noisy, held_out = data
    keras.utils.set_random_seed(seed)
    model = build_model(kind, cfg, seed)
    train = clean if kind == "oracle" else noisy
    # The fixed training set, reshuffled and repeated so that the budget is
    # EPOCHS epochs of steps/EPOCHS steps (few epochs: less per-epoch overhead;
    # the first epoch, which includes compilation, is left out of steps/s).
    epochs = EPOCHS
    steps_per_epoch = max(1, int(round(cfg["steps"] / epochs)))
    rng = np.random.default_rng(seed + 4242)
    reps = -(-steps_per_epoch * cfg["batch"] // len(train))
    idx = np.concatenate([rng.permutation(len(train)) for _ in range(reps)])[:steps_per_epoch * cfg["batch"]]
    train = train[idx]
    timer = _Timer().cb
    t0 = time.perf_counter()
    model.fit(train, batch_size=cfg["batch"], epochs=epochs, shuffle=False, verbose=0, callbacks=[timer])
    wall = time.perf_counter() - t0
    steps = epochs * steps_per_epoch
    # steps/s after the first epoch (excludes compilation).
    tail = timer.times[-1] - timer.times[1] if epochs > 1 else wall
    sps = (steps - steps_per_epoch) / tail if epochs > 1 else steps / wall
    res = {"kind": kind, "seed": seed, "steps": steps, "wall_s": wall, "steps_per_s": sps,
           "final_loss": float(timer.logs.get("loss", float("nan")))}
    modes = {"oracle": ["full"], "naive": ["full"], "ambient_truncated": ["truncated", "full"],
             "ambient_consistency_full": ["full", "truncated"]}[kind]
    for mode in modes:
        x = model.generate(NUM_EVAL, num_steps=cfg["sampler_steps"], mode=mode, seed=seed + 100,
                           batch_size=NUM_EVAL)
        res[mode] = sample_metrics(x, gm, held_out)
    res["main_mode"] = modes[0]
    res["d_err"] = denoiser_errors(model, gm, seed, cfg["sigma_n"])
    return res


def make_data(seed, sigma_n):
    import keras_ambient as ka

    gm = ka.data.GaussianMixture.circle(num_components=8, radius=1.0, std=COMPONENT_STD)
    clean = gm.sample(NUM_TRAIN, seed=1000 + seed)
    noisy = ka.data.add_noise(clean, sigma_n, seed=2000 + seed).astype("float32")
    held_out = gm.sample(NUM_EVAL, seed=3000 + seed)
    return gm, clean, noisy, held_out


def calibration(sigma_n, seed=0):
    gm, clean, noisy, held_out = make_data(seed, sigma_n)
    rng = np.random.default_rng(seed + 5)
    # Exact truncated sampling (docs/method.md §8): E[x0 | x0 + sigma_n z].
    x0 = gm.sample(NUM_EVAL, seed=seed + 6)
    trunc = gm.posterior_mean(x0 + sigma_n * rng.standard_normal(x0.shape), sigma_n)
    return {name: sample_metrics(x, gm, held_out)
            for name, x in (("clean data (independent set)", clean[:NUM_EVAL]),
                            (f"noisy data (sigma_n={sigma_n})", noisy[:NUM_EVAL]),
                            ("exact truncated sampling", trunc))}


# -------------------------------------------------------------- the sweep
def sweep_configs():
    """(name, kind, overrides) rows of the sweep; 'cons' rows are ambient + consistency full."""
    A, C = "ambient_truncated", "ambient_consistency_full"
    old_chain = {"chain": "ddpm", "spacing": "linear", "num_steps": 2, "batch_fraction": 1.0}
    rows = [
        ("oracle", "oracle", {}), ("naive", "naive", {}),
        ("ambient trunc (defaults)", A, {}),
        ("ambient trunc, edm weighting", A, {"weighting": "edm"}),
        ("ambient trunc, unbiased cap10", A, {"max_weight_ratio": 10.0}),
    ]
    for cw in (1.0, 10.0, 30.0, 100.0):
        rows.append((f"cons cw={cw:g}", C, {"cw": cw}))
    for cw in (1.0, 30.0):
        for name, over in (("old chain (2 linear M5, full batch)", old_chain), ("full batch", {"batch_fraction": 1.0}),
                           ("ema target", {"target": "ema"})):
            rows.append((f"cons cw={cw:g} {name}", C, dict(over, cw=cw)))
    for name, over in (("start_scale=1.5", {"start_scale": 1.5}), ("start at 50%", {"start_step": 0.5}),
                       ("em 4 steps", {"num_steps": 4}), ("edm weighting", {"weighting": "edm"})):
        rows.append((f"cons cw=30 {name}", C, dict(over, cw=30.0)))
    rows.append(("cons cw=10 start_scale=1.5", C, {"cw": 10.0, "start_scale": 1.5}))
    return rows


def _fmt_row(name, r):
    m = r[r["main_mode"]]
    other = [k for k in ("full", "truncated") if k in r and k != r["main_mode"]]
    extra = ""
    if other:
        o = r[other[0]]
        extra = f"  [{other[0]}: swd {o['swd']:.4f} wcs_r {o['wcs_r']:.4f} off {o['off']:.3f}]"
    d = r["d_err"]
    derr = " ".join(f"{d[f]:.4f}" for f in CHECK_FRACTIONS)
    return (f"{name:40s} sn{r['sigma_n']} s{r['seed']} {r['main_mode'][:5]:5s} swd {m['swd']:.4f} "
            f"wcs {m['wcs']:.4f} wcs_r {m['wcs_r']:.4f} off {m['off']:.3f} | D-err {derr} | "
            f"{r['steps_per_s']:.0f} st/s{extra}")


# ---------------------------------------------------------------- driver
def worker(args):
    cfg = dict(BASE, **LOSS_KEYS)
    cfg.update(steps=args.steps, batch=args.batch, lr=args.lr, hidden=args.hidden, blocks=args.blocks,
               sampler_steps=args.sampler_steps, ema=args.ema)
    for key in LOSS_KEYS:
        val = getattr(args, key, None)
        if val is not None:
            cfg[key] = val
    seeds = [int(s) for s in args.seeds.split(",")]
    sigma_ns = [float(v) for v in args.sigma_n.split(",")]
    import keras
    print(f"# backend {keras.backend.backend()}, steps {cfg['steps']}, batch {cfg['batch']}, seeds {seeds}, "
          f"sigma_n {sigma_ns}; D-err at {CHECK_FRACTIONS} x sigma_n", flush=True)
    if args.sweep:
        rows = sweep_configs()
        if args.only:
            rows = [r for r in rows if any(o in r[0] for o in args.only.split(";"))]
    else:
        rows = [(kind, kind, {}) for kind in args.models.split(",")]
    results = []
    for sigma_n in sigma_ns:
        for seed in seeds:
            data = make_data(seed, sigma_n)
            for name, kind, over in rows:
                c = dict(cfg, sigma_n=sigma_n, **over)
                r = run_one(kind, c, seed, data)
                r.update(name=name, sigma_n=sigma_n)
                results.append(r)
                print(_fmt_row(name, r), flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(dict(r, cfg=c), default=str) + "\n")
    return results


def print_calibration(sigma_ns):
    for sigma_n in sigma_ns:
        print(f"# calibration, sigma_n {sigma_n} (no training): SWD to held-out clean, within-cluster std "
              f"plain / r<0.3, off-mode fraction")
        for name, r in calibration(sigma_n).items():
            print(f"  {name:32s} swd {r['swd']:.4f}  wcs {r['wcs']:.4f}  wcs_r {r['wcs_r']:.4f}  off {r['off']:.3f}")


def print_summary(results):
    """Mean over seeds per (sigma_n, model) and the issue's goals."""
    print("\n# summary (mean over seeds): sigma_n | model | mode | SWD | wcs | wcs r<0.3 | off-mode | "
          "D-err at sigma_n | D-err at 1.5 sigma_n")
    table = {}
    for sigma_n in sorted({r["sigma_n"] for r in results}):
        for name in dict.fromkeys(r["name"] for r in results):
            rs = [r for r in results if r["sigma_n"] == sigma_n and r["name"] == name]
            if not rs:
                continue
            mode = rs[0]["main_mode"]
            row = {k: float(np.mean([r[mode][k] for r in rs])) for k in ("swd", "wcs", "wcs_r", "off")}
            row["d_sn"] = float(np.mean([r["d_err"][1.0] for r in rs]))
            row["d_15"] = float(np.mean([r["d_err"][1.5] for r in rs]))
            table[(sigma_n, name)] = row
            print(f"  {sigma_n:<5} | {name:40s} | {mode:9s} | {row['swd']:.4f} | {row['wcs']:.4f} | "
                  f"{row['wcs_r']:.4f} | {row['off']:.3f} | {row['d_sn']:.4f} | {row['d_15']:.4f}")
    for sigma_n in sorted({r["sigma_n"] for r in results}):
        tr, co = table.get((sigma_n, "ambient_truncated")), table.get((sigma_n, "ambient_consistency_full"))
        orc = table.get((sigma_n, "oracle"))
        if co:
            print(f"  D error of the consistency model at 0.5 / 1 / 1.5 sigma_n {sigma_n}: "
                  + " / ".join(f"{np.mean([r['d_err'][f] for r in results if r['sigma_n'] == sigma_n and r['name'] == 'ambient_consistency_full']):.4f}"
                               for f in (0.5, 1.0, 1.5)))
        if tr and co:
            print(f"  goals sigma_n {sigma_n}: consistency-full SWD {co['swd']:.4f} vs truncated {tr['swd']:.4f}; "
                  f"off-mode {co['off']:.3f} vs {tr['off']:.3f}; wcs r<0.3 {co['wcs_r']:.4f} "
                  f"(goal at 0.1: <= 0.06)")
        if tr and orc:
            print(f"  D error at sigma_n {sigma_n}: ambient {tr['d_sn']:.4f}, oracle {orc['d_sn']:.4f} "
                  f"(ratio {tr['d_sn'] / orc['d_sn']:.2f}, goal <= 1.5)")
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default=None, help="comma list; each runs in a subprocess")
    p.add_argument("--sigma-n", default=",".join(str(v) for v in SIGMA_NS), help="comma list of noise levels")
    p.add_argument("--models", default=",".join(MODELS), help="comma list of " + ",".join(MODELS))
    p.add_argument("--steps", type=int, default=BASE["steps"])
    p.add_argument("--batch", type=int, default=BASE["batch"])
    p.add_argument("--lr", type=float, default=BASE["lr"])
    p.add_argument("--hidden", type=int, default=BASE["hidden"])
    p.add_argument("--blocks", type=int, default=BASE["blocks"])
    p.add_argument("--ema", type=float, default=None, help="EMA decay (default: library default)")
    p.add_argument("--sampler-steps", type=int, default=BASE["sampler_steps"])
    p.add_argument("--seeds", default="0")
    p.add_argument("--sweep", action="store_true", help="run the consistency/weighting sweep")
    p.add_argument("--only", default=None, help="with --sweep: ';'-separated substrings of row names to run")
    p.add_argument("--jsonl", default=None, help="append per-run results to this file")
    p.add_argument("--weighting", choices=("edm", "unbiased"), default=None)
    p.add_argument("--max-weight-ratio", type=float, default=None)
    p.add_argument("--p-mean", type=float, default=None)
    p.add_argument("--cw", type=float, default=None, help="consistency_weight of the ambient+consistency model")
    p.add_argument("--start", choices=("ambient", "data"), default=None, help="ConsistencyLoss start")
    p.add_argument("--start-scale", type=float, default=None, help="ConsistencyLoss start_scale")
    p.add_argument("--chain", choices=("euler_maruyama", "ddpm"), default=None)
    p.add_argument("--spacing", choices=("edm", "geometric", "linear"), default=None)
    p.add_argument("--num-steps", type=int, default=None, help="ConsistencyLoss num_steps")
    p.add_argument("--batch-fraction", type=float, default=None)
    p.add_argument("--target", choices=("online", "ema"), default=None, help="consistency_target")
    p.add_argument("--start-step", type=float, default=None,
                   help="consistency_start_step as a fraction of --steps")
    p.add_argument("--interval", type=int, default=None,
                   help="consistency_interval (the consistency loss on one step in this many)")
    p.add_argument("--summary-line", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sigma_ns = [float(v) for v in args.sigma_n.split(",")]

    if args.backends:
        print_calibration(sigma_ns)
        passthrough = list(argv if argv is not None else sys.argv[1:])
        i = passthrough.index("--backends")
        passthrough = passthrough[:i] + passthrough[i + 2:]
        summary = []
        for backend in args.backends.split(","):
            env = dict(os.environ, KERAS_BACKEND=backend)
            env.setdefault("OMP_NUM_THREADS", "1")
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--summary-line"] + passthrough,
                                 env=env, capture_output=True, text=True)
            lines = out.stdout.splitlines()
            print("\n".join(ln for ln in lines if not ln.startswith("@@")), flush=True)
            if out.returncode != 0:
                print(f"# backend {backend} FAILED:\n{out.stderr[-3000:]}")
                continue
            summary += [(backend, json.loads(ln[2:]), time.perf_counter() - t0) for ln in lines if ln.startswith("@@")]
        print("\n# backend speed (steps/s after compilation; training wall time)")
        for backend, res, total in summary:
            per = "  ".join(f"{r['name']}: {r['steps_per_s']:.0f} st/s {r['wall_s']:.1f}s" for r in res)
            print(f"  {backend:10s} {per}  | process total {total:.0f}s")
        return
    if not args.summary_line:
        print_calibration(sigma_ns)
    results = worker(args)
    if args.summary_line:
        print("@@" + json.dumps([{k: r[k] for k in ("name", "steps_per_s", "wall_s")} for r in results]))
    print_summary(results)


if __name__ == "__main__":
    main()
