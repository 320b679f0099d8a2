"""Benchmark: does ambient training reduce memorization? (docs/method.md §7, issue 3)

Trains, on the SAME small training set (default: 300 digits), a model on the
clean images (sigma_n = 0) and models with the ambient loss + consistency on
the images noised once at each sigma_n in --sigma-n, all with the same step
budget. At checkpoints it prints, for each model:

- memorization of generated samples: fraction of samples whose nearest
  training image (centred-pixel cosine) is > 0.95 / > 0.90 similar, and the
  L2 ratio test (nearest / second nearest < 1/3);
- memorization under the noise attack at --attack-sigma: the same numbers for
  the MMSE reconstruction (one denoiser call) and a posterior sample
  (reverse process from that level) of --attack-n training images, plus how
  often the nearest training image is the attacked one;
- quality: sliced Wasserstein distance (SWD) of samples to held-out clean test
  digits, and mean L2 distance of samples to their nearest test digit;
- references for scale: held-out test digits against the training set
  (natural similarity of different digits) and the training set itself
  against the test set (SWD floor).

Writes a similarity histogram, sample/attack triplet PNGs and a JSON of all
reports to --out.

    KERAS_BACKEND=jax nice -n 10 python benchmarks/memorization.py            # full
    KERAS_BACKEND=jax python benchmarks/memorization.py --quick               # ~1-2 min
"""

import argparse
import json
import os
import time

import keras
import numpy as np

import keras_ambient as ka
from keras_ambient import memorization as mem
from keras_ambient.evaluation import sliced_wasserstein_distance


def quality(samples, x_test):
    d, _ = mem.nearest_neighbors(samples, x_test, metric="l2", k=1)
    return {"swd_to_test": sliced_wasserstein_distance(samples, x_test), "nn_l2_to_test": float(d.mean())}


