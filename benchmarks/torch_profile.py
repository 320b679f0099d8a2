"""Where a Keras-on-torch training step of keras_ambient goes (CPU profile).

Trains the `speed.py --quick` configurations (`--nets digits8,mlp2d`:
digits8 U-Net base 16 at batch 32, 2-D MLP width 128 at batch 256,
`consistency_weight=0`, Adam, EMA) through the library's `fit` on the torch
backend and splits the time of one step three ways:

1. wall time per phase, without a profiler: each phase (the fit loop and its
   callbacks, Keras's `train_step`, the library's `compute_loss`, the ambient
   loss, the network's forward call, `Tensor.backward`, the optimizer's
   `apply`, the EMA update, the metric trackers) is wrapped by a timer that
   keeps inclusive and exclusive (minus its timed children) time;
2. aten operators per phase (`torch.profiler`): how many operators each phase
   dispatches and their CPU time (the profiler inflates it: read it as a
   share, not an absolute);
3. optionally (`--cprofile`) the Python functions with the most own time.

Then it runs the plain-PyTorch reference (benchmarks/torch_reference.py: the
same network, loss, `torch.optim.Adam` and EMA) with the same timers, so each
Keras phase has its plain counterpart, and prints Markdown tables. The wall
per-step of the timed fit (no timers) and of the reference give the ratio of
`speed.py`.

The `torch-generic` worker turns the library's backend fast paths off
(`keras_ambient.utils.backend_fast_paths.set_enabled(False)`): the "before"
of the traced loss and the fused EMA update, side by side.

Each side (Keras with the fast paths, `torch-generic` without them, plain
PyTorch) and net runs in its own process (`--worker`), as in speed.py.

Usage:
    python benchmarks/torch_profile.py                       # both nets, fast vs generic
    python benchmarks/torch_profile.py --nets digits8 --backends torch
    KERAS_BACKEND=torch python benchmarks/torch_profile.py --worker torch --task mlp2d \
        --cprofile 30                                        # one side, with cProfile

This is a benchmark, not a test: nothing is asserted about the figures.
"""

import argparse
import collections
import contextlib
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # bench_utils, speed; this checkout's keras_ambient

import bench_utils as bu  # noqa: E402

# Phase names, in display order; "network forward" etc. are exclusive times
# (their timed children subtracted).
PHASES = (
    "fit loop + callbacks",      # Keras's fit loop, TerminateOnNonFinite, the data iterator
    "Keras train_step (rest)",   # model(x, training=True), zero_grad, loss tracker, ...
    "compute_loss (library)",    # bad-sample checks, masking, casts, weighting, reduction
    "ambient loss: draws",       # sigma_t (truncated log-normal) and the noise
    "ambient loss math",         # x_t, y_hat, weights (eager: AmbientLoss._loss_at minus D)
    "network forward",           # eager: EDMDenoiser call, preconditioning + network
    "traced: loss math + network forward",  # fast path: _loss_at incl. D as one torch trace
    "backward",                  # Tensor.backward
    "optimizer (Adam apply)",    # optimizer.apply
    "EMA update",                # _update_ema (incl. ema_step)
    "metric trackers",           # update_state of the library's trackers + compute_metrics
)
PLAIN_PHASES = ("plain: loss + forward", "plain: backward", "plain: Adam step", "plain: EMA",
                "plain: rest (zero_grad, loop, .item())")


class Timers:
    """Inclusive / exclusive wall time of nested, wrapped calls."""

    def __init__(self):
        self.incl = collections.defaultdict(float)
        self.excl = collections.defaultdict(float)
        self.calls = collections.defaultdict(int)
        self._stack = []
        self.label = None  # a context factory (torch.profiler.record_function) or None

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            self._stack.append([name, 0.0])
            ctx = self.label(name) if self.label is not None else contextlib.nullcontext()
            t0 = time.perf_counter()
            try:
                with ctx:
                    return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                _, child = self._stack.pop()
                self.incl[name] += dt
                self.excl[name] += dt - child
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][1] += dt

        timed.__wrapped__ = fn
        return timed

    def reset(self):
        self.incl.clear()
        self.excl.clear()
        self.calls.clear()


class _TimedCallable:
    def __init__(self, timers, name, fn):
        self._fn = timers.wrap(name, fn)
        self._orig = fn

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._orig, name)


