"""How the cost of a training step grows with batch size and image size.

Steps/s and images/s of the library's `AmbientDiffusion.fit` (`ka.networks.UNet`,
`consistency_weight=0`, `jit_compile="auto"`) at batch sizes 16-256 and image
sizes 8, 16 and 32, on each Keras backend and for the plain-PyTorch reference of
benchmarks/torch_reference.py (the same network and loss). The U-Nets are the
presets of `bench_utils.UNET_PRESETS` with `--base-channels` (default 16, the
quick U-Net of benchmarks/speed.py): 8x8x1 multipliers (1, 2), 16x16x1 (1, 2, 2),
32x32x3 (1, 2, 2).

Each cell is timed as in benchmarks/speed.py (`speed._time_fit`: the first
`fit` call, which compiles, and the first batch of a timed call are excluded),
with an adaptive number of steps: a probe of 2 timed steps gives the step time,
then a second call runs about `--target-s` seconds of steps (the probe is kept
when it already took that long). Each backend runs in its own process
(`--worker`), one CPU thread (`--threads`), all cells in one process; the set
of workers is repeated `--repeats` times, interleaved (the order of the workers
rotates between repeats), and medians are printed.

Printed: steps/s and images/s per backend (rows: image size; columns: batch
size), images/s side by side with the ratio to plain PyTorch, and a fit of the
step time `t(B) = a + b * B` per backend and image size: `a` is the fixed
per-step cost, `b` the cost per image, and `a / b` the batch size where the two
are equal (above it, the per-image work dominates). `--plot PATH` writes a
log-log figure (seconds per step and images/s against batch size, one panel per
image size, one line per backend, with a linear-cost guide).

Usage:
    python benchmarks/scaling.py --quick                     # smoke run, ~2 min
    python benchmarks/scaling.py --repeats 2 --json scaling.json \
        --plot docs/images/scaling.png
    python benchmarks/scaling.py --backends jax,plain --image-sizes 8,16 \
        --batch-sizes 16,64,256

This is a benchmark, not a test: nothing is asserted about the figures.
"""

import argparse
import json
import math
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # bench_utils; this checkout's keras_ambient

import bench_utils as bu  # noqa: E402

TAG = "SCALING_JSON"
WORKERS = bu.KERAS_BACKENDS + ("plain",)
LABELS = {"plain": "plain torch"}
PRESETS = {
    "quick": dict(batch_sizes="16,32", image_sizes="8", repeats=1, target_s=0.5,
                  base_channels=8, max_steps=20),
    "default": dict(batch_sizes="16,32,64,128,256", image_sizes="8,16,32", repeats=2,
                    target_s=2.5, base_channels=16, max_steps=300),
}


# ------------------------------------------------------------------ workers
def _keras_cell(net, batch, args):
    """Steps/s of one (image size, batch) cell through the library's `fit`."""
    import keras
    import speed

    cfg = {net: dict(base_channels=args.base_channels)}
    model = speed._keras_model(net, cfg)
    x = bu.make_data(net, 3 * batch, speed.SIGMA_N)
    # Probe: compile (1 batch), then 3 batches of which the last 2 are timed.
    sps, warm = speed._time_fit(model, x, batch, 3, 1)
    steps, probe = _adaptive_steps(sps, args), 2
    if steps:
        x = bu.make_data(net, (steps + 1) * batch, speed.SIGMA_N, seed=1)
        sps, _ = speed._time_fit(model, x, batch, steps + 1, 0)
    params = speed._trainable_params(model)
    keras.backend.clear_session()
    return dict(steps_per_s=sps, warmup_s=warm, timed_steps=steps or probe, params=params,
                jit=str(model.jit_compile))


def _plain_cell(net, batch, args):
    """The same cell in plain PyTorch (torch_reference.Trainer, eager)."""
    import speed
    import torch_reference as ref

    tnet = ref.UNet(**bu.unet_kwargs(net, args.base_channels))
    trainer = ref.Trainer(tnet, lr=speed.LR)
    x = bu.make_data(net, 3 * batch, speed.SIGMA_N)
    sps, warm = speed._torch_time_train(trainer, x, batch, 3, 1, "cpu")
    steps, probe = _adaptive_steps(sps, args), 2
    if steps:
        x = bu.make_data(net, (steps + 1) * batch, speed.SIGMA_N, seed=1)
        sps, _ = speed._torch_time_train(trainer, x, batch, steps + 1, 0, "cpu")
    return dict(steps_per_s=sps, warmup_s=warm, timed_steps=steps or probe,
                params=ref.num_params(tnet), jit="False")


