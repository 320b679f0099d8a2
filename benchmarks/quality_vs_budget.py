"""Quality against training budget on the 2-D mixture: where does consistency overtake truncation?

Trains the four models of `benchmarks/mixture_2d.py` (oracle, naive, ambient
truncated, ambient + consistency full; library defaults) at several training
budgets and noise levels, and writes a plot (SWD to held-out clean samples and
the within-cluster std, r < 0.3, against steps) to `docs/images/` with the
printed table. The dashed line is exact truncated sampling (closed form).

Usage:
    KERAS_BACKEND=jax python benchmarks/quality_vs_budget.py
    python benchmarks/quality_vs_budget.py --budgets 1000,3000,9000 --sigma-n 0.1,0.2
"""

import argparse
import importlib.util
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("mixture_2d", os.path.join(_HERE, "mixture_2d.py"))
mixture_2d = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mixture_2d)

LABELS = {"oracle": "oracle (clean data)", "naive": "naive (noisy data as clean)",
          "ambient_truncated": "ambient, truncated sampling",
          "ambient_consistency_full": "ambient + consistency, full sampling"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="1000,3000,9000", help="training steps (comma list)")
    p.add_argument("--sigma-n", default="0.1,0.2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(_HERE, "..", "docs", "images", "quality_vs_budget.png"))
    p.add_argument("--jsonl", default=None)
    args = p.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    sigma_ns = [float(v) for v in args.sigma_n.split(",")]

    results = {}
    for sigma_n in sigma_ns:
        data = mixture_2d.make_data(args.seed, sigma_n)
        exact = mixture_2d.calibration(sigma_n, args.seed)["exact truncated sampling"]
        results[sigma_n] = {"exact_truncated": exact}
        for steps in budgets:
            cfg = dict(mixture_2d.BASE, **mixture_2d.LOSS_KEYS, steps=steps, sigma_n=sigma_n)
            for kind in mixture_2d.MODELS:
                r = mixture_2d.run_one(kind, cfg, args.seed, data)
                m = r[r["main_mode"]]
                results[sigma_n].setdefault(kind, []).append(dict(steps=steps, **m, d_sn=r["d_err"][1.0]))
                print(f"sigma_n {sigma_n} steps {steps:6d} {kind:26s} swd {m['swd']:.4f} wcs_r {m['wcs_r']:.4f} "
                      f"off {m['off']:.3f} D-err(sigma_n) {r['d_err'][1.0]:.4f} ({r['steps_per_s']:.0f} st/s)",
                      flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(dict(r, sigma_n=sigma_n), default=str) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(sigma_ns), figsize=(5 * len(sigma_ns), 7), squeeze=False)
    for j, sigma_n in enumerate(sigma_ns):
        for i, (key, name) in enumerate((("swd", "SWD to clean (lower is better)"),
                                         ("wcs_r", "within-cluster std, r<0.3 (truth 0.05)"))):
            ax = axes[i, j]
            for kind in mixture_2d.MODELS:
                rows = results[sigma_n][kind]
                ax.plot([r["steps"] for r in rows], [r[key] for r in rows], "o-", label=LABELS[kind])
            ax.axhline(results[sigma_n]["exact_truncated"][key], color="gray", ls="--",
                       label="exact truncated sampling")
            if key == "wcs_r":
                ax.axhline(mixture_2d.COMPONENT_STD, color="k", ls=":", label="true std")
            ax.set_xscale("log")
            ax.set_xlabel("training steps (batch 256)")
            ax.set_title(f"sigma_n = {sigma_n}: {name}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {os.path.relpath(args.out)}")


if __name__ == "__main__":
    sys.exit(main())