def build_network(kind, shape):
    if kind == "mlp":
        return ka.networks.MLPDenoiser(int(np.prod(shape)), hidden_units=256, num_blocks=3, seed=0)
    return ka.networks.UNet(image_shape=shape, base_channels=16, channel_multipliers=(1, 2), num_res_blocks=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-train", type=int, default=300)
    p.add_argument("--sigma-n", type=float, nargs="+", default=[0.2, 0.4, 0.8])
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 2000, 4000],
                   help="checkpoints (cumulative training steps) at which everything is measured")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--consistency-weight", type=float, default=None,
                   help="consistency weight of the ambient models (default: the library's)")
    p.add_argument("--network", choices=["mlp", "unet"], default="mlp",
                   help="mlp: MLPDenoiser(256x3) on flattened digits (fast on CPU); unet: a 16-channel UNet")
    p.add_argument("--num-samples", type=int, default=300)
    p.add_argument("--sample-steps", type=int, default=18)
    p.add_argument("--attack-sigma", type=float, nargs="+", default=[1.0])
    p.add_argument("--attack-n", type=int, default=100)
    p.add_argument("--out", default="/tmp/memo/benchmark")
    p.add_argument("--quick", action="store_true", help="tiny run: 150 steps, one sigma_n, 64 samples")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.sigma_n, args.steps, args.num_samples, args.attack_n = [0.4], [150], 64, 32
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()

    x_train = ka.data.load_digits("train")[:args.num_train]
    x_test = ka.data.load_digits("test")
    shape = x_train.shape[1:]
    flat = args.network == "mlp"
    to_model = (lambda a: a.reshape(len(a), -1)) if flat else (lambda a: a)
    to_img = lambda a: np.asarray(a).reshape((-1,) + shape)  # noqa: E731

    index = mem.SimilarityIndex(x_train, center=True)
    ref = index.query(x_test, name="test digits vs train (reference)")
    print(f"backend={keras.backend.backend()} network={args.network} train={len(x_train)} test={len(x_test)}")
    print("Reference:", ref.summary())
    floor = quality(x_train, x_test)
    print(f"Reference quality (train set vs test): SWD {floor['swd_to_test']:.4f}, "
          f"NN-L2 {floor['nn_l2_to_test']:.3f}")

    configs = [("clean", 0.0)] + [(f"ambient sigma_n={s:g}", s) for s in args.sigma_n]
    results = {"reference": ref.to_dict(), "reference_quality": floor, "args": vars(args), "models": {}}
    final_reports = {}
    rows = []
    for label, sigma_n in configs:
        keras.utils.set_random_seed(args.seed)
        y = x_train if sigma_n == 0 else ka.data.add_noise(x_train, sigma_n, seed=args.seed + 1)
        kwargs = {"consistency_weight": 0.0} if sigma_n == 0 else (
            {} if args.consistency_weight is None else {"consistency_weight": args.consistency_weight})
        model = ka.AmbientDiffusion(build_network(args.network, shape), sigma_n=sigma_n, seed=args.seed,
                                    **kwargs)
        model.compile(optimizer=keras.optimizers.Adam(args.lr))
        steps_per_epoch = int(np.ceil(len(y) / args.batch_size))
        done, t_train = 0, 0.0
        results["models"][label] = {}
        for target in args.steps:
            epochs = max(1, int(round((target - done) / steps_per_epoch)))
            t0 = time.time()
            hist = model.fit(to_model(y), batch_size=args.batch_size, epochs=epochs, verbose=0)
            t_train += time.time() - t0
            done += epochs * steps_per_epoch
            t0 = time.time()
            samples = to_img(model.generate(args.num_samples, num_steps=args.sample_steps, seed=args.seed))
            rep_s = index.query(samples, name=f"{label} samples @{done}")
            q = quality(samples, x_test)
            attack = mem.noise_attack(model, to_model(x_train[:args.attack_n]), sigma=args.attack_sigma,
                                      num_draws=1, seed=args.seed)
            attack.x = to_img(attack.x)
            attack.mmse = {k: to_img(v) for k, v in attack.mmse.items()}
            attack.posterior = {k: to_img(v)[None] for k, v in attack.posterior.items()}
            rep_a = attack.reports(index)
            t_eval = time.time() - t0
            loss = float(hist.history["loss"][-1])
            entry = {"steps": done, "train_s": t_train, "eval_s": t_eval, "loss": loss,
                     "samples": rep_s.to_dict(), "quality": q,
                     "attack": {k: r.to_dict() for k, r in rep_a.items()}}
            results["models"][label][str(done)] = entry
            row = [label, done, rep_s.fraction_above["0.95"], rep_s.fraction_above["0.9"],
                   rep_s.ratio_test_rate, rep_s.mean_similarity]
            for k, r in rep_a.items():
                row += [r.fraction_above["0.95"], r.source_match_rate]
            row += [q["swd_to_test"], q["nn_l2_to_test"], t_train]
            rows.append(row)
            print(f"[{label:>22s}] steps {done:5d} loss {loss:.4f} train {t_train:6.1f}s eval {t_eval:5.1f}s | "
                  f"samples >0.95 {100 * rep_s.fraction_above['0.95']:5.1f}% >0.90 "
                  f"{100 * rep_s.fraction_above['0.9']:5.1f}% ratio {100 * rep_s.ratio_test_rate:5.1f}% "
                  f"mean sim {rep_s.mean_similarity:.3f} | "
                  + " | ".join(f"{k} >0.95 {100 * r.fraction_above['0.95']:5.1f}% src {100 * r.source_match_rate:5.1f}%"
                               for k, r in rep_a.items())
                  + f" | SWD {q['swd_to_test']:.4f} NN-L2 {q['nn_l2_to_test']:.3f}", flush=True)
        final_reports[label] = (rep_s, rep_a, samples, attack)

    # ---- summary table (last checkpoint)
    print("\nSummary at the last checkpoint (similarity: centred-pixel cosine to the nearest of "
          f"{len(x_train)} training digits; reference: held-out test digits "
          f">0.95 {100 * ref.fraction_above['0.95']:.1f}%, >0.90 {100 * ref.fraction_above['0.9']:.1f}%, "
          f"ratio {100 * ref.ratio_test_rate:.1f}%, mean {ref.mean_similarity:.3f})")
    akeys = list(final_reports[configs[0][0]][1].keys())
    head = (f"{'model':>22s} | {'gen>0.95':>8s} {'gen>0.90':>8s} {'ratio':>6s} {'meansim':>7s} | "
            + " ".join(f"{k + ' >0.95':>22s} {'src':>5s}" for k in akeys) + f" | {'SWD':>6s} {'NN-L2':>6s} | {'train_s':>7s}")
    print(head)
    for label, _ in configs:
        rep_s, rep_a, _, _ = final_reports[label]
        last = results["models"][label][max(results["models"][label], key=int)]
        print(f"{label:>22s} | {100 * rep_s.fraction_above['0.95']:7.1f}% {100 * rep_s.fraction_above['0.9']:7.1f}% "
              f"{100 * rep_s.ratio_test_rate:5.1f}% {rep_s.mean_similarity:7.3f} | "
              + " ".join(f"{100 * rep_a[k].fraction_above['0.95']:21.1f}% {100 * rep_a[k].source_match_rate:4.0f}%"
                         for k in akeys)
              + f" | {last['quality']['swd_to_test']:6.4f} {last['quality']['nn_l2_to_test']:6.3f} | {last['train_s']:7.1f}")

    # ---- pictures
    hist_path = os.path.join(args.out, "similarity_histogram_samples.png")
    mem.plot_similarity_histogram(
        hist_path, {"test digits (reference)": ref, **{k: v[0] for k, v in final_reports.items()}},
        title="Generated samples: similarity to nearest training digit", value_range=(0.0, 1.0))
    akey = f"posterior@sigma={args.attack_sigma[0]:g}"
    hist2 = os.path.join(args.out, "similarity_histogram_attack.png")
    mem.plot_similarity_histogram(
        hist2, {"test digits (reference)": ref, **{k: v[1][akey] for k, v in final_reports.items()}},
        title=f"Noise attack (posterior sample from sigma={args.attack_sigma[0]:g})", value_range=(0.0, 1.0))
    paths = [hist_path, hist2]
    for label, (rep_s, rep_a, samples, attack) in final_reports.items():
        tag = label.replace(" ", "_").replace("=", "")
        paths.append(mem.plot_triplets(os.path.join(args.out, f"samples_{tag}.png"), samples, x_train,
                                       rep_s.nearest_indices, similarities=rep_s.similarities, num=10,
                                       titles=["sample", "nearest train"]))
        r = rep_a[akey]
        key = akey.split("=")[1]
        paths.append(mem.plot_triplets(
            os.path.join(args.out, f"attack_{tag}.png"), attack.posterior[key][0], x_train, r.nearest_indices,
            originals=[attack.x, np.clip(attack.noisy[key].reshape(attack.x.shape), -3, 3) / 3.0],
            similarities=r.similarities, num=10, order="index",
            titles=["train image", f"+ noise {key}", "reconstruction", "nearest train"]))
    with open(os.path.join(args.out, "reports.json"), "w") as f:
        json.dump(results, f)
    print("\nWrote:", ", ".join(paths + [os.path.join(args.out, "reports.json")]))
    print(f"Total wall time: {time.time() - t_start:.1f}s")


if __name__ == "__main__":
    main()
