"""Training speed of keras_ambient per Keras backend, against plain PyTorch.

Prints tables (and, with `--json out.json`, writes every measurement) for:

1. `train`: training-step throughput (steps/s) of the library's
   `AmbientDiffusion.fit` with `ka.networks.UNet` at 8x8x1 (digits-like) and
   32x32x3, and with `ka.networks.MLPDenoiser` on 2-D data, on each Keras
   backend, against the plain-PyTorch reference of benchmarks/torch_reference.py
   (the same networks, tested equal by tests/test_torch_reference.py; the same
   ambient loss, `torch.optim.Adam`, EMA), eager and optionally `torch.compile`d;
2. `jit`: what `compile(jit_compile="auto")` resolves to on each backend, and
   steps/s with the other setting (torch: `torch.compile`, in its own process
   with a timeout); on JAX also `fit` without `TerminateOnNonFinite`;
3. `consistency`: steps/s with `consistency_weight=1` (library defaults, and
   the cheap `start="ambient", num_steps=1`) vs `0`; with the default
   `consistency_interval=3` the steps/s are the mean over steps, one in three
   with the loss;
4. `memory`: peak host RSS (and device peak on a GPU) of a training step.

Sampling speed is measured by benchmarks/sampling_speed.py.

Each backend runs in its own process (`--worker jax|torch|tensorflow|plain`);
the set of workers is repeated `--repeats` times, interleaved, and medians are
printed, so load drift on a shared machine affects every side alike. Every
worker uses `--threads` CPU threads. Steps/s exclude the first `fit` call
(compilation) and the first batch of the timed call. On a GPU the plain
reference runs on CUDA; `--dtype-policy mixed_bfloat16` sets Keras's policy and
wraps the plain loss in `torch.autocast(bfloat16)`.

Usage:
    python benchmarks/speed.py --quick                       # digits8 + mlp2d, small
    python benchmarks/speed.py --backends jax,torch --repeats 3 --json speed.json
    python benchmarks/speed.py --sections train --nets digits8,mlp2d --quick \
        --backends torch,torch-generic --repeats 2     # fast paths on vs off (before/after)
    python benchmarks/speed.py --sections train --nets mlp2d --quick \
        --backends torch,torch-noema,torch-bare --repeats 3  # what AmbientDiffusion adds
    python benchmarks/speed.py --sections train,consistency --nets img32 \
        --batch 128 --dtype-policy mixed_bfloat16            # the GPU check's rows

This is a benchmark, not a test: nothing is asserted about the figures.
"""

import argparse
import json
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # bench_utils; this checkout's keras_ambient

import bench_utils as bu  # noqa: E402

SECTIONS = ("train", "jit", "consistency", "memory")
NETS = ("digits8", "img32", "mlp2d")
SIGMA_N = 0.2
SIGMA_DATA = 0.5
LR = 2e-4

PRESETS = {
    "quick": dict(
        repeats=1, warmup=2, eager_steps=3, nets="digits8,mlp2d", jit_nets="mlp2d",
        cons_nets="mlp2d",
        digits8=dict(base_channels=16, batch=32, steps=8),
        img32=dict(base_channels=16, batch=16, steps=4),
        mlp2d=dict(hidden_units=128, batch=256, steps=60),
        memory_batch=64, memory_base=16, memory_steps=1, compile_timeout=150,
    ),
    "default": dict(
        repeats=2, warmup=2, eager_steps=4, nets="digits8,img32,mlp2d",
        jit_nets="digits8,mlp2d", cons_nets="digits8,mlp2d",
        digits8=dict(base_channels=32, batch=64, steps=12),
        img32=dict(base_channels=32, batch=32, steps=6),
        mlp2d=dict(hidden_units=256, batch=256, steps=100),
        memory_batch=64, memory_base=32, memory_steps=2, compile_timeout=300,
    ),
}
# JAX with jit_compile=False dispatches every op from Python: minutes for a
# U-Net step on CPU, so it is only measured on these nets.
JAX_EAGER_NETS = ("mlp2d",)
WORKER = None  # this process's worker name, in a worker ("torch-nhwc": channels-last U-Nets)