@contextlib.contextmanager
def instrument(model, timers):
    """Wraps the phases of `model`'s training step (instance attributes; the
    torch `Tensor.backward` globally) for the duration of the block."""
    import torch

    saved = []

    def patch(obj, attr, new):
        saved.append((obj, attr, vars(obj).get(attr, _MISSING)))
        setter = type.__setattr__ if isinstance(obj, type) else object.__setattr__
        setter(obj, attr, new)

    patch(model, "train_function", timers.wrap("train_function", model.train_function))
    patch(model, "train_step", timers.wrap("Keras train_step (rest)", model.train_step))
    patch(model, "compute_loss", timers.wrap("compute_loss (library)", model.compute_loss))
    patch(model, "_update_ema", timers.wrap("EMA update", model._update_ema))
    patch(model, "compute_metrics", timers.wrap("metric trackers", model.compute_metrics))
    opt = model.optimizer
    patch(opt, "apply", timers.wrap("optimizer (Adam apply)", opt.apply))
    for tracker in (model.ambient_loss_tracker, model.consistency_loss_tracker,
                    model.bad_samples_tracker, model._loss_tracker):
        patch(tracker, "update_state", timers.wrap("metric trackers", tracker.update_state))
    # The ambient loss: its random draws (AmbientLoss.__call__), the rest
    # (`_loss_at`) and the denoiser it calls; with the fast paths, the rest and
    # the denoiser run as one trace (utils/backend_fast_paths.training_function).
    from keras_ambient.losses.ambient_loss import AmbientLoss
    from keras_ambient.utils import backend_fast_paths

    patch(AmbientLoss, "__call__", timers.wrap("ambient loss: draws", AmbientLoss.__call__))
    loss_at = AmbientLoss._loss_at

    def timed_loss_at(self, denoiser, *args, **kwargs):
        return loss_at(self, _TimedCallable(timers, "network forward", denoiser), *args, **kwargs)

    timed_loss_at.__name__ = loss_at.__name__
    patch(AmbientLoss, "_loss_at", timers.wrap("ambient loss math", timed_loss_at))
    training_function = backend_fast_paths.training_function

    def timed_training_function(*args, **kwargs):
        return timers.wrap("traced: loss math + network forward",
                           training_function(*args, **kwargs))

    patch(backend_fast_paths, "training_function", timed_training_function)
    backward = torch.Tensor.backward
    torch.Tensor.backward = timers.wrap("backward", backward)
    try:
        yield
    finally:
        torch.Tensor.backward = backward
        for obj, attr, old in reversed(saved):
            if isinstance(obj, type):
                type.__setattr__(obj, attr, old)  # (class attributes are all defined)
            elif old is _MISSING:
                object.__delattr__(obj, attr)
            else:
                object.__setattr__(obj, attr, old)


_MISSING = object()


