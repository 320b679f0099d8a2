"""Quality on noisy digits: oracle vs naive vs ambient (truncated) vs ambient + consistency.

For each noise level sigma_n (default 0.1 and 0.2 on [-1, 1]) trains four
`ka.AmbientDiffusion` models with the built-in U-Net on `ka.data.load_digits("train")`:

- oracle:       clean data, plain loss (sigma_n=0, consistency_weight=0), mode full
                (trained once; it does not depend on sigma_n);
- naive:        noisy data, plain loss (sigma_n=0 given to the model, consistency_weight=0),
                mode full;
- truncated:    noisy data, sigma_n given, consistency_weight=0, mode truncated;
- ambient_cons: noisy data, sigma_n given, consistency_weight>0, mode full;

samples each, and prints for the samples
- a residual-noise estimate (`estimate_noise_level`, calibrated on the clean
  held-out digits: it reads ~0 on clean and ~sigma on noisy digits; the
  calibration line is printed first),
- distributional distances to the held-out clean digits (`"test"` split):
  Fréchet distance on 16 PCA features of the clean training digits (shape),
  Fréchet distance on the 64-unit hidden layer of a scikit-learn classifier
  trained on the clean training digits (FID-like), and the pixel-space sliced
  Wasserstein distance,
- the same figures for the clean and the noisy training data (references),
- wall time, compile time (first step) and steps per second per model.

Each backend runs in its own subprocess. Goals (issue 10): consistency + full
sampling with residual noise at most truncated's + 0.01 and FD_clf no larger than
truncated's; the summary prints them. The consistency model is also sampled in
truncated mode ("ambient_cons(truncated)").

Usage:
    python benchmarks/digits_quality.py                      # JAX, defaults
    python benchmarks/digits_quality.py --models oracle,truncated,ambient_cons --seeds 0 --json s0.json &
    python benchmarks/digits_quality.py --models oracle,truncated,ambient_cons --seeds 1 --json s1.json
    python benchmarks/digits_quality.py --summarize s0.json,s1.json       # README table (two seeds)
    python benchmarks/digits_quality.py --backends jax,torch,tensorflow --steps 30 \
        --sigmas 0.2 --models ambient_cons --num-samples 16  # steps/s on all backends
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

MODELS = ("oracle", "naive", "truncated", "ambient_cons")
_MARK = "@@RESULT "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="jax", help="comma list of jax,torch,tensorflow")
    p.add_argument("--sigmas", default="0.1,0.2", help="comma list of sigma_n levels")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {','.join(MODELS)}")
    p.add_argument("--seeds", default="0", help="comma list of seeds (data noise, init, training, sampling)")
    p.add_argument("--steps", type=int, default=1600, help="training steps per model")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=2e-3,
                   help="peak learning rate (cosine decay to 5%% of it, as in examples/noisy_digits.py)")
    p.add_argument("--consistency-weight", type=float, default=None,
                   help="consistency weight of ambient_cons (default: the library's)")
    p.add_argument("--weighting", default=None, choices=["edm", "unbiased"],
                   help="M3 weighting of the ambient models (default: the library's)")
    p.add_argument("--start-scale", type=float, default=None,
                   help="ConsistencyLoss start_scale (default: the library's)")
    p.add_argument("--num-draws", type=int, default=None,
                   help="ConsistencyLoss num_draws (default: the library's)")
    p.add_argument("--estimator", default=None, choices=["unbiased", "plug_in"],
                   help="ConsistencyLoss estimator (default: the library's)")
    p.add_argument("--cons-start", default=None, choices=["ambient", "data"],
                   help="ConsistencyLoss start point (default: the library's)")
    p.add_argument("--cons-num-steps", type=int, default=None,
                   help="ConsistencyLoss reverse steps (default: the library's)")
    p.add_argument("--chain", default=None, choices=["euler_maruyama", "ddpm"],
                   help="ConsistencyLoss chain (default: the library's)")
    p.add_argument("--batch-fraction", type=float, default=None,
                   help="ConsistencyLoss batch_fraction (default: the library's)")
    p.add_argument("--target", default=None, choices=["online", "ema"],
                   help="consistency_target of ambient_cons (default: the library's)")
    p.add_argument("--start-step", type=float, default=None,
                   help="consistency_start_step of ambient_cons, as a fraction of --steps")
    p.add_argument("--consistency-interval", type=int, default=None,
                   help="consistency_interval of ambient_cons (default: the library's; 1 = every "
                        "step, the default before 2026-12-07)")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay (default: the library's)")
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--num-res-blocks", type=int, default=1)
    p.add_argument("--num-samples", type=int, default=0,
                   help="samples per model (default 0: as many as the training digits, 1438, the "
                        "count of the reference rows: FD depends on the count)")
    p.add_argument("--sampling-steps", type=int, default=18)
    p.add_argument("--final-sigma", type=float, default=0.05,
                   help="also sample the full-sampling models with the levels ending at this sigma_min "
                        "(the last step jumps to D(x; sigma_min)); row suffix [smin]. 0 turns it off")
    p.add_argument("--json", default=None, help="also write all results to this JSON file")
    p.add_argument("--summarize", default=None,
                   help="comma list of --json files (e.g. seeds run side by side): print their "
                        "table and summary together, train nothing")
    p.add_argument("--subset-spread", action="store_true",
                   help="print how FD_pca of random subsets of the clean / noisy training digits varies "
                        "with the subset size (why samples and references need equal counts), train nothing")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _floats(s):
    return [float(v) for v in s.split(",") if v.strip()]


def _ints(s):
    return [int(v) for v in s.split(",") if v.strip()]


# ------------------------------------------------------------------ metrics
class Evaluator:
    """Residual noise and distances to the held-out clean digits."""

    def __init__(self):
        import keras_ambient as ka
        from keras_ambient.evaluation import images as ev
        from keras_ambient.evaluation import sliced_wasserstein_distance

        self.swd = sliced_wasserstein_distance

        self.ev = ev
        self.x_train, labels = ka.data.load_digits("train", return_labels=True)
        self.x_test = ka.data.load_digits("test")
        self.pca = ev.make_feature_extractor(self.x_train, "pca", num_features=16)
        self.clf = ev.make_feature_extractor(self.x_train, "classifier", num_features=64,
                                             labels=labels, seed=0)

    def __call__(self, images):
        ev = self.ev
        images = np.asarray(images, dtype="float32")
        return {
            "residual_noise": ev.estimate_noise_level(images, reference=self.x_test),
            "fd_pca": ev.frechet_image_distance(images, self.x_test, self.pca),
            "fd_classifier": ev.frechet_image_distance(images, self.x_test, self.clf),
            "sliced_w2": self.swd(images, self.x_test, seed=0, power=2),
            "range_out": float(np.mean(np.abs(images) > 1.05)),
        }


def subset_spread(sigma=0.2, sizes=(512, 1024, None), repeats=5, seed=0):
    """FD_pca (mean ± std over random subsets) of clean and noisy training digits."""
    import keras_ambient as ka
    from keras_ambient.evaluation import images as ev

    x_train, x_test = ka.data.load_digits("train"), ka.data.load_digits("test")
    pca = ev.make_feature_extractor(x_train, "pca", num_features=16)
    rng = np.random.default_rng(seed)
    print(f"FD_pca to the {len(x_test)} held-out clean digits of random training subsets ({repeats} each):")
    for size in sizes:
        n = len(x_train) if size is None else size
        clean, noisy = [], []
        for r in range(repeats):
            idx = rng.permutation(len(x_train))[:n]
            clean.append(ev.frechet_image_distance(x_train[idx], x_test, pca))
            y = ka.data.add_noise(x_train, sigma, seed=r)
            noisy.append(ev.frechet_image_distance(y[idx], x_test, pca))
        print(f"  {n:5d} images: clean {np.mean(clean):.3f} ± {np.std(clean):.3f}; "
              f"noisy (sigma_n {sigma:g}) {np.mean(noisy):.3f} ± {np.std(noisy):.3f}")


def calibration_line(sigmas, seed=0):
    import keras_ambient as ka
    from keras_ambient.evaluation import images as ev

    x_test = ka.data.load_digits("test")
    x_train = ka.data.load_digits("train")
    parts = []
    for s in sorted({0.0, 0.1, *sigmas}):
        # Test digits noised at s, measured with the calibration on clean test
        # digits (as used for samples), and train digits (an independent set).
        a = ev.estimate_noise_level(ka.data.add_noise(x_test, s, seed=seed + 101), reference=x_test)
        b = ev.estimate_noise_level(ka.data.add_noise(x_train, s, seed=seed + 102), reference=x_test)
        parts.append(f"sigma={s:g}: test {a:.3f}, train {b:.3f}")
    return "calibration of the residual-noise estimator (calibrated on clean test digits): " + "; ".join(parts)


# ------------------------------------------------------------------- worker
def _model_settings(name, sigma, args):
    if name == "oracle":
        return dict(data="clean", model_sigma_n=0.0, consistency_weight=0.0, mode="full")
    if name == "naive":
        return dict(data="noisy", model_sigma_n=0.0, consistency_weight=0.0, mode="full")
    if name == "truncated":
        return dict(data="noisy", model_sigma_n=sigma, consistency_weight=0.0, mode="truncated")
    weight = args.consistency_weight
    if weight is None:
        import inspect

        import keras_ambient as ka

        weight = inspect.signature(ka.AmbientDiffusion).parameters["consistency_weight"].default
    return dict(data="noisy", model_sigma_n=sigma, consistency_weight=weight, mode="full")


def train_and_sample(name, sigma, seed, args, x_train, model_sigma_n=None, extras=None):
    """Trains model `name` on the digits noised at `sigma`, samples it; `model_sigma_n`
    (default `sigma`) is the level the model is told (a misspecified one:
    benchmarks/misspecified_sigma.py); `extras` (default all) names the extra
    samplings to run among "[clip]", "[smin]", "(truncated)", "(truncated)[clip]" and
    "(full)[smin]" (a truncated model sampled full; not in the default)."""
    import keras

    import keras_ambient as ka

    from keras_ambient.utils.defaults import suggest_sigma_data

    cfg = _model_settings(name, sigma, args)
    if model_sigma_n is not None and cfg["model_sigma_n"] > 0:
        cfg["model_sigma_n"] = float(model_sigma_n)
    data = x_train if cfg["data"] == "clean" else ka.data.add_noise(x_train, sigma, seed=seed)
    keras.utils.set_random_seed(seed)
    # The clean data's std estimated from the data the model sees (as examples/noisy_digits.py).
    sigma_data = suggest_sigma_data(data, cfg["model_sigma_n"])
    net = ka.networks.UNet(image_shape=(8, 8, 1), base_channels=args.base_channels,
                           channel_multipliers=(1, 2), num_res_blocks=args.num_res_blocks, seed=seed)
    loss_kwargs = {"sigma_data": sigma_data, "ambient_loss": ka.losses.AmbientLoss(
        sigma_data=sigma_data, **({} if args.weighting is None else {"weighting": args.weighting}))}
    cons_kwargs = {k: v for k, v in (("start", args.cons_start), ("num_steps", args.cons_num_steps),
                                      ("chain", args.chain), ("batch_fraction", args.batch_fraction),
                                      ("start_scale", args.start_scale), ("num_draws", args.num_draws),
                                      ("estimator", args.estimator))
                   if v is not None}
    if cons_kwargs:
        loss_kwargs["consistency_loss"] = ka.losses.ConsistencyLoss(**cons_kwargs)
    if name == "ambient_cons":
        if args.target is not None:
            loss_kwargs["consistency_target"] = args.target
        if args.start_step is not None:
            loss_kwargs["consistency_start_step"] = int(args.start_step * args.steps)
        if args.consistency_interval is not None:
            loss_kwargs["consistency_interval"] = args.consistency_interval
    if args.ema_decay is not None:
        loss_kwargs["ema_decay"] = args.ema_decay
    model = ka.AmbientDiffusion(net, sigma_n=cfg["model_sigma_n"], consistency_weight=cfg["consistency_weight"],
                                seed=seed, **loss_kwargs)
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, decay_steps=args.steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    # Exactly `steps` batches: concatenated shuffles of the training set.
    rng = np.random.default_rng(seed)
    need = args.steps * args.batch_size
    idx = np.concatenate([rng.permutation(len(data)) for _ in range(need // len(data) + 1)])[:need]

    times = {}

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                times["first"] = time.perf_counter()

    t0 = time.perf_counter()
    hist = model.fit(data[idx], batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0,
                     callbacks=[Timer()])
    t1 = time.perf_counter()
    steps_per_s = (args.steps - 1) / max(t1 - times.get("first", t0), 1e-9) if args.steps > 1 else float("nan")
    num_samples = args.num_samples or len(x_train)
    samples = model.generate(num_samples, num_steps=args.sampling_steps, mode=cfg["mode"],
                             seed=seed, batch_size=num_samples)
    t2 = time.perf_counter()
    wanted = ("[clip]", "[smin]", "(truncated)", "(truncated)[clip]") if extras is None else extras
    extra = {}
    # The same model with the denoiser clipped to the data range [-1, 1] (as the main job samples).
    if "[clip]" in wanted:
        extra["[clip]"] = model.generate(num_samples, num_steps=args.sampling_steps, mode=cfg["mode"], seed=seed,
                                         batch_size=num_samples, clip_denoised=(-1, 1))
    if cfg["mode"] == "full" and args.final_sigma > 0 and "[smin]" in wanted:  # last level: sigma_min or larger
        extra["[smin]"] = model.generate(num_samples, num_steps=args.sampling_steps, mode="full", seed=seed,
                                         batch_size=num_samples, sigma_min=args.final_sigma)
    if cfg["mode"] != "full" and "(full)[smin]" in wanted:  # a truncated model sampled full, ending at final_sigma
        extra["(full)[smin]"] = model.generate(num_samples, num_steps=args.sampling_steps, mode="full", seed=seed,
                                               batch_size=num_samples, sigma_min=args.final_sigma or None)
    if name == "ambient_cons":  # the same model, truncated: is full sampling worth it?
        for suffix, clip in (("(truncated)", None), ("(truncated)[clip]", (-1, 1))):
            if suffix in wanted:
                extra[suffix] = model.generate(num_samples, num_steps=args.sampling_steps, mode="truncated",
                                               seed=seed, batch_size=num_samples, clip_denoised=clip)
    return samples, extra, {
        "model": name, "sigma_n": sigma if name != "oracle" else 0.0, "seed": seed, **cfg,
        "steps": args.steps, "train_s": t1 - t0, "first_step_s": times.get("first", t1) - t0,
        "steps_per_s": steps_per_s, "sample_s": t2 - t1,
        "final_loss": float(hist.history["loss"][-1]),
        "finite_samples": bool(np.all(np.isfinite(samples))),
    }


def worker(args):
    import keras

    import keras_ambient as ka

    backend = keras.backend.backend()
    x_train = ka.data.load_digits("train")
    evaluate = Evaluator()
    sigmas, models = _floats(args.sigmas), [m for m in args.models.split(",") if m]
    for seed in _ints(args.seeds):
        # References: the clean and noisy training data themselves.
        ref = dict(backend=backend, seed=seed, model="data:clean_train", sigma_n=0.0, **evaluate(x_train))
        print(_MARK + json.dumps(ref), flush=True)
        for sigma in sigmas:
            y = ka.data.add_noise(x_train, sigma, seed=seed)
            print(_MARK + json.dumps(dict(backend=backend, seed=seed, model="data:noisy_train",
                                          sigma_n=sigma, **evaluate(y))), flush=True)
        jobs = [("oracle", 0.0)] if "oracle" in models else []
        jobs += [(m, s) for s in sigmas for m in models if m != "oracle"]
        for name, sigma in jobs:
            print(f"[{backend}] training {name} sigma_n={sigma} seed={seed} ...", file=sys.stderr, flush=True)
            samples, extra, info = train_and_sample(name, sigma, seed, args, x_train)
            if info["finite_samples"]:
                info.update(evaluate(samples))
            print(_MARK + json.dumps(dict(backend=backend, **info)), flush=True)
            for suffix, x in extra.items():
                mode = "truncated" if suffix.startswith("(truncated)") else info["mode"]
                alt = dict(info, model=f"{name}{suffix}", mode=mode, **evaluate(x))
                print(_MARK + json.dumps(dict(backend=backend, **alt)), flush=True)


# ------------------------------------------------------------------- driver
def _fmt(v, width=9, digits=3):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return f"{'-':>{width}}"
    return f"{v:>{width}.{digits}f}"


def print_table(rows):
    head = (f"{'backend':<10} {'model':<30} {'sigma_n':>7} {'seed':>4} {'resid_noise':>11} {'FD_pca':>9} "
            f"{'FD_clf':>9} {'SW2':>9} {'|x|>1.05':>8} {'train_s':>8} {'1st_step':>8} {'steps/s':>8} {'sample_s':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['backend']:<10} {r['model']:<30} {r['sigma_n']:>7.2f} {r['seed']:>4} "
              f"{_fmt(r.get('residual_noise'), 11)} {_fmt(r.get('fd_pca'))} {_fmt(r.get('fd_classifier'))} "
              f"{_fmt(r.get('sliced_w2'), 9, 4)} {_fmt(r.get('range_out'), 8)} {_fmt(r.get('train_s'), 8, 1)} "
              f"{_fmt(r.get('first_step_s'), 8, 1)} {_fmt(r.get('steps_per_s'), 8, 2)} {_fmt(r.get('sample_s'), 8, 1)}")


METRICS = ("residual_noise", "fd_pca", "fd_classifier")


def seed_means(rows):
    """Mean over seeds of each metric, per (backend, model, sigma_n)."""
    groups = {}
    for r in rows:
        if "residual_noise" in r:
            groups.setdefault((r["backend"], r["model"], r["sigma_n"]), []).append(r)
    return {key: dict({m: float(np.mean([r[m] for r in rs])) for m in METRICS}, seeds=len(rs))
            for key, rs in groups.items()}


def print_summary(rows):
    """The issue's goals, on the mean over seeds: consistency-full against truncated (and the oracle)."""
    means = seed_means(rows)
    print("\nMeans over seeds (FD with as many images as the reference rows):")
    print(f"  {'backend':<10} {'model':<30} {'sigma_n':>7} {'seeds':>5} {'resid_noise':>11} "
          f"{'FD_pca':>7} {'FD_clf':>7}")
    for (b, m, s), v in sorted(means.items()):
        print(f"  {b:<10} {m:<30} {s:>7.2f} {v['seeds']:>5} {v['residual_noise']:>11.3f} "
              f"{v['fd_pca']:>7.3f} {v['fd_classifier']:>7.3f}")
    print("\nGoal check (means over seeds): ambient_cons (full) vs truncated; FD_clf vs the oracle")
    found = False
    for (b, m, s), r in sorted(means.items()):
        clip = m.endswith("[clip]")
        suffix = m[len("ambient_cons"):]  # "", "[clip]" or "[smin]" (full sampling ending at --final-sigma)
        t = means.get((b, "truncated[clip]" if clip else "truncated", s))
        if m not in ("ambient_cons", "ambient_cons[clip]", "ambient_cons[smin]") or t is None:
            continue
        found = True
        o = means.get((b, "oracle" + suffix, 0.0), {})

        def verdict(ok):
            return "met" if ok else "missed"

        label = {"[clip]": " clip_denoised=(-1, 1)", "[smin]": " levels ending at --final-sigma"}.get(suffix, "")
        print(f"  {b} sigma_n={s:g}{label}: residual noise "
              f"{r['residual_noise']:.3f} vs truncated {t['residual_noise']:.3f} "
              f"(goal <= +0.01: {verdict(r['residual_noise'] <= t['residual_noise'] + 0.01)}); "
              f"FD_clf {r['fd_classifier']:.3f} vs {t['fd_classifier']:.3f} "
              f"({verdict(r['fd_classifier'] <= t['fd_classifier'])}); "
              f"FD_clf / oracle {r['fd_classifier'] / o.get('fd_classifier', np.nan):.2f}"
              + (f" (goal <= 1.2: {verdict(r['fd_classifier'] <= 1.2 * o['fd_classifier'])})" if s == 0.1 and o else "")
              + f"; FD_pca {r['fd_pca']:.3f} vs {t['fd_pca']:.3f}")
    if not found:
        print("  (needs both models)")


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.subset_spread:
        os.environ.setdefault("KERAS_BACKEND", "jax")
        subset_spread()
        return 0
    if args.summarize:
        rows = []
        for path in args.summarize.split(","):
            with open(path) as f:
                rows += json.load(f)
        print_table(rows)
        print_summary(rows)
        return 0
    for m in args.models.split(","):
        if m and m not in MODELS:
            raise SystemExit(f"--models must be among {MODELS}. Received: {m!r}")
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in ("jax", "torch", "tensorflow"):
            raise SystemExit(f"--backends must be among jax, torch, tensorflow. Received: {b!r}")
    os.environ.setdefault("KERAS_BACKEND", backends[0])
    print(f"settings: {vars(args)}", flush=True)
    print(calibration_line(_floats(args.sigmas)), flush=True)
    rows = []
    for b in backends:
        env = dict(os.environ, KERAS_BACKEND=b)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker"] + [a for a in (argv or sys.argv[1:])]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            if line.startswith(_MARK):
                row = json.loads(line[len(_MARK):])
                rows.append(row)
                print(f"  [{b}] {row['model']} sigma_n={row['sigma_n']:g}: noise "
                      f"{_fmt(row.get('residual_noise'), 0)} FD_pca {_fmt(row.get('fd_pca'), 0)} "
                      f"steps/s {_fmt(row.get('steps_per_s'), 0, 2)}", flush=True)
            else:
                print(line, end="")
        rc = proc.wait()
        print(f"[{b}] worker exit status {rc}, wall time {time.perf_counter() - t0:.1f} s", flush=True)
    print()
    print_table(rows)
    print_summary(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