def _adaptive_steps(probe_sps, args):
    """Timed steps for about `target_s` seconds, or 0 when the probe's 2 steps
    already took most of that."""
    if 2.0 / probe_sps >= 0.7 * args.target_s:
        return 0
    return int(min(args.max_steps, max(3, round(args.target_s * probe_sps))))


def run_worker(args):
    out = []
    try:
        backend = bu.setup_threads(args.threads, plain=args.worker == "plain")
        cell = _plain_cell if args.worker == "plain" else _keras_cell
        for size in args.image_sizes:
            net = bu.SIZE_NETS[size]
            for batch in args.batch_sizes:
                rec = dict(backend=backend, size=size, net=net, batch=batch,
                           base_channels=args.base_channels)
                t0 = time.perf_counter()
                try:
                    rec.update(cell(net, batch, args))
                    rec["images_per_s"] = rec["steps_per_s"] * batch
                except Exception as e:  # noqa: BLE001 - reported, not hidden
                    rec["error"] = repr(e)[:300]
                rec["cell_s"] = time.perf_counter() - t0
                out.append(rec)
                bu.flush(out, tag=TAG)
    finally:
        bu.flush(out, tag=TAG)


# ---------------------------------------------------------------- reporting
def overhead_fit(batches, steps_per_s):
    """Least-squares fit of the step time `t = a + b * B` (relative errors:
    weights 1/t); returns (a seconds, b seconds per image) or None."""
    import numpy as np

    pts = [(b, 1.0 / s) for b, s in zip(batches, steps_per_s) if s]
    if len(pts) < 2:
        return None
    bs, ts = np.array(pts, dtype=float).T
    b, a = np.polyfit(bs, ts, 1, w=1.0 / ts)
    return float(a), float(b)


def _label(backend):
    return LABELS.get(backend, backend)


def _grid(records, backends, sizes, batches, key):
    return {(w, s, b): bu.value(records, key, backend=w, size=s, batch=b)
            for w in backends for s in sizes for b in batches}


