"""Noise-level estimators side by side, without clean data (and with, for the digits).

Data (values on [-1, 1]; noise `sigma z` added on that scale, i.e. sigma/2 on
[0, 1] and 127.5 sigma grey levels on 0..255):

- the built-in digits, 1438 training and 359 test images of 8x8 (noised with
  `ka.data.add_noise(x, sigma, seed=1)`), read as one set each;
- scikit-image's offline sample photos, converted to grey (`rgb2gray`, float
  in [0, 1]) then mapped to [-1, 1] as `2 g - 1`, noised with
  `np.random.default_rng(1)`, each read alone. Their own noise (sensor, JPEG)
  adds to `sigma` and is what the sigma = 0 row reads.

Estimators:

- ours: `estimate_noise_level(y)`, the reference-free default (method
  "pca": covariance of the images or of their 8x8 patches, noise
  eigenvalues split off at the Marchenko-Pastur bulk edge);
- skimage: `skimage.restoration.estimate_sigma` (wavelet MAD, Donoho),
  per image; the median over images for the digits;
- old PCA: `estimate_noise_level_pca` (Chen et al.'s tail rule) over the
  images (digits) or over the photo's 8x8 patches (the same patches as ours);
- calibrated (digits only, needs clean data): `estimate_noise_level(y,
  reference=...)`, the training digits calibrated on the clean test digits and
  the test digits on the clean training digits.

Prints one row per (dataset, sigma), one column per estimator: the estimate
and its error relative to sigma, in bold where it misses the goal |error| <=
10% (`--long`: one row per estimate with a met/missed flag); then how many
goals each estimator met.

Usage:
    python benchmarks/noise_estimation.py
    python benchmarks/noise_estimation.py --photos camera,coins --sigmas 0.1,0.2

Results: docs/choosing_defaults.md ("The noise level sigma_n itself") and the README.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
# This checkout's keras_ambient, whatever is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "moon", "coins", "text", "page", "rocket",
          "brick", "grass", "gravel", "clock")
SIGMAS = (0.0, 0.1, 0.2, 0.4)
GOAL = 0.10


def load_photo(name):
    """Grey float in [-1, 1] (`2 * rgb2gray - 1`)."""
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    img = getattr(data, name)()
    if img.ndim == 3:
        img = rgb2gray(img[..., :3])
    return 2.0 * img_as_float(img).astype("float64") - 1.0


def patch_rows(img, k=8, max_patches=100_000):
    from keras_ambient.evaluation.images import _patch_rows

    return _patch_rows(img[None, :, :, None], k, max_patches)


def estimators(kind, clean_other=None):
    from skimage.restoration import estimate_sigma

    from keras_ambient.evaluation import images as ev

    if kind == "digits":
        return {
            "ours (reference-free)": lambda y: ev.estimate_noise_level(y),
            "skimage estimate_sigma": lambda y: float(np.median([estimate_sigma(im[..., 0]) for im in y])),
            "old PCA (tail rule)": lambda y: ev.estimate_noise_level_pca(y),
            "calibrated (clean reference)": lambda y: ev.estimate_noise_level(y, reference=clean_other),
        }
    return {
        "ours (reference-free)": lambda y: ev.estimate_noise_level(y[None]),
        "skimage estimate_sigma": lambda y: float(estimate_sigma(y)),
        "old PCA (tail rule)": lambda y: ev.estimate_noise_level_pca(patch_rows(y)),
    }


def run(photos, sigmas):
    import keras_ambient as ka

    rows = []
    x_train, x_test = ka.data.load_digits("train"), ka.data.load_digits("test")
    sets = [("digits train (1438)", "digits", x_train, x_test), ("digits test (359)", "digits", x_test, x_train)]
    sets += [(f"photo {name}", "photo", load_photo(name), None) for name in photos]
    for label, kind, x, other in sets:
        ests = estimators(kind, other)
        for sigma in sigmas:
            if kind == "digits":
                y = ka.data.add_noise(x, sigma, seed=1) if sigma > 0 else x
            else:
                y = x + sigma * np.random.default_rng(1).standard_normal(x.shape) if sigma > 0 else x
            for name, fn in ests.items():
                t0 = time.perf_counter()
                value = float(fn(y))
                rows.append(dict(data=label, kind=kind, sigma=sigma, estimator=name, estimate=value,
                                 seconds=time.perf_counter() - t0))
    return rows


def print_rows(rows):
    print("| data | true sigma | estimator | estimate | error | within 10% |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["sigma"] > 0:
            err = r["estimate"] / r["sigma"] - 1.0
            ok = "met" if abs(err) <= GOAL else "**missed**"
            print(f"| {r['data']} | {r['sigma']:g} | {r['estimator']} | {r['estimate']:.3f} | {err:+.1%} | {ok} |")
        else:
            print(f"| {r['data']} | 0 (clean) | {r['estimator']} | {r['estimate']:.3f} | – | – |")


def print_pivot(rows):
    """One row per (data, sigma), one column per estimator: estimate (error); misses in bold."""
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    print("| data | true sigma | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    cells = {(r["data"], r["sigma"], r["estimator"]): r for r in rows}
    for data, sigma in dict.fromkeys((r["data"], r["sigma"]) for r in rows):
        out = []
        for name in names:
            r = cells.get((data, sigma, name))
            if r is None:
                out.append("–")
            elif sigma == 0:
                out.append(f"{r['estimate']:.3f}")
            else:
                err = r["estimate"] / sigma - 1.0
                cell = f"{r['estimate']:.3f} ({err:+.0%})"
                out.append(cell if abs(err) <= GOAL else f"**{cell}**")
        print(f"| {data} | {'0 (clean)' if sigma == 0 else f'{sigma:g}'} | " + " | ".join(out) + " |")


def print_summary(rows):
    print("\nGoal |error| <= 10% at sigma > 0, met / tried, per estimator (digits; photos):")
    for name in dict.fromkeys(r["estimator"] for r in rows):
        parts = []
        for kind in ("digits", "photo"):
            rs = [r for r in rows if r["estimator"] == name and r["kind"] == kind and r["sigma"] > 0]
            if not rs:
                continue
            errs = np.array([abs(r["estimate"] / r["sigma"] - 1.0) for r in rs])
            worst = max(rs, key=lambda r: abs(r["estimate"] / r["sigma"] - 1.0))
            parts.append(f"{kind}: {int(np.sum(errs <= GOAL))}/{len(rs)}, median |error| {np.median(errs):.1%}, "
                         f"worst {worst['data']} at {worst['sigma']:g} ({worst['estimate'] / worst['sigma'] - 1:+.1%})")
        secs = np.mean([r["seconds"] for r in rows if r["estimator"] == name])
        print(f"  {name:30s} " + "; ".join(parts) + f"; {secs * 1e3:.0f} ms per call")
    for sigma in sorted({r["sigma"] for r in rows if r["sigma"] > 0}):
        parts = []
        for name in dict.fromkeys(r["estimator"] for r in rows):
            rs = [r for r in rows if r["estimator"] == name and r["sigma"] == sigma and r["kind"] == "photo"]
            if rs:
                parts.append(f"{name} {sum(abs(r['estimate'] / sigma - 1) <= GOAL for r in rs)}/{len(rs)}")
        print(f"  photos at sigma {sigma:g}: " + ", ".join(parts))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", default=",".join(PHOTOS), help="comma list of skimage.data photo names")
    p.add_argument("--sigmas", default=",".join(f"{s:g}" for s in SIGMAS))
    p.add_argument("--long", action="store_true", help="one row per estimate (with the goal flag)")
    args = p.parse_args(argv)
    rows = run([n for n in args.photos.split(",") if n], [float(s) for s in args.sigmas.split(",")])
    if args.long:
        print_rows(rows)
    else:
        print_pivot(rows)
    print_summary(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
