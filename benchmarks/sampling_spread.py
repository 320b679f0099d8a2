"""How much the digits metrics of ONE trained model vary between sample sets.

A Fréchet distance computed from one set of samples is a random number: two
sample sets of the same model, drawn with different sampling seeds, differ in
which digits they hold. This script loads a model saved by the main job
(`examples/noisy_digits.py`, `model.keras`), draws `--sampling-seeds` sets of
as many samples as there are training digits in each mode, and prints the
residual noise and the Fréchet distances (PCA-16 and classifier features, to
the held-out clean digits, as the main job measures them) per set, their mean
and standard deviation, and the same figures for the noisy training data
under several noise draws.

Modes: `full` (levels from 80 down to `--final-sigma`, then D), `full@0.002`
(the model's default last level), `truncated`, and with `--churn-steps N`
`full+churn` (Heun with N steps and EDM's stochastic churn, `--s-churn`
between `--s-tmin` and `--s-tmax`). Sets with the same sampling seed start
from the same noise, so the modes are compared pair by pair.

Usage:
    bash scripts/run_demo.sh                     # writes outputs/noisy_digits/model.keras
    KERAS_BACKEND=jax python benchmarks/sampling_spread.py outputs/noisy_digits/model.keras
    KERAS_BACKEND=jax python benchmarks/sampling_spread.py outputs/noisy_digits/model.keras \
        --churn-steps 40 --first-seed 5                  # stochastic sampling, sets 5-9
"""

import argparse
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_utils

import numpy as np  # noqa: E402

import keras_ambient as ka  # noqa: E402
from keras_ambient.evaluation import images as ev  # noqa: E402

import bench_utils as bu  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a .keras file written by examples/noisy_digits.py")
    p.add_argument("--sampling-seeds", type=int, default=5)
    p.add_argument("--final-sigma", type=float, default=0.05)
    p.add_argument("--noise-draws", type=int, default=3, help="noise draws of the training data")
    p.add_argument("--first-seed", type=int, default=0, help="first sampling seed")
    p.add_argument("--churn-steps", type=int, default=0,
                   help="if > 0, also a mode 'full+churn': Heun with this many steps and EDM's churn")
    p.add_argument("--s-churn", type=float, default=40.0)
    p.add_argument("--s-tmin", type=float, default=0.05)
    p.add_argument("--s-tmax", type=float, default=50.0)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def class_weights(predicted, target):
    """Per-image weights (summing to 1) that give a set whose images carry the
    class labels `predicted` the class proportions `target`."""
    found = np.bincount(predicted, minlength=len(target)) / len(predicted)
    weights = (np.asarray(target) / np.maximum(found, 1e-12))[predicted]
    return weights / weights.sum()


def weighted_statistics(features, weights):
    """Weighted mean and (unbiased, reliability-weighted) covariance of `features`
    `(n, d)`; equal weights give `ka.evaluation.gaussian_statistics`."""
    features = np.asarray(features, dtype=np.float64)
    mean = weights @ features
    centred = features - mean
    cov = (centred * weights[:, None]).T @ centred / (1.0 - np.sum(weights ** 2))
    return mean, cov


def main(args):
    model = ka.models.load_model(args.model)
    x_train, labels = ka.data.load_digits("train", return_labels=True)
    x_test = ka.data.load_digits("test")
    pca = ev.make_feature_extractor(x_train, "pca", num_features=16)
    clf = ev.make_feature_extractor(x_train, "classifier", num_features=64, labels=labels, seed=0)

    classifier = clf.classifier  # the classifier behind the FD_clf features, for its labels
    target = np.bincount(labels, minlength=10) / len(labels)
    test_stats = ev.gaussian_statistics(pca(x_test))

    def measure(images):
        predicted = classifier.predict(np.asarray(images).reshape(len(images), -1))
        found = np.bincount(predicted, minlength=10) / len(predicted)
        balanced = weighted_statistics(pca(images), class_weights(predicted, target))
        return [ev.estimate_noise_level(images, reference=x_test),
                ev.frechet_image_distance(images, x_test, pca),
                ev.frechet_image_distance(images, x_test, clf),
                0.5 * float(np.abs(found - target).sum()),
                ev.frechet_distance(*balanced, *test_stats)]

    n = len(x_train)
    modes = {"full": dict(mode="full", sigma_min=args.final_sigma),
             "full@0.002": dict(mode="full", sigma_min=0.002),
             "truncated": dict(mode="truncated")}
    if args.churn_steps:
        modes["full+churn"] = dict(mode="full", sigma_min=args.final_sigma, num_steps=args.churn_steps,
                                   s_churn=args.s_churn, s_tmin=args.s_tmin, s_tmax=args.s_tmax)
    rows = {m: [] for m in modes}
    names = ("resid_noise", "FD_pca", "FD_clf", "class_tv", "FD_pca_bal")
    print(f"{'set':<28} " + " ".join(f"{k:>11}" for k in names))
    for seed in range(args.first_seed, args.first_seed + args.sampling_seeds):
        for name, kwargs in modes.items():
            r = measure(model.generate(n, seed=seed, batch_size=n, **kwargs))
            rows[name].append(r)
            print(f"{name + f' (seed {seed})':<28} " + " ".join(f"{v:>11.3f}" for v in r), flush=True)
    noisy_draws = [ka.data.add_noise(x_train, model.sigma_n, seed=1000 + k) for k in range(args.noise_draws)]
    noisy = [measure(y) for y in noisy_draws]
    denoised = [measure(np.asarray(model.denoise(y, model.sigma_n, batch_size=n))) for y in noisy_draws]
    print(f"\n{'mean ± std over sets':<36} " + " ".join(f"{k:>15}" for k in names))
    summary = {}
    for name, values in list(rows.items()) + [("noisy training data", noisy),
                                              ("noisy data denoised, D(y; sigma_n)", denoised)]:
        a = np.asarray(values)
        mean, std = bu.mean_std(a)
        summary[name] = {"mean": mean.tolist(), "std": std.tolist(), "sets": a.tolist()}
        print(f"{name:<36} " + " ".join(f"{m:>7.3f} ± {s:<5.3f}" for m, s in zip(mean, std)))
    full, trunc = np.asarray(rows["full"]), np.asarray(rows["truncated"])
    diff_mean, diff_std = bu.mean_std(full - trunc)
    print("\nfull - truncated, paired by sampling seed (mean ± std): "
          + ", ".join(f"{k} {m:+.3f} ± {s:.3f}" for k, m, s in
                      zip(names, diff_mean, diff_std)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "final_sigma": args.final_sigma, "columns": names,
                       "summary": summary}, f, indent=1)
    return summary


if __name__ == "__main__":
    main(parse_args())