def report(records, backends, sizes, batches, base_channels=16):
    sps = _grid(records, backends, sizes, batches, "steps_per_s")
    ips = _grid(records, backends, sizes, batches, "images_per_s")
    params = {s: bu.value(records, "params", size=s) for s in sizes}
    shapes = {s: "x".join(map(str, bu.unet_kwargs(bu.SIZE_NETS[s], 1)["image_shape"]))
              for s in sizes}
    nrep = len({r.get("repeat") for r in records}) or 1
    out = [f"U-Net base {base_channels}: "
           + ", ".join(f"{shapes[s]} multipliers "
                       f"{bu.unet_kwargs(bu.SIZE_NETS[s], 1)['channel_multipliers']} "
                       f"({bu.fmt(params[s], 0)} params)" for s in sizes)
           + f"; median of {nrep} repeat(s)"]
    header = ["image"] + [f"B={b}" for b in batches]
    for key, grid, digits in (("steps/s", sps, 2), ("images/s", ips, 0)):
        for w in backends:
            rows = [[shapes[s]] + [bu.fmt(grid[w, s, b], digits) for b in batches] for s in sizes]
            out.append(f"\n{key}, {_label(w)}\n" + bu.table(header, rows))
    ref = "plain" if "plain" in backends else None
    others = [w for w in backends if w != ref]
    rows = []
    for s in sizes:
        for b in batches:
            r = ips[ref, s, b] if ref else None
            row = [shapes[s], b] + ([bu.fmt(r, 0)] if ref else [])
            row += [f"{bu.fmt(ips[w, s, b], 0)} ({bu.fmt(ips[w, s, b] / r, 2)})"
                    if ips[w, s, b] and r else bu.fmt(ips[w, s, b], 0) for w in others]
            rows.append(row)
    out.append("\nimages/s side by side" + (" (ratio to plain PyTorch)" if ref else "") + "\n"
               + bu.table(["image", "batch"] + (["plain torch"] if ref else []) + others, rows))
    rows = []
    for w in backends:
        for s in sizes:
            fit = overhead_fit(batches, [sps[w, s, b] for b in batches])
            if fit is None:
                continue
            a, b = fit
            cross = "—" if b <= 0 else ("< 1" if a <= 0 else bu.fmt(a / b, 0))
            ends = [(bb, sps[w, s, bb]) for bb in batches if sps[w, s, bb]]
            (b0, s0), (b1, s1) = ends[0], ends[-1]
            slope = math.log(s0 / s1) / math.log(b1 / b0)
            rows.append([_label(w), shapes[s], bu.fmt(1e3 * a, 1), bu.fmt(1e3 * b, 2), cross,
                         bu.fmt(slope, 2)])
    out.append("\nstep time t(B) = a + b*B (least squares, relative errors): a = fixed cost "
               "per step, b = cost per image, a/b = the batch where they are equal; slope = "
               f"log-log slope of t from B={batches[0]} to {batches[-1]} (0: fixed cost only, "
               "1: cost proportional to the batch)\n"
               + bu.table(["backend", "image", "a (ms)", "b (ms/image)", "a/b (images)", "slope"],
                          rows))
    spreads = []
    for w in backends:
        for s in sizes:
            for b in batches:
                vals = [r["steps_per_s"] for r in bu.select(records, backend=w, size=s, batch=b)
                        if r.get("steps_per_s")]
                if len(vals) > 1:
                    spreads.append(max(vals) / min(vals))
    if spreads:
        out.append(f"\nspread between repeats (max/min steps/s): median "
                   f"{bu.median(spreads):.2f}, largest {max(spreads):.2f}")
    errors = [r for r in records if "error" in r or r.get("kind") == "failure"]
    if errors:
        out.append("\nErrors / failures:")
        out += [f"- {r.get('backend')} {r.get('size', r.get('task', ''))} {r.get('batch', '')}: "
                f"{r['error']}" for r in errors]
    return "\n".join(out)