# ------------------------------------------------------------ Keras side
def _keras_model(net, cfg, cw=0.0, jit_compile="auto", consistency=None):
    import keras

    import keras_ambient as ka

    keras.utils.set_random_seed(0)
    c = cfg[net]
    if net == "mlp2d":
        network = ka.networks.MLPDenoiser(data_dim=2, hidden_units=c["hidden_units"],
                                          num_blocks=3, seed=0)
    else:
        network = ka.networks.UNet(**bu.unet_kwargs(net, c["base_channels"], WORKER))
    if WORKER is not None and WORKER.endswith("-bare"):
        model = bare_model(network)
        model.compile(optimizer=keras.optimizers.Adam(LR), jit_compile=jit_compile)
        return model
    no_ema = WORKER is not None and WORKER.endswith("-noema")  # what the EMA costs
    model = ka.AmbientDiffusion(
        network=network, sigma_n=SIGMA_N, sigma_data=SIGMA_DATA, consistency_weight=cw,
        consistency_loss=None if consistency is None else ka.losses.ConsistencyLoss(**consistency),
        seed=0, **({"ema_decay": None} if no_ema else {}),
    )
    model.compile(optimizer=keras.optimizers.Adam(LR), jit_compile=jit_compile)
    return model


def bare_model(network, sigma_n=SIGMA_N, sigma_data=SIGMA_DATA, seed=0):
    """The yardstick of the `*-bare` workers: a plain `keras.Model` whose loss is the
    library's ambient loss on the library's denoiser (on torch through the same traced
    path), with nothing else of `AmbientDiffusion`: no EMA, bad-sample checks, batch
    handling, loss trackers or callbacks. Keras's own `fit` with the same loss: the
    steps/s `AmbientDiffusion` would reach if what it adds cost nothing."""
    import keras

    import keras_ambient as ka

    class BareAmbient(keras.Model):
        def __init__(self):
            super().__init__()
            self.denoiser = ka.layers.EDMDenoiser(network, sigma_data=sigma_data)
            self.ambient_loss = ka.losses.AmbientLoss(sigma_data=sigma_data)
            self.seed_generator = keras.random.SeedGenerator(seed)

        @property
        def network(self):
            return self.denoiser.network

        def call(self, y):
            return y

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            sigma_n_batch = keras.ops.full((keras.ops.shape(x)[0],), sigma_n)
            out = self.ambient_loss(self.denoiser, x, sigma_n_batch, seed=self.seed_generator,
                                    training=training)
            return keras.ops.mean(out.loss)

    model = BareAmbient()
    shape = tuple(network.inputs[0].shape[1:])
    model.denoiser([keras.ops.zeros((1,) + shape), keras.ops.ones((1,))])  # built before fit
    return model


def _default_consistency_weight():
    import inspect

    import keras_ambient as ka

    return inspect.signature(ka.AmbientDiffusion).parameters["consistency_weight"].default


def _trainable_params(model):
    import numpy as np

    return int(sum(np.prod(w.shape) for w in model.network.trainable_weights))


def _time_fit(model, x, batch, steps, warmup, plain_fit=False):
    """Returns (steps/s, warm-up seconds), timed from the start of batch `skip`
    to the end of training. `plain_fit` bypasses the library's `fit` (and so
    its TerminateOnNonFinite callback). `warmup=0`: no warm-up call (the model
    has been trained at this batch size already)."""
    import keras

    fit = (lambda *a, **k: keras.Model.fit(model, *a, **k)) if plain_fit else model.fit
    t0 = time.perf_counter()
    if warmup:
        fit(x[: warmup * batch], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    warm = time.perf_counter() - t0
    skip = 1 if steps > 2 else 0
    marks = {}

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, b, logs=None):
            if b == skip:
                marks["start"] = time.perf_counter()

        def on_train_end(self, logs=None):
            marks["end"] = time.perf_counter()

    fit(x[: steps * batch], batch_size=batch, epochs=1, verbose=0, shuffle=False,
        callbacks=[Timer()])
    return (steps - skip) / (marks["end"] - marks["start"]), warm