def _step_timer(timers):
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Resets `timers` at the start of batch 1 and times from there to the end."""

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 1:
                timers.reset()
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.elapsed = time.perf_counter() - self.start

    return StepTimer()


def _fit(model, x, batch, callbacks=()):
    model.fit(x, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=list(callbacks))


def _profile_ops(run, timers):
    """aten operators per phase of `run()`: {phase: [count, cpu seconds]}."""
    from torch.profiler import ProfilerActivity, profile, record_function

    timers.label = record_function
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
    finally:
        timers.label = None
    names = set(PHASES) | set(PLAIN_PHASES) | {"train_function"}
    per = collections.defaultdict(lambda: [0, 0.0])
    for ev in prof.events():
        if not ev.name.startswith("aten::"):
            continue
        parent, top = ev.cpu_parent, True
        while parent is not None and top:
            top = not parent.name.startswith("aten::")
            parent = parent.cpu_parent if top else parent
        if not top:
            continue  # counted in its parent operator
        phase, parent = "untimed", ev.cpu_parent
        while parent is not None:
            if parent.name in names:
                phase = parent.name
                break
            parent = parent.cpu_parent
        per[phase][0] += 1
        per[phase][1] += ev.cpu_time_total / 1e6
    return per


# ----------------------------------------------------------------- Keras
def keras_profile(net, args, cfg):
    import keras

    import speed
    from keras_ambient.utils import backend_fast_paths

    backend_fast_paths.set_enabled(not args.generic)
    c = cfg[net]
    batch, steps = c["batch"], args.steps or c["steps"]
    x = bu.make_data(net, batch * steps, speed.SIGMA_N)
    model = speed._keras_model(net, cfg)
    sps, _ = speed._time_fit(model, x, batch, steps, cfg["warmup"])

    timers = Timers()
    keras_cb = _step_timer(timers)
    with instrument(model, timers):
        _fit(model, x, batch, [keras_cb])
    wall = dict(timers.excl)
    n = timers.calls["train_function"]
    # The fit loop: the time from the start of batch 1 to the end of training
    # outside the train function (as speed.py times it).
    wall["fit loop + callbacks"] = keras_cb.elapsed - timers.incl["train_function"]
    wall["Keras train_step (rest)"] = wall.get("Keras train_step (rest)", 0.0) + wall.pop(
        "train_function", 0.0)

    ops = _profile_ops(lambda: _with(model, timers, lambda: _fit(model, x[: 4 * batch], batch)),
                       timers)
    ops_steps = 4
    ops["Keras train_step (rest)"] = [a + b for a, b in zip(
        ops.get("Keras train_step (rest)", [0, 0.0]), ops.pop("train_function", [0, 0.0]))]
    ops["fit loop + callbacks"] = [a + b for a, b in zip(
        ops.get("fit loop + callbacks", [0, 0.0]), ops.pop("untimed", [0, 0.0]))]

    if args.cprofile:
        _cprofile(lambda: _fit(model, x, batch), args.cprofile, n)
    keras.backend.clear_session()
    return dict(sps=sps, n=n, wall={k: v / n for k, v in wall.items()},
                ops={k: (v[0] / ops_steps, v[1] / ops_steps) for k, v in ops.items()},
                params=speed._trainable_params(model))


def _with(model, timers, fn):
    with instrument(model, timers):
        return fn()


def _cprofile(run, top, n):
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    print(f"\ncProfile, {n} steps, top {top} by own time (cProfile slows Python ~2x):")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


# ----------------------------------------------------------------- plain
def plain_profile(net, args, cfg):
    import torch
    import torch_reference as ref

    import speed

    c = cfg[net]
    batch, steps = c["batch"], args.steps or c["steps"]
    x = bu.make_data(net, batch * steps, speed.SIGMA_N)
    tnet = ref.build_net(net, base_channels=c.get("base_channels"), hidden_units=c.get("hidden_units"))
    trainer = ref.Trainer(tnet, lr=speed.LR)
    sps, _ = speed._torch_time_train(trainer, x, batch, steps, cfg["warmup"], "cpu")

    timers = Timers()
    xt = torch.from_numpy(x)
    if xt.dim() == 4:
        xt = xt.permute(0, 3, 1, 2).contiguous()
    sig = torch.full((batch,), speed.SIGMA_N)
    trainer.loss_fn = timers.wrap("plain: loss + forward", trainer.loss_fn)
    trainer.opt.step = timers.wrap("plain: Adam step", trainer.opt.step)
    step = trainer.step

    def run(n_steps):
        for i in range(n_steps):
            timers.wrap("plain step", step)(xt[i * batch:(i + 1) * batch], sig).item()

    backward = torch.Tensor.backward
    torch.Tensor.backward = timers.wrap("plain: backward", backward)
    lerp = torch._foreach_lerp_
    torch._foreach_lerp_ = timers.wrap("plain: EMA", lerp)
    try:
        t0 = time.perf_counter()
        run(steps)
        total = time.perf_counter() - t0
        wall = {k: timers.excl[k] / steps for k in PLAIN_PHASES[:4]}
        wall[PLAIN_PHASES[4]] = total / steps - sum(wall.values())
        ops = _profile_ops(lambda: run(4), timers)
    finally:
        torch.Tensor.backward = backward
        torch._foreach_lerp_ = lerp
    ops[PLAIN_PHASES[4]] = [a + b for a, b in zip(ops.pop("plain step", [0, 0.0]),
                                                   ops.pop("untimed", [0, 0.0]))]
    return dict(sps=sps, wall=wall, ops={k: (v[0] / 4, v[1] / 4) for k, v in ops.items()},
                params=ref.num_params(tnet))


# ---------------------------------------------------------------- report
def _phase_rows(side, phases, total, total_label):
    """One row per phase (wall ms, share, aten ops, their CPU ms), then the total row."""
    rows = []
    for ph in phases:
        w = side["wall"].get(ph, 0.0)
        cnt, cpu = side["ops"].get(ph, (0, 0.0))
        rows.append([ph, f"{w * 1e3:.2f}", f"{100 * w / total:.0f}%", f"{cnt:.0f}",
                     f"{cpu * 1e3:.2f}"])
    rows.append([total_label, f"**{total * 1e3:.2f}**", "100%",
                 f"{sum(v[0] for v in side['ops'].values()):.0f}",
                 f"{sum(v[1] for v in side['ops'].values()) * 1e3:.2f}"])
    return rows


def report(net, cfg, k, p, generic):
    kw = k["wall"]
    tot_k = sum(kw.get(ph, 0.0) for ph in PHASES)
    tot_p = sum(p["wall"].values())
    rows = (_phase_rows(k, PHASES, tot_k, "**total (timed fit)**")
            + _phase_rows(p, PLAIN_PHASES, tot_p, "**plain total**"))
    c = cfg[net]
    size = f"base {c['base_channels']}" if "base_channels" in c else f"width {c['hidden_units']}"
    head = (f"\n### {net} ({size}, batch {c['batch']}), torch backend"
            f"{' (generic paths)' if generic else ''}: {k['sps']:.1f} steps/s vs plain "
            f"{p['sps']:.1f} (ratio {k['sps'] / p['sps']:.2f}); params {k['params']} / "
            f"{p['params']}\n")
    table = bu.table(["phase", "wall ms/step", "share", "aten ops/step",
                      "aten CPU ms/step (profiled)"], rows)
    # By category. The forward's aten CPU comes from the profiled run (inflated
    # by the profiler's per-op cost), so "machinery" = wall - aten is a lower bound.
    def w(*names):
        return sum(kw.get(n, 0.0) for n in names)

    def cpu(*names):
        return sum(k["ops"].get(n, (0, 0.0))[1] for n in names)

    fwd = ("network forward", "traced: loss math + network forward")
    summary = [
        ["network forward: aten operators (profiled CPU time)", f"{cpu(*fwd) * 1e3:.2f}"],
        ["network forward: Keras layer machinery (wall - aten, >= 0)",
         f"{max(w(*fwd) - cpu(*fwd), 0.0) * 1e3:.2f}"],
        ["backward (torch autograd of the recorded ops)", f"{w('backward') * 1e3:.2f}"],
        ["Keras: train_step and fit loop (incl. callbacks)",
         f"{w('Keras train_step (rest)', 'fit loop + callbacks') * 1e3:.2f}"],
        ["Keras: optimizer (Adam apply)", f"{w('optimizer (Adam apply)') * 1e3:.2f}"],
        ["keras_ambient: EMA update", f"{w('EMA update') * 1e3:.2f}"],
        ["keras_ambient: bad-sample checks, masking, casts, loss draws and math (eager part)",
         f"{w('compute_loss (library)', 'ambient loss: draws', 'ambient loss math') * 1e3:.2f}"],
        ["keras_ambient + Keras: metric trackers", f"{w('metric trackers') * 1e3:.2f}"],
    ]
    return head + table + "\n\nBy category (ms/step):\n" + bu.table(["category", "ms/step"], summary)


def main(argv=None):
    import speed

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", default="mlp2d,digits8")
    parser.add_argument("--backends", default="torch,torch-generic",
                        help="Keras workers: torch (fast paths on), torch-generic (off)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed fit (default: the quick preset's, at least 30)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cprofile", type=int, default=0, metavar="N",
                        help="with --worker: also print the N Python functions with the most "
                        "own time")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--worker", default=None,
                        help="run one side in this process: torch, torch-generic or plain")
    parser.add_argument("--task", default=None, help="with --worker: the net")
    args = parser.parse_args(argv)
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in speed.PRESETS["quick"].items()}
    for net in ("digits8", "mlp2d"):
        cfg[net]["steps"] = max(cfg[net]["steps"], 30)
        if args.steps:
            cfg[net]["steps"] = args.steps
    if args.worker:  # one side, one net, in this process
        bu.setup_threads(args.threads, plain=args.worker == "plain")
        net = args.task or args.nets.split(",")[0]
        if args.worker == "plain":
            rec = plain_profile(net, args, cfg)
        else:
            args.generic = args.worker.endswith("-generic")
            rec = keras_profile(net, args, cfg)
        bu.flush([dict(rec, worker=args.worker, net=net)], tag="PROFILE_JSON")
        return rec
    # Each side and net in a fresh process (as speed.py: the plain reference ran
    # about 2x slower in a process that had trained a Keras model before).
    out = []
    backends = [b for b in args.backends.split(",") if b]
    records = {}
    for net in args.nets.split(","):
        for worker in backends + ["plain"]:
            recs = bu.spawn(__file__, worker, net, ["--steps", str(cfg[net]["steps"])],
                            args.threads, args.timeout, tag="PROFILE_JSON")
            good = [r for r in recs if "sps" in r]
            records[(net, worker)] = good[0] if good else None
            if not good:
                print(f"  {worker} {net} failed: {recs[-1].get('error') if recs else '?'}")
        p = records[(net, "plain")]
        for worker in backends:
            k = records[(net, worker)]
            if k and p:
                out.append(report(net, cfg, k, p, worker.endswith("-generic")))
                print(out[-1], flush=True)
    rows = []
    for net in args.nets.split(","):
        p = records.get((net, "plain"))
        row = [net, bu.fmt(p["sps"]) if p else "—"]
        for worker in backends:
            k = records.get((net, worker))
            row.append(f"{k['sps']:.1f} ({k['sps'] / p['sps']:.2f})" if k and p else "—")
        rows.append(row)
    summary = ("\nSteps/s of the timed fit (ratio to plain PyTorch, each in its own process)\n"
               + bu.table(["net", "plain torch"] + [f"{b} (ratio)" for b in backends], rows))
    print(summary)
    return out + [summary]


if __name__ == "__main__":
    main()