def plot(records, backends, sizes, batches, path, title=None):
    """Log-log figure: seconds per step (top) and images/s (bottom) against the
    batch size, one panel per image size, one line per backend; dashed: cost
    proportional to the batch (slope 1 on top, flat below) through the largest
    batch of the fastest backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ips = _grid(records, backends, sizes, batches, "images_per_s")
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.2 * len(sizes), 7.2), squeeze=False)
    markers = dict(jax="o", torch="s", tensorflow="^", plain="D")
    for col, s in enumerate(sizes):
        shape = "x".join(map(str, bu.unet_kwargs(bu.SIZE_NETS[s], 1)["image_shape"]))
        top, bottom = axes[0, col], axes[1, col]
        for w in backends:
            pts = [(b, ips[w, s, b]) for b in batches if ips[w, s, b]]
            if not pts:
                continue
            bs, ys = zip(*pts)
            kw = dict(marker=markers.get(w, "o"), label=_label(w))
            top.plot(bs, [b / y for b, y in pts], **kw)
            bottom.plot(bs, ys, **kw)
        best = [ips[w, s, batches[-1]] for w in backends if ips[w, s, batches[-1]]]
        if best:
            y_max = max(best)
            guide = list(batches)
            top.plot(guide, [b / y_max for b in guide], "k--", lw=0.8,
                     label="cost ∝ batch (slope 1)")
            bottom.plot(guide, [y_max] * len(guide), "k--", lw=0.8, label="cost ∝ batch")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(batches)
            ax.set_xticklabels([str(b) for b in batches])
            ax.grid(True, which="both", lw=0.3)
            ax.set_xlabel("batch size")
        top.set_title(f"{shape}")
        top.set_ylabel("seconds per training step")
        bottom.set_ylabel("images per second")
        if col == 0:
            top.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96) if title else None)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------- main
def _ints(text):
    return [int(v) for v in text.split(",") if v]


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(WORKERS),
                        help="of jax,torch,tensorflow,plain (plain: the PyTorch reference)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: batches 16,32, 8x8 only, base 8, 0.5 s per cell")
    parser.add_argument("--batch-sizes", default=None, help="default 16,32,64,128,256")
    parser.add_argument("--image-sizes", default=None, help="of 8,16,32 (default all)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (2)")
    parser.add_argument("--base-channels", type=int, default=None, help="U-Net base (16)")
    parser.add_argument("--target-s", type=float, default=None,
                        help="timed seconds per cell (2.5)")
    parser.add_argument("--max-steps", type=int, default=None, help="timed steps at most")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    parser.add_argument("--timeout", type=float, default=3600, help="per-worker timeout (s)")
    parser.add_argument("--json", default=None, help="write all records to this file")
    parser.add_argument("--plot", default=None, help="write the log-log figure (PNG) here")
    parser.add_argument("--from-json", default=None,
                        help="comma-separated --json files of earlier runs: print their report"
                        " (and --plot) without measuring")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--task", default="scaling", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "default"]
    for key, val in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    args.backends = [s for s in args.backends.split(",") if s]
    args.batch_sizes, args.image_sizes = _ints(args.batch_sizes), _ints(args.image_sizes)
    unknown = [s for s in args.image_sizes if s not in bu.SIZE_NETS]
    if unknown or any(w not in WORKERS for w in args.backends):
        parser.error(f"image sizes: of {sorted(bu.SIZE_NETS)}; backends: of {WORKERS}")
    return args


def _worker_argv(args):
    return ["--batch-sizes", ",".join(map(str, args.batch_sizes)),
            "--image-sizes", ",".join(map(str, args.image_sizes)),
            "--base-channels", str(args.base_channels), "--target-s", str(args.target_s),
            "--max-steps", str(args.max_steps)]


def _dump(path, args, records, total):
    with open(path, "w") as f:
        json.dump(dict(args=vars(args), records=records, total_s=total), f, indent=1)


def _load(paths, args):
    """Records of earlier --json files (their repeats renumbered one after the other);
    the backends, sizes and base channels of the report are those of the first file."""
    records, offset = [], 0
    for i, path in enumerate(paths.split(",")):
        with open(path) as f:
            data = json.load(f)
        recs = data["records"]
        if i == 0:
            for key in ("backends", "batch_sizes", "image_sizes", "base_channels", "threads",
                        "target_s"):
                setattr(args, key, data["args"].get(key, getattr(args, key)))
        for r in recs:
            r["repeat"] = offset + r.get("repeat", 0)
        offset = 1 + max([r["repeat"] for r in recs], default=offset - 1)
        records += recs
    args.repeats = offset
    return records


def main(argv=None):
    args = _parse(argv)
    if args.worker:
        return run_worker(args)
    records = []
    t_start = time.perf_counter()
    if args.from_json:
        records = _load(args.from_json, args)
    for rep in range(0 if args.from_json else args.repeats):
        print(f"repeat {rep + 1}/{args.repeats}", flush=True)
        k = rep % len(args.backends)
        for worker in args.backends[k:] + args.backends[:k]:  # rotate the order
            for r in bu.spawn(__file__, worker, "scaling", _worker_argv(args), args.threads,
                              args.timeout, tag=TAG):
                r["repeat"] = rep
                records.append(r)
            if args.json:  # after every worker: a cut-short run keeps what it measured
                _dump(args.json, args, records, time.perf_counter() - t_start)
    total = time.perf_counter() - t_start
    text = report(records, args.backends, args.image_sizes, args.batch_sizes,
                  args.base_channels)
    print("\n" + text)
    print(f"\n(total {total:.0f} s, {args.repeats} repeat(s), {args.threads} thread(s) per "
          f"worker, ~{args.target_s} s timed per cell)")
    if args.plot:
        plot(records, args.backends, args.image_sizes, args.batch_sizes, args.plot,
             title=f"keras_ambient training step (U-Net base {args.base_channels}, consistency"
                   f" off), {args.threads} CPU thread, median of {args.repeats}")
        print(f"figure: {args.plot}")
    if args.json and not args.from_json:
        _dump(args.json, args, records, total)
    return records


if __name__ == "__main__":
    main()