def _measure(out, rec, model_fn, x, batch, steps, warmup, **fit_kw):
    """Appends one record (or its error) for `model_fn()` timed with `_time_fit`."""
    try:
        model = model_fn()
        sps, warm = _time_fit(model, x, batch, steps, warmup, **fit_kw)
        out.append(dict(rec, jit=str(model.jit_compile), steps_per_s=sps, warmup_s=warm,
                        params=_trainable_params(model)))
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        out.append(dict(rec, error=repr(e)[:300]))
    bu.flush(out)


def _keras_train_task(args, cfg, out):
    import keras

    bu.setup_threads(args.threads)
    backend = args.worker  # "torch-generic": the library's fast paths off
    bu.generic_paths(backend)
    for net in args.nets:
        batch, steps, warmup = cfg[net]["batch"], cfg[net]["steps"], cfg["warmup"]
        x = bu.make_data(net, batch * max(steps, warmup), SIGMA_N)
        rec = dict(backend=backend, net=net, batch=batch, policy=args.dtype_policy)
        if "train" in args.sections or "jit" in args.sections:
            _measure(out, dict(rec, kind="train", variant="auto"),
                     lambda: _keras_model(net, cfg), x, batch, steps, warmup)
        if "jit" in args.sections and net in args.jit_nets:
            auto = [r for r in out if r.get("net") == net and r.get("kind") == "train"]
            other = not (auto and auto[-1].get("jit") == "True")  # what "auto" resolved to
            kb = bu.keras_backend_of(backend)
            skip = (kb == "torch" and other) or (
                kb == "jax" and not other and net not in JAX_EAGER_NETS)
            if not skip:
                _measure(out, dict(rec, kind="jit", variant=f"jit={other}"),
                         lambda: _keras_model(net, cfg, jit_compile=other), x, batch,
                         steps if other else cfg["eager_steps"], 1)
            if kb == "jax":
                _measure(out, dict(rec, kind="jit", variant="auto, no TerminateOnNonFinite"),
                         lambda: _keras_model(net, cfg), x, batch, steps, warmup,
                         plain_fit=True)
        if "consistency" in args.sections and net in args.cons_nets:
            _measure(out, dict(rec, kind="consistency", variant="cw=1"),
                     lambda: _keras_model(net, cfg, cw=1.0), x, batch, steps, warmup)
            # The cheapest unbiased setting: the ambient forward pass is the target.
            if not args.no_cheap:
                _measure(out, dict(rec, kind="consistency_cheap",
                                   variant="cw=1 start=ambient num_steps=1"),
                         lambda: _keras_model(net, cfg, cw=1.0,
                                              consistency={"start": "ambient", "num_steps": 1}),
                         x, batch, steps, warmup)
        keras.backend.clear_session()


