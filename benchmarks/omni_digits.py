"""Ambient Omni on the digits: 10% clean + 90% corrupted, three models at one budget.

For each corruption of 90% of `ka.data.load_digits("train")` (Gaussian blur of
two strengths, down/up-sampling by 2, JPEG), the other 10% kept clean:

1. trains `ka.annotation.NoiseClassifier` (clean vs corrupted, at every noise
   level) and annotates every corrupted digit with the lowest level where the
   classifier is fooled (`annotate_noise_levels`, tau 0.45); prints the levels
   found and how many digits were dropped as unusable;
2. trains three `ka.AmbientDiffusion` U-Nets with the same budget and seed:
   - clean only:     the 10% clean digits (plain loss);
   - all as clean:   clean + corrupted, every sample at level 0 (plain loss);
   - annotated:      clean at level 0 + corrupted noised once at its level
                     (ambient loss above each sample's level);
   (clean only does not depend on the corruption and is trained once);
3. samples each with the full sampler (to sigma = 0) and prints, against the
   359 held-out clean digits: residual blur (`ka.evaluation.residual_blur`,
   0 = as sharp as clean digits), residual noise, FD on 16 PCA features and on
   the hidden layer of a digit classifier (FD_clf), as benchmarks/digits_quality.py,
   and the fraction of samples that copy a clean training digit (closer to one than
   95% of the held-out clean digits are: a model of 144 images can score a low FD
   by reproducing them).

`--clean-share s` draws a fraction `s` of every training batch of the two mixed
models from the clean digits (oversampling them), instead of their 10% share.

Goal (issue 14): the annotated model beats both baselines on FD_clf and on
residual blur; the verdict is printed per corruption.

Usage:
    python benchmarks/omni_digits.py                          # JAX, all corruptions
    python benchmarks/omni_digits.py --corruptions blur1.0 --steps 300 --num-samples 200  # quick
"""

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CORRUPTIONS = {
    "blur0.6": ("gaussian_blur", 0.6),
    "blur1.0": ("gaussian_blur", 1.0),
    "down2": ("downsample_upsample", 2),
    "jpeg20": ("jpeg_compress", 20),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corruptions", default="blur0.6,blur1.0,down2",
                   help=f"comma list of {','.join(CORRUPTIONS)}")
    p.add_argument("--clean-fraction", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=1500, help="training steps per diffusion model")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--classifier-steps", type=int, default=1500)
    p.add_argument("--tau", type=float, default=0.45)
    p.add_argument("--num-draws", type=int, default=4, help="noise draws per digit and level")
    p.add_argument("--per-group", action="store_true",
                   help="one level for all corrupted digits (their mean curve) instead of one each")
    p.add_argument("--clean-share", type=float, default=None,
                   help="fraction of the mixed models' training draws taken from the clean digits "
                        "(default: their share of the data)")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def train_and_sample(data, sigma_n, sigma_data, args, clean_mask=None):
    import keras

    import keras_ambient as ka

    keras.utils.set_random_seed(args.seed)
    net = ka.networks.UNet(image_shape=(8, 8, 1), base_channels=args.base_channels,
                           channel_multipliers=(1, 2), seed=args.seed)
    model = ka.AmbientDiffusion(net, sigma_n=0.0, sigma_data=sigma_data, consistency_weight=0.0,
                                seed=args.seed)
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, args.steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    # Exactly `steps` batches: concatenated shuffles of the training set.
    rng = np.random.default_rng(args.seed)
    need = args.steps * args.batch_size
    if args.clean_share is None or clean_mask is None:
        idx = np.concatenate([rng.permutation(len(data)) for _ in range(need // len(data) + 1)])[:need]
    else:  # the clean samples drawn with total probability clean_share
        share = args.clean_share
        p = np.where(clean_mask, share / clean_mask.sum(), (1 - share) / (~clean_mask).sum())
        idx = rng.choice(len(data), size=need, p=p)
    t0 = time.perf_counter()
    model.fit((data[idx], sigma_n[idx]), batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
    train_s = time.perf_counter() - t0
    samples = model.generate(args.num_samples, mode="full", seed=args.seed, batch_size=args.num_samples)
    return samples, train_s


def main(argv=None):
    args = parse_args(argv)
    import keras_ambient as ka
    from digits_quality import Evaluator

    evaluate = Evaluator()
    x_test = evaluate.x_test

    x = evaluate.x_train
    order = np.random.default_rng(args.seed).permutation(len(x))
    num_clean = int(round(args.clean_fraction * len(x)))
    clean, rest = x[order[:num_clean]], x[order[num_clean:]]
    # A sample "copies" a clean training digit when it is closer to one than 95% of the
    # held-out clean digits are to their nearest clean training digit.
    test_nn = ka.memorization.nearest_neighbors(x_test, clean, metric="l2", k=1)[0][:, 0]
    copy_radius = float(np.percentile(test_nn, 5))

    def metrics(images):
        m = evaluate(images)
        nn = ka.memorization.nearest_neighbors(images, clean, metric="l2", k=1)[0][:, 0]
        return {"residual_blur": ka.evaluation.residual_blur(images, x_test),
                "residual_noise": m["residual_noise"], "fd_pca": m["fd_pca"],
                "fd_classifier": m["fd_classifier"], "copies": float(np.mean(nn < copy_radius))}

    sigma_data = float(np.std(clean))
    print(f"digits: {num_clean} clean + {len(rest)} corrupted training images, {len(x_test)} held-out "
          f"clean test digits; U-Net {args.base_channels} channels, {args.steps} steps x "
          f"{args.batch_size}, full sampling, seed {args.seed}, clean share of the mixed models' "
          f"draws: {'natural' if args.clean_share is None else args.clean_share}, backend "
          f"{__import__('keras').backend.backend()}", flush=True)
    rows = [dict(corruption="-", model="clean test digits (reference)", **metrics(x_test)),
            dict(corruption="-", model="clean 10% (training data)", **metrics(clean))]

    samples, train_s = train_and_sample(clean, np.zeros(len(clean), "float32"), sigma_data, args)
    rows.append(dict(corruption="-", model="clean only", train_s=train_s, **metrics(samples)))
    print(f"clean only: trained in {train_s:.0f} s", flush=True)
    for name in args.corruptions.split(","):
        fn, strength = CORRUPTIONS[name]
        corrupted = getattr(ka.data, fn)(rest, strength)
        rows.append(dict(corruption=name, model="corrupted 90% (training data)", **metrics(corrupted)))
        t0 = time.perf_counter()
        classifier = ka.annotation.train_noise_classifier(clean, corrupted, steps=args.classifier_steps,
                                                          seed=args.seed)
        groups = np.zeros(len(corrupted), "int64") if args.per_group else None
        annotation = ka.annotation.annotate_noise_levels(classifier, corrupted, tau=args.tau,
                                                         num_draws=args.num_draws, groups=groups,
                                                         seed=args.seed + 1)
        levels = annotation.levels[annotation.usable]
        q = np.percentile(levels, [10, 50, 90]) if len(levels) else [np.nan] * 3
        print(f"{name}: classifier + annotation {time.perf_counter() - t0:.0f} s; levels found: "
              f"median {q[1]:.3f} (10%: {q[0]:.3f}, 90%: {q[2]:.3f}); {annotation.num_dropped} of "
              f"{len(corrupted)} unusable (dropped)", flush=True)
        everything = np.concatenate([clean, corrupted])
        clean_mask = np.arange(len(everything)) < len(clean)
        samples, train_s = train_and_sample(everything, np.zeros(len(everything), "float32"),
                                            sigma_data, args, clean_mask)
        rows.append(dict(corruption=name, model="all as clean", train_s=train_s, **metrics(samples)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the dropped count is printed above
            y, sigma_n = annotation.training_data(clean, corrupted, seed=args.seed + 2)
        samples, train_s = train_and_sample(y, sigma_n, sigma_data, args, sigma_n == 0)
        rows.append(dict(corruption=name, model="annotated", train_s=train_s,
                         level_median=float(q[1]), level_p10=float(q[0]), level_p90=float(q[2]),
                         dropped=annotation.num_dropped, **metrics(samples)))
        print(f"{name}: diffusion models trained ({train_s:.0f} s each)", flush=True)

    print(f"\n{'corruption':<10} {'model':<30} {'resid. blur':>11} {'resid. noise':>12} "
          f"{'FD_pca':>7} {'FD_clf':>7} {'copies':>7}")
    for r in rows:
        print(f"{r['corruption']:<10} {r['model']:<30} {r['residual_blur']:>11.3f} "
              f"{r['residual_noise']:>12.3f} {r['fd_pca']:>7.3f} {r['fd_classifier']:>7.3f} "
              f"{r['copies']:>7.3f}")
    clean_only = next(r for r in rows if r["model"] == "clean only")
    print("\ngoal: annotated beats clean only and all as clean on FD_clf and residual blur")
    for name in args.corruptions.split(","):
        ann = next(r for r in rows if r["corruption"] == name and r["model"] == "annotated")
        allc = next(r for r in rows if r["corruption"] == name and r["model"] == "all as clean")
        fd_ok = ann["fd_classifier"] < min(clean_only["fd_classifier"], allc["fd_classifier"])
        blur_ok = ann["residual_blur"] < min(clean_only["residual_blur"], allc["residual_blur"])
        print(f"  {name}: FD_clf {ann['fd_classifier']:.3f} vs clean only {clean_only['fd_classifier']:.3f}, "
              f"all as clean {allc['fd_classifier']:.3f}: {'met' if fd_ok else 'MISSED'}; residual blur "
              f"{ann['residual_blur']:.3f} vs {clean_only['residual_blur']:.3f}, {allc['residual_blur']:.3f}: "
              f"{'met' if blur_ok else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