def _keras_memory_task(args, cfg, out, consistency=False):
    """Peak host memory of a step; with `consistency`, the library's default consistency
    loss and weight (a separate process: ru_maxrss only grows)."""
    backend = bu.setup_threads(args.threads)
    mem_cfg = dict(cfg, img32=dict(base_channels=cfg["memory_base"], batch=0))
    batch = cfg["memory_batch"]
    x = bu.make_data("img32", batch * (1 + cfg["memory_steps"]), SIGMA_N)
    cw = _default_consistency_weight() if consistency else 0.0
    model = _keras_model("img32", mem_cfg, cw=cw)
    model.build()
    device = bu.device_peak_reset(backend)
    before = bu.rss_mb()
    t0 = time.perf_counter()
    model.fit(x[:batch], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    warm = time.perf_counter() - t0
    after_warm = bu.rss_mb()
    model.fit(x[batch:], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    out.append(dict(
        backend=backend, net="img32", kind="memory", batch=batch, consistency=bool(consistency),
        base_channels=cfg["memory_base"], params=_trainable_params(model),
        rss_before_mb=before, rss_after_warmup_mb=after_warm, rss_after_steps_mb=bu.rss_mb(),
        warmup_s=warm, device_peak_mb=bu.device_peak(backend, device)))


def _keras_torch_compile_task(args, cfg, out):
    """Keras on torch with jit_compile=True (torch.compile of the train step)."""
    backend = bu.setup_threads(args.threads)
    for net in args.jit_nets:
        batch, steps = cfg[net]["batch"], cfg[net]["steps"]
        x = bu.make_data(net, batch * max(steps, cfg["warmup"]), SIGMA_N)
        _measure(out, dict(backend=backend, net=net, batch=batch, kind="jit", variant="jit=True"),
                 lambda: _keras_model(net, cfg, jit_compile=True), x, batch, steps,
                 cfg["warmup"])


# ------------------------------------------------------- plain PyTorch side
# The networks, loss, trainer and sampler live in benchmarks/torch_reference.py
# (tested equal to the Keras networks by tests/test_torch_reference.py).
def _torch_setup(args, net, cfg, base_channels=None, compile_loss=False):
    import torch
    import torch_reference as ref

    device = "cuda" if torch.cuda.is_available() else "cpu"
    c = cfg[net]
    tnet = ref.build_net(net, base_channels=base_channels or c.get("base_channels"),
                         hidden_units=c.get("hidden_units")).to(device)
    autocast = torch.bfloat16 if args.dtype_policy == "mixed_bfloat16" else None
    trainer = ref.Trainer(tnet, lr=LR, compile_loss=compile_loss, autocast_dtype=autocast)
    return tnet, trainer, device


def _torch_time_train(trainer, x, batch, steps, warmup, device):
    import torch

    xt = torch.from_numpy(x).to(device)
    sig = torch.full((batch,), SIGMA_N, device=device)
    if xt.dim() == 4:
        xt = xt.permute(0, 3, 1, 2).contiguous()  # NHWC data -> NCHW
    t0 = time.perf_counter()
    for i in range(warmup):
        trainer.step(xt[i * batch:(i + 1) * batch], sig).item()
    warm = time.perf_counter() - t0
    skip = 1 if steps > 2 else 0
    for i in range(steps):
        if i == skip:
            t0 = time.perf_counter()
        trainer.step(xt[i * batch:(i + 1) * batch], sig).item()  # the loss read of fit's logs
    return (steps - skip) / (time.perf_counter() - t0) if steps else None, warm


def _plain_train_task(args, cfg, out, compile_loss=False):
    import torch_reference as ref

    bu.setup_threads(args.threads, plain=True)
    backend = "plain_torch_compile" if compile_loss else "plain_torch"
    for net in args.jit_nets if compile_loss else args.nets:
        batch, steps = cfg[net]["batch"], cfg[net]["steps"]
        x = bu.make_data(net, batch * max(steps, cfg["warmup"]), SIGMA_N)
        rec = dict(backend=backend, net=net, batch=batch, kind="train", variant="auto",
                   policy=args.dtype_policy)
        try:
            tnet, trainer, device = _torch_setup(args, net, cfg, compile_loss=compile_loss)
            sps, warm = _torch_time_train(trainer, x, batch, steps, cfg["warmup"], device)
            out.append(dict(rec, jit=str(compile_loss), steps_per_s=sps, warmup_s=warm,
                            params=ref.num_params(tnet), device=device))
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            out.append(dict(rec, error=repr(e)[:300]))
        bu.flush(out)


def _plain_memory_task(args, cfg, out):
    import torch_reference as ref

    bu.setup_threads(args.threads, plain=True)
    batch = cfg["memory_batch"]
    x = bu.make_data("img32", batch * (1 + cfg["memory_steps"]), SIGMA_N)
    tnet, trainer, device = _torch_setup(args, "img32", cfg, base_channels=cfg["memory_base"])
    dev = bu.device_peak_reset("plain")
    before = bu.rss_mb()
    t0 = time.perf_counter()
    _torch_time_train(trainer, x, batch, 0, 1, device)
    warm = time.perf_counter() - t0
    after_warm = bu.rss_mb()
    _torch_time_train(trainer, x[batch:], batch, cfg["memory_steps"], 0, device)
    out.append(dict(
        backend="plain_torch", net="img32", kind="memory", batch=batch,
        base_channels=cfg["memory_base"], params=ref.num_params(tnet), rss_before_mb=before,
        rss_after_warmup_mb=after_warm, rss_after_steps_mb=bu.rss_mb(), warmup_s=warm,
        device_peak_mb=bu.device_peak("plain", dev)))


# ------------------------------------------------------------------ worker
def run_worker(args, cfg):
    out = []
    if args.worker != "plain" and args.dtype_policy != "float32":
        import keras

        keras.config.set_dtype_policy(args.dtype_policy)
    try:
        if args.worker == "plain":
            if args.task == "memory":
                _plain_memory_task(args, cfg, out)
            else:
                _plain_train_task(args, cfg, out, compile_loss=args.task == "compile")
        elif args.task in ("memory", "memory_cons"):
            _keras_memory_task(args, cfg, out, consistency=args.task == "memory_cons")
        elif args.task == "compile":
            _keras_torch_compile_task(args, cfg, out)
        else:
            _keras_train_task(args, cfg, out)
    finally:
        bu.flush(out)


def _worker_argv(args):
    argv = ["--sections", ",".join(args.sections), "--nets", ",".join(args.nets),
            "--jit-nets", ",".join(args.jit_nets), "--cons-nets", ",".join(args.cons_nets),
            "--dtype-policy", args.dtype_policy] + (["--no-cheap"] if args.no_cheap else [])
    for key in ("batch", "base_channels", "steps"):
        if getattr(args, key) is not None:
            argv += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    return argv + (["--quick"] if args.quick else [])


# -------------------------------------------------------------- reporting
def _ratio_cell(v, ref):
    return f"{bu.fmt(v)} ({bu.fmt(v / ref, 2)})" if v and ref else bu.fmt(v)


def _train_table(records, args, cfg):
    backends = args.backends
    header = ["net (batch)", "params keras / torch", "plain torch"]
    header += ["plain torch.compile"] if args.torch_compile else []
    header += [f"{b} (ratio)" for b in backends]
    rows = []
    for net in args.nets:
        ref = bu.value(records, "steps_per_s", backend="plain_torch", net=net, kind="train")
        kp = bu.value(records, "params", net=net, kind="train", backend=backends[0])
        tp = bu.value(records, "params", backend="plain_torch", net=net, kind="train")
        row = [f"{net} ({cfg[net]['batch']})", f"{bu.fmt(kp, 0)} / {bu.fmt(tp, 0)}", bu.fmt(ref)]
        if args.torch_compile:
            row.append(bu.fmt(bu.value(records, "steps_per_s", backend="plain_torch_compile",
                                       net=net)))
        row += [_ratio_cell(bu.value(records, "steps_per_s", backend=b, net=net, kind="train"), ref)
                for b in backends]
        rows.append(row)
    return ("Training throughput, steps/s (median of repeats); ratio = keras backend / plain "
            f"PyTorch eager; library fit, jit_compile='auto', consistency off, policy "
            f"{args.dtype_policy}\n" + bu.table(header, rows))


def _jit_table(records, args):
    rows = []
    for b in args.backends:
        for net in args.jit_nets:
            auto = bu.select(records, backend=b, net=net, kind="train", variant="auto")
            sps_auto = bu.value(records, "steps_per_s", backend=b, net=net, kind="train")
            w_auto = bu.value(records, "warmup_s", backend=b, net=net, kind="train")
            variants = sorted({r["variant"] for r in bu.select(records, backend=b, net=net,
                                                                 kind="jit")})
            for variant in variants:
                match = dict(backend=b, net=net, kind="jit", variant=variant)
                sps = bu.value(records, "steps_per_s", **match)
                err = [r["error"] for r in bu.select(records, **match) if "error" in r]
                rows.append([
                    b, net, f"auto -> {auto[0].get('jit', '?') if auto else '?'}",
                    bu.fmt(sps_auto), bu.fmt(w_auto), variant,
                    bu.fmt(sps) if not err else "failed: " + err[0][:80],
                    bu.fmt(bu.value(records, "warmup_s", **match)),
                    bu.fmt(sps / sps_auto, 2) if sps and sps_auto else "—"])
    return ("\njit_compile: steps/s and warm-up (first fit call incl. compile, s)\n"
            + bu.table(["backend", "net", "auto resolves to", "auto steps/s", "auto warm-up",
                        "other setting", "steps/s", "warm-up", "other / auto"], rows))


def _consistency_table(records, args):
    rows = []
    for b in args.backends:
        for net in args.cons_nets:
            s0, s1, s2 = (bu.value(records, "steps_per_s", backend=b, net=net, kind=k)
                          for k in ("train", "consistency", "consistency_cheap"))
            rows.append([b, net, bu.fmt(s0), bu.fmt(s1),
                         bu.fmt(s0 / s1, 2) if s0 and s1 else "—", bu.fmt(s2),
                         bu.fmt(s0 / s2, 2) if s0 and s2 else "—"])
    header = ["backend", "net", "cw=0", "defaults", "ratio", "cheap", "ratio"]
    if args.no_cheap:
        header, rows = header[:5], [row[:5] for row in rows]
    return ("\nConsistency overhead (jit 'auto'): steps/s; defaults = the library's "
            "ConsistencyLoss; cheap = start='ambient', num_steps=1; ratio = time per step "
            "vs cw=0\n" + bu.table(header, rows))


def _memory_table(records, args, cfg):
    rows = []
    variants = [(b, c) for b in args.backends for c in (False, True)] + [("plain_torch", False)]
    for b, cons in variants:
        match = dict(backend=b, kind="memory")
        if b != "plain_torch":
            match["consistency"] = cons
        if not bu.select(records, **match):
            continue
        before, warm, after, dev = (bu.value(records, k, **match) for k in (
            "rss_before_mb", "rss_after_warmup_mb", "rss_after_steps_mb", "device_peak_mb"))
        rows.append([b, "yes" if cons else "no", bu.fmt(bu.value(records, "params", **match), 0),
                     bu.fmt(before, 0), bu.fmt(warm, 0), bu.fmt(after, 0),
                     bu.fmt(after - before, 0) if after and before else "—",
                     bu.fmt(dev, 0) if dev else "n/a (CPU)"])
    return (f"\nMemory, training step, img32 U-Net base {cfg['memory_base']}, batch "
            f"{cfg['memory_batch']}: HOST peak RSS (MiB, ru_maxrss), fresh process; consistency: "
            f"the library's default loss and weight\n"
            + bu.table(["backend", "consistency", "params", "before", "after warm-up", "after steps",
                        "peak - before", "device peak"], rows))


def report(records, args, cfg):
    out = []
    if "train" in args.sections:
        out.append(_train_table(records, args, cfg))
    if "jit" in args.sections:
        out.append(_jit_table(records, args))
    if "consistency" in args.sections:
        out.append(_consistency_table(records, args))
    if "memory" in args.sections:
        out.append(_memory_table(records, args, cfg))
    errors = [r for r in records if "error" in r]
    if errors:
        out.append("\nErrors / failures:")
        out += [f"- {r.get('backend')} {r.get('net', r.get('task', ''))} "
                f"{r.get('variant', '')}: {r['error']}" for r in errors]
    return "\n".join(out)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(bu.KERAS_BACKENDS),
                        help="Keras backends; 'torch-generic' (etc.): that backend with "
                        "keras_ambient's backend fast paths off (utils/backend_fast_paths.py); "
                        "'torch-nhwc' (etc.): U-Nets built channels last; 'torch-bare' (etc.): "
                        "a plain keras.Model with the library's denoiser and ambient loss and "
                        "nothing else (train section), Keras's own cost; 'torch-noema' (etc.): "
                        "AmbientDiffusion(ema_decay=None)")
    parser.add_argument("--quick", action="store_true", help="few steps, small sizes")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"of {','.join(SECTIONS)}")
    parser.add_argument("--nets", default=None, help=f"subset of {','.join(NETS)}")
    parser.add_argument("--jit-nets", default=None, help="nets of the jit section")
    parser.add_argument("--cons-nets", default=None, help="nets of the consistency section")
    parser.add_argument("--batch", type=int, default=None, help="batch size of every net")
    parser.add_argument("--base-channels", type=int, default=None, help="U-Net base channels")
    parser.add_argument("--steps", type=int, default=None, help="timed steps of every net")
    parser.add_argument("--dtype-policy", default="float32",
                        choices=("float32", "mixed_bfloat16", "mixed_float16"))
    parser.add_argument("--no-cheap", action="store_true",
                        help="consistency section: only the library's defaults")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also try torch.compile (Keras jit_compile=True on torch, and the"
                        " plain reference), each in a process with a timeout")
    parser.add_argument("--timeout", type=float, default=None, help="per-worker timeout (s)")
    parser.add_argument("--json", default=None, help="write all records to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--task", default="train", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = {k: (dict(v) if isinstance(v, dict) else v)
           for k, v in PRESETS["quick" if args.quick else "default"].items()}
    for key in ("nets", "jit_nets", "cons_nets"):
        if getattr(args, key) is None:
            setattr(args, key, cfg[key])
    for key in ("backends", "sections", "nets", "jit_nets", "cons_nets"):
        setattr(args, key, [s for s in getattr(args, key).split(",") if s])
    for net in NETS:
        for key in ("batch", "base_channels", "steps"):
            if getattr(args, key) is not None and (key != "base_channels" or net != "mlp2d"):
                cfg[net][key] = getattr(args, key)
    if args.base_channels is not None:
        cfg["memory_base"] = args.base_channels
    if args.batch is not None:
        cfg["memory_batch"] = args.batch
    return args, cfg


def main(argv=None):
    global WORKER
    args, cfg = _parse(argv)
    if args.worker:
        WORKER = args.worker
        return run_worker(args, cfg)
    repeats = args.repeats or cfg["repeats"]
    timeout = args.timeout or (300 if args.quick else 900)
    records = []
    t_start = time.perf_counter()
    for rep in range(repeats):
        print(f"repeat {rep + 1}/{repeats}", flush=True)
        jobs = []
        if {"train", "jit", "consistency"} & set(args.sections):
            jobs += [(b, "train") for b in args.backends] + [("plain", "train")]
        if "memory" in args.sections:
            jobs += [(b, "memory") for b in args.backends] + [("plain", "memory")]
            jobs += [(b, "memory_cons") for b in args.backends]
        if args.torch_compile and ("jit" in args.sections or "train" in args.sections):
            if "torch" in args.backends and "jit" in args.sections:
                jobs.append(("torch", "compile"))
            jobs.append(("plain", "compile"))
        for worker, task in jobs:
            t = cfg["compile_timeout"] if task == "compile" else timeout
            for r in bu.spawn(__file__, worker, task, _worker_argv(args), args.threads, t):
                r["repeat"] = rep
                records.append(r)
    text = report(records, args, cfg)
    total = time.perf_counter() - t_start
    print("\n" + text)
    print(f"\n(total {total:.0f} s, {repeats} repeat(s), {args.threads} thread(s) per worker,"
          f" {'quick' if args.quick else 'default'} sizes)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(config=cfg, args=vars(args), records=records, total_s=total), f,
                      indent=1)
    return records


if __name__ == "__main__":
    main()
