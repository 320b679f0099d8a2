"""Speed of keras_ambient per Keras backend, against a plain PyTorch reference.

Prints tables (and, with `--json out.json`, writes every measurement) for:

1. training-step throughput (steps/s) of the library's `AmbientDiffusion.fit`
   with `ka.networks.UNet` at 8x8x1 (digits-like) and 32x32x3, and with
   `ka.networks.MLPDenoiser` on 2-D data, on each Keras backend, against a
   plain PyTorch implementation written here (same layer widths, same ambient
   loss: EDM preconditioning, truncated log-normal `sigma_t > sigma_n`,
   "unbiased" weighting capped at 100, `torch.optim.Adam`, EMA of the weights),
   eager and optionally `torch.compile`d; parameter counts of both sides;
2. `jit_compile`: what Keras's `compile(jit_compile="auto")` resolves to on
   each backend, and steps/s with `jit_compile=True` vs `False` (torch: True
   means `torch.compile`, tried in its own process with a timeout); on JAX also
   `fit` without the library's `TerminateOnNonFinite` callback (which reads the
   loss every batch, i.e. a host sync per step);
3. consistency overhead: steps/s with `consistency_weight=1` vs `0`;
4. sampling: images/s of `model.generate(n, num_steps=18 | 40)` (Heun; goes
   through `predict_on_batch`, compiled per the backend's jit default) vs the
   same sampler calling `model.ema_denoiser([x, sigma])` eagerly; first-call
   (warm-up, compile) time reported separately;
5. memory of a training step (32x32 U-Net, batch 64): process peak RSS
   (`resource.getrusage(...).ru_maxrss`, HOST memory) before and after the
   warm-up and timed steps, in a fresh process per backend; on a GPU machine
   the device peak (torch.cuda.max_memory_allocated, jax
   `device.memory_stats()["peak_bytes_in_use"]`,
   `tf.config.experimental.get_memory_info("GPU:0")["peak"]`) is added.

Each backend needs its own process: the script re-runs itself with
`--worker BACKEND` (jax, torch, tensorflow, or `plain` for the PyTorch
reference) and collects one JSON line per worker. The whole set of workers is
repeated `--repeats` times, interleaved (jax, torch, tensorflow, plain, jax,
...), and medians are printed, so that load drift on a shared machine affects
every side alike. Every worker uses `--threads` CPU threads (default 1, set
for torch, TensorFlow and XLA alike). Steps/s exclude the first `fit` call
(compilation) and the first batch of the timed call (data-pipeline start-up).

Usage:
    python benchmarks/speed.py --quick                       # ~7 min, loaded 2-core CPU
    python benchmarks/speed.py                               # defaults: ~30+ min there
    python benchmarks/speed.py --backends jax,torch --repeats 5 --json speed.json
    python benchmarks/speed.py --sections train,consistency --nets digits8
    python benchmarks/speed.py --torch-compile               # also try torch.compile
    python benchmarks/speed.py --worker jax --task train      # one worker, JSON out

This is a benchmark, not a test: nothing is asserted about the figures.
"""

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

KERAS_BACKENDS = ("jax", "torch", "tensorflow")
SECTIONS = ("train", "jit", "consistency", "sampling", "memory")
NETS = ("digits8", "img32", "mlp2d")
SIGMA_N = 0.2
SIGMA_DATA = 0.5
LR = 2e-4

# Sizes. On a loaded 2-core CPU, --quick took ~7 min (12 with --torch-compile):
# compiling one U-Net train step takes 25-30 s on JAX and TensorFlow there.
PRESETS = {
    "quick": dict(
        repeats=1,
        warmup=2,
        eager_steps=3,
        nets="digits8,mlp2d",
        jit_nets="mlp2d",
        cons_nets="mlp2d",
        sample_net="mlp2d",
        digits8=dict(base_channels=16, batch=32, steps=8),
        img32=dict(base_channels=16, batch=16, steps=4),
        mlp2d=dict(hidden_units=128, batch=256, steps=60),
        sample_n=16,
        memory_batch=64,
        memory_base=16,
        memory_steps=1,
        compile_timeout=150,
    ),
    "default": dict(
        repeats=2,
        warmup=2,
        eager_steps=4,
        nets="digits8,img32,mlp2d",
        jit_nets="digits8,mlp2d",
        cons_nets="digits8,mlp2d",
        sample_net="digits8",
        digits8=dict(base_channels=32, batch=64, steps=12),
        img32=dict(base_channels=32, batch=32, steps=6),
        mlp2d=dict(hidden_units=256, batch=256, steps=100),
        sample_n=32,
        memory_batch=64,
        memory_base=32,
        memory_steps=2,
        compile_timeout=300,
    ),
}
# JAX with jit_compile=False dispatches every op from Python: minutes for a
# U-Net step on CPU, so it is only measured on these nets.
JAX_EAGER_NETS = ("mlp2d",)


# ----------------------------------------------------------------- utilities
def _set_threads_env(threads):
    """Environment for a worker: the same number of CPU threads everywhere."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["TF_NUM_INTRAOP_THREADS"] = str(threads)
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if threads == 1:
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = (
            flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()
    return env


def _rss_mb():
    """Process peak resident set size so far, in MiB (Linux: KiB units)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _net_config(cfg, net):
    return dict(cfg[net])


def _data(net, n, seed=0):
    rng = np.random.default_rng(seed)
    if net == "mlp2d":
        angles = rng.integers(0, 8, n) * (2 * np.pi / 8)
        x = np.stack([np.cos(angles), np.sin(angles)], 1) + 0.05 * rng.normal(
            size=(n, 2)
        )
    else:
        shape = (8, 8, 1) if net == "digits8" else (32, 32, 3)
        x = np.clip(rng.normal(0.0, 0.5, (n,) + shape), -1, 1)
    return (x + SIGMA_N * rng.normal(size=x.shape)).astype("float32")


def _unet_kwargs(net, base_channels):
    if net == "digits8":
        return dict(
            image_shape=(8, 8, 1),
            base_channels=base_channels,
            channel_multipliers=(1, 2),
        )
    return dict(
        image_shape=(32, 32, 3),
        base_channels=base_channels,
        channel_multipliers=(1, 2, 2),
    )


# ------------------------------------------------------------ Keras side
def _keras_setup(threads):
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
    return backend


def _keras_model(net, cfg, cw=0.0, jit_compile="auto", consistency=None):
    import keras

    import keras_ambient as ka

    keras.utils.set_random_seed(0)
    c = _net_config(cfg, net)
    if net == "mlp2d":
        network = ka.networks.MLPDenoiser(
            data_dim=2, hidden_units=c["hidden_units"], num_blocks=3, seed=0
        )
    else:
        network = ka.networks.UNet(**_unet_kwargs(net, c["base_channels"]))
    model = ka.AmbientDiffusion(
        network=network,
        sigma_n=SIGMA_N,
        sigma_data=SIGMA_DATA,
        consistency_weight=cw,
        consistency_loss=(
            None if consistency is None else ka.losses.ConsistencyLoss(**consistency)
        ),
        seed=0,
    )
    model.compile(optimizer=keras.optimizers.Adam(LR), jit_compile=jit_compile)
    return model


def _trainable_params(model):
    return int(sum(np.prod(w.shape) for w in model.network.trainable_weights))


class _Timer:
    """Callback: time from the start of batch `skip` to the end of training."""

    def __init__(self, skip):
        import keras

        class Cb(keras.callbacks.Callback):
            def on_train_batch_begin(cb, batch, logs=None):
                if batch == skip:
                    self.start = time.perf_counter()

            def on_train_end(cb, logs=None):
                self.end = time.perf_counter()

        self.callback = Cb()
        self.skip = skip
        self.start = self.end = None


def _time_fit(model, x, batch, steps, warmup, plain_fit=False):
    """Returns (steps/s, warm-up seconds). `plain_fit` bypasses the library's
    `fit` (and so its TerminateOnNonFinite callback)."""
    import keras

    fit = (lambda *a, **k: keras.Model.fit(model, *a, **k)) if plain_fit else model.fit
    t0 = time.perf_counter()
    fit(x[: warmup * batch], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    warm = time.perf_counter() - t0
    skip = 1 if steps > 2 else 0
    timer = _Timer(skip)
    fit(
        x[: steps * batch],
        batch_size=batch,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[timer.callback],
    )
    return (steps - skip) / (timer.end - timer.start), warm


def _keras_train_task(args, cfg, out):
    import keras

    backend = _keras_setup(args.threads)
    sections = args.sections
    for net in args.nets:
        batch = cfg[net]["batch"]
        steps = cfg[net]["steps"]
        x = _data(net, batch * max(steps, cfg["warmup"]))
        rec = dict(backend=backend, net=net, batch=batch)
        # 1. throughput with the backend's defaults (jit "auto"), no consistency.
        if "train" in sections or "jit" in sections:
            model = _keras_model(net, cfg)
            sps, warm = _time_fit(model, x, batch, steps, cfg["warmup"])
            out.append(
                dict(
                    rec,
                    kind="train",
                    variant="auto",
                    jit=str(model.jit_compile),
                    steps_per_s=sps,
                    warmup_s=warm,
                    params=_trainable_params(model),
                )
            )
        # 2. the other jit setting (torch True runs in its own process).
        if "jit" in sections and net in args.jit_nets:
            other = not model.jit_compile
            skip = (backend == "torch" and other) or (
                backend == "jax" and not other and net not in JAX_EAGER_NETS
            )
            if not skip:
                n_steps = steps if other else cfg["eager_steps"]
                try:
                    m2 = _keras_model(net, cfg, jit_compile=other)
                    sps, warm = _time_fit(m2, x, batch, n_steps, 1)
                    out.append(
                        dict(
                            rec,
                            kind="jit",
                            variant=f"jit={other}",
                            jit=str(m2.jit_compile),
                            steps_per_s=sps,
                            warmup_s=warm,
                        )
                    )
                except Exception as e:  # noqa: BLE001 - reported, not hidden
                    out.append(
                        dict(
                            rec, kind="jit", variant=f"jit={other}", error=repr(e)[:300]
                        )
                    )
            if backend == "jax":
                m3 = _keras_model(net, cfg)
                sps, warm = _time_fit(
                    m3, x, batch, steps, cfg["warmup"], plain_fit=True
                )
                out.append(
                    dict(
                        rec,
                        kind="jit",
                        variant="auto, no TerminateOnNonFinite",
                        jit=str(m3.jit_compile),
                        steps_per_s=sps,
                        warmup_s=warm,
                    )
                )
        # 3. consistency overhead (jit auto).
        if "consistency" in sections and net in args.cons_nets:
            m4 = _keras_model(net, cfg, cw=1.0)
            sps, warm = _time_fit(m4, x, batch, steps, cfg["warmup"])
            out.append(
                dict(
                    rec,
                    kind="consistency",
                    variant="cw=1",
                    jit=str(m4.jit_compile),
                    steps_per_s=sps,
                    warmup_s=warm,
                )
            )
            # The cheapest unbiased setting: reuse the ambient forward pass as the
            # target (start="ambient") and one reverse step (no chain evaluation).
            m5 = _keras_model(
                net, cfg, cw=1.0, consistency={"start": "ambient", "num_steps": 1}
            )
            sps, warm = _time_fit(m5, x, batch, steps, cfg["warmup"])
            out.append(
                dict(
                    rec,
                    kind="consistency_cheap",
                    variant="cw=1 start=ambient num_steps=1",
                    jit=str(m5.jit_compile),
                    steps_per_s=sps,
                    warmup_s=warm,
                )
            )
        keras.backend.clear_session()
    if "sampling" in sections:
        _keras_sampling(args, cfg, out, backend)


def _keras_sampling(args, cfg, out, backend):
    from keras import ops

    import keras_ambient as ka

    net = args.sample_net
    model = _keras_model(net, cfg)
    model.build()
    n = cfg["sample_n"]
    for steps in (18, 40):
        # generate(): predict_on_batch, compiled per the backend's jit default.
        t0 = time.perf_counter()
        model.generate(n, num_steps=steps, seed=0)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(n, num_steps=steps, seed=1)
        dt = time.perf_counter() - t0
        out.append(
            dict(
                backend=backend,
                net=net,
                kind="sampling",
                variant=f"generate {steps}",
                images_per_s=n / dt,
                first_call_s=first,
                nfe=2 * steps - 1,
            )
        )

    # The same Heun sampler, calling the EMA denoiser eagerly.
    def denoise_fn(x, sigma):
        return model.ema_denoiser(
            [x, ops.full((ops.shape(x)[0],), sigma, dtype="float32")], training=False
        )

    ctx = _no_grad(backend)
    for steps in (18,):
        sigmas = ka.samplers.edm_sigmas(steps)
        x0 = float(sigmas[0]) * np.random.default_rng(0).normal(
            size=(n,) + model.data_shape
        ).astype("float32")
        with ctx():
            t0 = time.perf_counter()
            ops.convert_to_numpy(ka.samplers.sample_heun(denoise_fn, x0, sigmas))
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            ops.convert_to_numpy(ka.samplers.sample_heun(denoise_fn, x0, sigmas))
            dt = time.perf_counter() - t0
        out.append(
            dict(
                backend=backend,
                net=net,
                kind="sampling",
                variant=f"eager {steps}",
                images_per_s=n / dt,
                first_call_s=first,
                nfe=2 * steps - 1,
            )
        )


def _no_grad(backend):
    import contextlib

    if backend == "torch":
        import torch

        return torch.no_grad
    return contextlib.nullcontext


def _keras_memory_task(args, cfg, out):
    backend = _keras_setup(args.threads)
    mem_cfg = dict(cfg, img32=dict(base_channels=cfg["memory_base"], batch=0))
    batch = cfg["memory_batch"]
    x = _data("img32", batch * (1 + cfg["memory_steps"]))
    model = _keras_model("img32", mem_cfg)
    model.build()
    device = _device_peak_reset(backend)
    before = _rss_mb()
    t0 = time.perf_counter()
    model.fit(x[:batch], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    warm = time.perf_counter() - t0
    after_warm = _rss_mb()
    model.fit(x[batch:], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    after = _rss_mb()
    out.append(
        dict(
            backend=backend,
            net="img32",
            kind="memory",
            batch=batch,
            base_channels=cfg["memory_base"],
            params=_trainable_params(model),
            rss_before_mb=before,
            rss_after_warmup_mb=after_warm,
            rss_after_steps_mb=after,
            warmup_s=warm,
            device_peak_mb=_device_peak(backend, device),
        )
    )


def _device_peak_reset(backend):
    """Resets the accelerator's peak-memory counter; returns the device or None."""
    try:
        if backend in ("torch", "plain"):
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
                return "cuda"
        elif backend == "jax":
            import jax

            dev = jax.devices()[0]
            if dev.platform != "cpu":
                return dev
        elif backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_physical_devices("GPU"):
                tf.config.experimental.reset_memory_stats("GPU:0")
                return "GPU:0"
    except Exception:  # noqa: BLE001 - no accelerator statistics
        return None
    return None


def _device_peak(backend, device):
    """Peak accelerator memory (MiB) since the reset, or None on CPU."""
    if device is None:
        return None
    if backend in ("torch", "plain"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    if backend == "jax":
        stats = device.memory_stats() or {}
        return stats.get("peak_bytes_in_use", float("nan")) / 2**20
    import tensorflow as tf

    return tf.config.experimental.get_memory_info(device)["peak"] / 2**20


def _keras_torch_compile_task(args, cfg, out):
    """Keras on torch with jit_compile=True (torch.compile of the train step)."""
    backend = _keras_setup(args.threads)
    for net in args.jit_nets:
        batch = cfg[net]["batch"]
        steps = cfg[net]["steps"]
        x = _data(net, batch * max(steps, cfg["warmup"]))
        rec = dict(
            backend=backend, net=net, batch=batch, kind="jit", variant="jit=True"
        )
        try:
            model = _keras_model(net, cfg, jit_compile=True)
            sps, warm = _time_fit(model, x, batch, steps, cfg["warmup"])
            out.append(
                dict(rec, jit=str(model.jit_compile), steps_per_s=sps, warmup_s=warm)
            )
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            out.append(dict(rec, error=repr(e)[:300]))
        _flush(out)


# ------------------------------------------------------- plain PyTorch side
def _torch_modules():
    """Defines the plain PyTorch networks (imported lazily: torch only)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class PositionalEmbedding(nn.Module):
        def __init__(self, dim, max_period=10000.0):
            super().__init__()
            half = dim // 2
            exps = torch.arange(half, dtype=torch.float32) / float(half - 1)
            self.register_buffer("freqs", torch.exp(-math.log(max_period) * exps))

        def forward(self, c):
            angles = c.reshape(-1, 1) * self.freqs[None, :]
            return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)

    class FourierEmbedding(nn.Module):
        def __init__(self, dim, scale=16.0):
            super().__init__()
            self.register_buffer("freqs", torch.randn(dim // 2) * scale)

        def forward(self, c):
            angles = 2 * math.pi * c.reshape(-1, 1) * self.freqs[None, :]
            return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)

    class NoiseEmbedding(nn.Module):
        def __init__(self, embed, in_dim, width):
            super().__init__()
            self.embed = embed
            self.dense1 = nn.Linear(in_dim, width)
            self.dense2 = nn.Linear(width, width)

        def forward(self, c):
            return F.silu(self.dense2(F.silu(self.dense1(self.embed(c)))))

    def group_norm(channels, groups):
        return nn.GroupNorm(math.gcd(channels, groups), channels, eps=1e-6)

    class ResBlock(nn.Module):
        def __init__(self, cin, cout, emb_width, groups):
            super().__init__()
            self.norm1 = group_norm(cin, groups)
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
            self.emb = nn.Linear(emb_width, 2 * cout)
            self.norm2 = group_norm(cout, groups)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            nn.init.zeros_(self.conv2.weight)
            self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

        def forward(self, h, emb):
            x = self.conv1(F.silu(self.norm1(h)))
            scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
            x = F.silu(self.norm2(x) * (1 + scale) + shift)
            x = self.conv2(x)
            return (h if self.skip is None else self.skip(h)) + x

    class Attention(nn.Module):
        def __init__(self, channels, heads, groups):
            super().__init__()
            self.norm = group_norm(channels, groups)
            self.mha = nn.MultiheadAttention(channels, heads, batch_first=True)

        def forward(self, h):
            b, c, hh, ww = h.shape
            a = self.norm(h).flatten(2).transpose(1, 2)
            a = self.mha(a, a, a, need_weights=False)[0]
            return h + a.transpose(1, 2).reshape(b, c, hh, ww)

    class UNet(nn.Module):
        """The layers of `ka.networks.UNet` (default options), channels first."""

        def __init__(
            self,
            image_shape,
            base_channels,
            channel_multipliers,
            num_res_blocks=2,
            attention_resolutions=(),
            heads=4,
            groups=8,
        ):
            super().__init__()
            size, _, cin = image_shape
            emb_dim, width = max(base_channels, 16), 4 * base_channels
            self.emb = NoiseEmbedding(PositionalEmbedding(emb_dim), emb_dim, width)
            self.input_conv = nn.Conv2d(cin, base_channels, 3, padding=1)
            self.down = nn.ModuleList()
            skips, ch, res = [base_channels], base_channels, size
            for level, mult in enumerate(channel_multipliers):
                for _ in range(num_res_blocks):
                    block = nn.ModuleList(
                        [ResBlock(ch, base_channels * mult, width, groups)]
                    )
                    ch = base_channels * mult
                    if res in attention_resolutions:
                        block.append(Attention(ch, heads, groups))
                    self.down.append(block)
                    skips.append(ch)
                if level < len(channel_multipliers) - 1:
                    self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                    skips.append(ch)
                    res //= 2
            self.mid = nn.ModuleList(
                [
                    ResBlock(ch, ch, width, groups),
                    Attention(ch, heads, groups),
                    ResBlock(ch, ch, width, groups),
                ]
            )
            self.up = nn.ModuleList()
            for level in reversed(range(len(channel_multipliers))):
                mult = channel_multipliers[level]
                for _ in range(num_res_blocks + 1):
                    block = nn.ModuleList(
                        [
                            ResBlock(
                                ch + skips.pop(), base_channels * mult, width, groups
                            )
                        ]
                    )
                    ch = base_channels * mult
                    if res in attention_resolutions:
                        block.append(Attention(ch, heads, groups))
                    self.up.append(block)
                if level > 0:
                    self.up.append(nn.Conv2d(ch, ch, 3, padding=1))
                    res *= 2
            self.out_norm = group_norm(ch, groups)
            self.out_conv = nn.Conv2d(ch, cin, 3, padding=1)
            nn.init.zeros_(self.out_conv.weight)

        def forward(self, x, c_noise):
            emb = self.emb(c_noise)
            h = self.input_conv(x)
            skips = [h]
            for m in self.down:
                if isinstance(m, nn.Conv2d):
                    h = m(h)
                else:
                    h = m[0](h, emb)
                    for extra in m[1:]:
                        h = extra(h)
                skips.append(h)
            h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
            for m in self.up:
                if isinstance(m, nn.Conv2d):
                    h = m(F.interpolate(h, scale_factor=2, mode="nearest"))
                else:
                    h = m[0](torch.cat([h, skips.pop()], dim=1), emb)
                    for extra in m[1:]:
                        h = extra(h)
            return self.out_conv(F.silu(self.out_norm(h)))

    class MLP(nn.Module):
        """The layers of `ka.networks.MLPDenoiser` (Fourier embedding)."""

        def __init__(self, data_dim, hidden, num_blocks=3, emb_dim=64):
            super().__init__()
            self.emb = NoiseEmbedding(FourierEmbedding(emb_dim), emb_dim, hidden)
            self.input = nn.Linear(data_dim, hidden)
            self.blocks = nn.ModuleList(
                nn.ModuleList(
                    [
                        nn.LayerNorm(hidden),
                        nn.Linear(hidden, hidden),
                        nn.Linear(hidden, hidden),
                        nn.Linear(hidden, hidden),
                    ]
                )
                for _ in range(num_blocks)
            )
            self.out_norm = nn.LayerNorm(hidden)
            self.out = nn.Linear(hidden, data_dim)
            nn.init.zeros_(self.out.weight)

        def forward(self, x, c_noise):
            emb = self.emb(c_noise)
            h = self.input(x)
            for norm, emb_dense, dense1, dense2 in self.blocks:
                r = F.silu(norm(h) + emb_dense(emb))
                h = h + dense2(F.silu(dense1(r)))
            return self.out(F.silu(self.out_norm(h)))

    return UNet, MLP


def _torch_denoise(net, x, sigma):
    """M2: D(x; sigma) with EDM preconditioning."""
    import torch

    s = sigma.reshape((-1,) + (1,) * (x.dim() - 1))
    total = s**2 + SIGMA_DATA**2
    c_skip = SIGMA_DATA**2 / total
    c_out = s * SIGMA_DATA / torch.sqrt(total)
    c_in = 1.0 / torch.sqrt(total)
    c_noise = torch.log(sigma.clamp_min(1e-20)) / 4.0
    return c_skip * x + c_out * net(c_in * x, c_noise)


def _torch_ambient_loss(net, y, sigma_n, p_mean=-1.2, p_std=1.2, cap=100.0):
    """M1 + M3 with the library's defaults (see losses/ambient_loss.py)."""
    import torch

    u = torch.rand_like(sigma_n)
    a = (torch.log(sigma_n.clamp_min(1e-20)) - p_mean) / p_std
    cdf_a = 0.5 * (1 + torch.erf(a / math.sqrt(2.0)))
    p = (cdf_a + u * (1 - cdf_a)).clamp(1e-7, 1 - 1e-7)
    sigma_t = torch.exp(p_mean + p_std * math.sqrt(2.0) * torch.erfinv(2 * p - 1))
    sigma_t = torch.minimum(
        torch.maximum(sigma_t, sigma_n * (1 + 1e-4) + 1e-6), torch.tensor(80.0)
    )
    shape = (-1,) + (1,) * (y.dim() - 1)
    st, sn = sigma_t.reshape(shape), sigma_n.reshape(shape)
    x_t = y + torch.sqrt((st**2 - sn**2).clamp_min(0)) * torch.randn_like(y)
    denoised = _torch_denoise(net, x_t, sigma_t)
    ratio = sn**2 / st**2
    y_hat = (1 - ratio) * denoised + ratio * x_t
    sq_err = ((y_hat - y) ** 2).mean(dim=tuple(range(1, y.dim())))
    scale = 1 - sigma_n**2 / sigma_t**2
    w = (sigma_t**2 + SIGMA_DATA**2) / (sigma_t * SIGMA_DATA) ** 2
    w = w * torch.clamp(1 / scale**2, max=cap)
    return (w * sq_err).mean()


def _torch_net(net, cfg, base_channels=None):
    import torch

    UNet, MLP = _torch_modules()
    torch.manual_seed(0)
    c = _net_config(cfg, net)
    if net == "mlp2d":
        return MLP(2, c["hidden_units"])
    kw = _unet_kwargs(net, base_channels or c["base_channels"])
    return UNet(kw["image_shape"], kw["base_channels"], kw["channel_multipliers"])


class _TorchTrainer:
    """Plain PyTorch training step: ambient loss, Adam, EMA (decay 0.999)."""

    def __init__(self, net, compile_loss=False):
        import copy

        import torch

        self.net = net
        self.ema = copy.deepcopy(net).requires_grad_(False)
        self.opt = torch.optim.Adam(net.parameters(), lr=LR)
        self.loss_fn = _torch_ambient_loss
        if compile_loss:
            self.loss_fn = torch.compile(_torch_ambient_loss)
        self.step_count = 0

    def step(self, y, sigma_n):
        import torch

        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net, y, sigma_n)
        loss.backward()
        self.opt.step()
        decay = min(0.999, (1 + self.step_count) / (10 + self.step_count))
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), self.net.parameters()):
                p_ema.lerp_(p, 1 - decay)
        self.step_count += 1
        return loss


def _torch_time_train(trainer, x, batch, steps, warmup):
    import torch

    xt = torch.from_numpy(x)
    sig = torch.full((batch,), SIGMA_N)
    if xt.dim() == 4:
        xt = xt.permute(0, 3, 1, 2).contiguous()  # NHWC data -> NCHW
    t0 = time.perf_counter()
    for i in range(warmup):
        trainer.step(xt[i * batch : (i + 1) * batch], sig).item()
    warm = time.perf_counter() - t0
    skip = 1 if steps > 2 else 0
    for i in range(steps):
        if i == skip:
            t0 = time.perf_counter()
        loss = trainer.step(xt[i * batch : (i + 1) * batch], sig)
        loss.item()  # the same per-step loss read as Keras's fit logs
    return (steps - skip) / (time.perf_counter() - t0), warm


def _torch_params(net):
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))


def _plain_train_task(args, cfg, out, compile_loss=False):
    import torch

    torch.set_num_threads(args.threads)
    backend = "plain_torch_compile" if compile_loss else "plain_torch"
    nets = args.jit_nets if compile_loss else args.nets
    for net in nets:
        batch = cfg[net]["batch"]
        steps = cfg[net]["steps"]
        x = _data(net, batch * max(steps, cfg["warmup"]))
        rec = dict(backend=backend, net=net, batch=batch, kind="train", variant="auto")
        try:
            tnet = _torch_net(net, cfg)
            trainer = _TorchTrainer(tnet, compile_loss=compile_loss)
            sps, warm = _torch_time_train(trainer, x, batch, steps, cfg["warmup"])
            out.append(
                dict(
                    rec,
                    jit=str(compile_loss),
                    steps_per_s=sps,
                    warmup_s=warm,
                    params=_torch_params(tnet),
                )
            )
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            out.append(dict(rec, error=repr(e)[:300]))
        _flush(out)
    if "sampling" in args.sections and not compile_loss:
        _plain_sampling(args, cfg, out)


def _plain_sampling(args, cfg, out):
    import torch

    net = args.sample_net
    tnet = _torch_net(net, cfg).eval()
    n = cfg["sample_n"]
    shape = (
        (n, 2) if net == "mlp2d" else (n,) + _unet_kwargs(net, 8)["image_shape"][::-1]
    )

    def heun(x, sigmas):
        for i in range(len(sigmas) - 1):
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            d = (x - _torch_denoise(tnet, x, torch.full((n,), s))) / s
            x_next = x + (s_next - s) * d
            if s_next > 0:
                d2 = (
                    x_next - _torch_denoise(tnet, x_next, torch.full((n,), s_next))
                ) / s_next
                x_next = x + (s_next - s) * 0.5 * (d + d2)
            x = x_next
        return x

    gen = torch.Generator().manual_seed(0)
    for steps in (18,):
        sigmas = _edm_sigmas(steps)
        x0 = float(sigmas[0]) * torch.randn(shape, generator=gen)
        with torch.no_grad():
            t0 = time.perf_counter()
            heun(x0, sigmas)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            heun(x0, sigmas)
            dt = time.perf_counter() - t0
        out.append(
            dict(
                backend="plain_torch",
                net=net,
                kind="sampling",
                variant=f"eager {steps}",
                images_per_s=n / dt,
                first_call_s=first,
                nfe=2 * steps - 1,
            )
        )


def _edm_sigmas(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM schedule + final 0 (as ka.samplers.edm_sigmas; no keras import here)."""
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return np.append((hi + ramp * (lo - hi)) ** rho, 0.0)


def _plain_memory_task(args, cfg, out):
    import torch

    torch.set_num_threads(args.threads)
    batch = cfg["memory_batch"]
    x = _data("img32", batch * (1 + cfg["memory_steps"]))
    tnet = _torch_net("img32", cfg, base_channels=cfg["memory_base"])
    trainer = _TorchTrainer(tnet)
    device = _device_peak_reset("plain")
    before = _rss_mb()
    t0 = time.perf_counter()
    _torch_time_train(trainer, x, batch, 0, 1)
    warm = time.perf_counter() - t0
    after_warm = _rss_mb()
    _torch_time_train(trainer, x[batch:], batch, cfg["memory_steps"], 0)
    out.append(
        dict(
            backend="plain_torch",
            net="img32",
            kind="memory",
            batch=batch,
            base_channels=cfg["memory_base"],
            params=_torch_params(tnet),
            rss_before_mb=before,
            rss_after_warmup_mb=after_warm,
            rss_after_steps_mb=_rss_mb(),
            warmup_s=warm,
            device_peak_mb=_device_peak("plain", device),
        )
    )


# ------------------------------------------------------------------ worker
def _flush(out):
    """Workers print their records as one JSON line (the last line wins)."""
    print("SPEED_JSON " + json.dumps(out), flush=True)


def run_worker(args, cfg):
    out = []
    try:
        if args.worker == "plain":
            if args.task == "memory":
                _plain_memory_task(args, cfg, out)
            else:
                _plain_train_task(args, cfg, out, compile_loss=args.task == "compile")
        elif args.task == "memory":
            _keras_memory_task(args, cfg, out)
        elif args.task == "compile":
            _keras_torch_compile_task(args, cfg, out)
        else:
            _keras_train_task(args, cfg, out)
    finally:
        _flush(out)


def _spawn(worker, task, args, timeout):
    env = _set_threads_env(args.threads)
    if worker != "plain":
        env["KERAS_BACKEND"] = worker
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        worker,
        "--task",
        task,
    ]
    cmd += ["--threads", str(args.threads), "--sections", ",".join(args.sections)]
    cmd += ["--nets", ",".join(args.nets), "--jit-nets", ",".join(args.jit_nets)]
    cmd += ["--cons-nets", ",".join(args.cons_nets), "--sample-net", args.sample_net]
    cmd += ["--quick"] if args.quick else []
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout
        )
        stdout, err, status = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, status = f"timed out after {timeout} s", "timeout"
    lines = [ln for ln in stdout.splitlines() if ln.startswith("SPEED_JSON ")]
    records = json.loads(lines[-1][len("SPEED_JSON ") :]) if lines else []
    wall = time.perf_counter() - t0
    print(
        f"  {worker:10s} {task:8s} {wall:6.1f} s  {len(records)} records"
        + ("" if status == 0 else f"  [status {status}]"),
        flush=True,
    )
    if status != 0:
        tail = (err or "").strip().splitlines()[-3:]
        records.append(
            dict(
                backend=worker,
                kind="failure",
                task=task,
                status=str(status),
                error=" | ".join(tail)[:400],
            )
        )
    return records


# -------------------------------------------------------------- reporting
def _median(records, **match):
    keys = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    return keys


def _med(values):
    values = [
        v
        for v in values
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    ]
    return statistics.median(values) if values else None


def _fmt(v, digits=1):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:.0f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _value(records, key, **match):
    return _med([r.get(key) for r in _median(records, **match)])


def report(records, args, cfg):
    backends = args.backends
    out = []
    errors = [r for r in records if "error" in r]
    if "train" in args.sections:
        header = ["net (batch)", "params keras / torch", "plain torch"]
        if args.torch_compile:
            header.append("plain torch.compile")
        header += [f"{b} (ratio)" for b in backends]
        rows = []
        for net in args.nets:
            ref = _value(
                records, "steps_per_s", backend="plain_torch", net=net, kind="train"
            )
            kp = _value(
                records,
                "params",
                net=net,
                kind="train",
                variant="auto",
                backend=backends[0],
            )
            tp = _value(records, "params", backend="plain_torch", net=net, kind="train")
            row = [
                f"{net} ({cfg[net]['batch']})",
                f"{_fmt(kp, 0)} / {_fmt(tp, 0)}"
                + (f" ({100 * (kp - tp) / tp:+.1f} %)" if kp and tp else ""),
                _fmt(ref),
            ]
            if args.torch_compile:
                row.append(
                    _fmt(
                        _value(
                            records,
                            "steps_per_s",
                            backend="plain_torch_compile",
                            net=net,
                        )
                    )
                )
            for b in backends:
                v = _value(records, "steps_per_s", backend=b, net=net, kind="train")
                row.append(f"{_fmt(v)} ({_fmt(v / ref, 2)})" if v and ref else _fmt(v))
            rows.append(row)
        out.append(
            "Training throughput, steps/s (median of repeats); ratio = keras backend"
            " / plain PyTorch eager; library fit, jit_compile='auto', consistency off"
        )
        out.append(_table(header, rows))
    if "jit" in args.sections:
        rows = []
        for b in backends:
            for net in args.jit_nets:
                auto = _median(
                    records, backend=b, net=net, kind="train", variant="auto"
                )
                resolved = auto[0]["jit"] if auto else "?"
                sps_auto = _value(
                    records, "steps_per_s", backend=b, net=net, kind="train"
                )
                w_auto = _value(records, "warmup_s", backend=b, net=net, kind="train")
                for r_variant in sorted(
                    {
                        r["variant"]
                        for r in records
                        if r.get("backend") == b
                        and r.get("net") == net
                        and r.get("kind") == "jit"
                    }
                ):
                    match = dict(backend=b, net=net, kind="jit", variant=r_variant)
                    sps = _value(records, "steps_per_s", **match)
                    err = [
                        r["error"] for r in _median(records, **match) if "error" in r
                    ]
                    rows.append(
                        [
                            b,
                            net,
                            f"auto -> {resolved}",
                            _fmt(sps_auto),
                            _fmt(w_auto),
                            r_variant,
                            _fmt(sps) if not err else "failed: " + err[0][:80],
                            _fmt(_value(records, "warmup_s", **match)),
                            _fmt(sps / sps_auto, 2) if sps and sps_auto else "—",
                        ]
                    )
        out.append(
            "\njit_compile: steps/s and warm-up (first fit call incl. compile, s)"
        )
        out.append(
            _table(
                [
                    "backend",
                    "net",
                    "auto resolves to",
                    "auto steps/s",
                    "auto warm-up",
                    "other setting",
                    "steps/s",
                    "warm-up",
                    "other / auto",
                ],
                rows,
            )
        )
    if "consistency" in args.sections:
        rows = []
        for b in backends:
            for net in args.cons_nets:
                s0 = _value(records, "steps_per_s", backend=b, net=net, kind="train")
                s1 = _value(
                    records, "steps_per_s", backend=b, net=net, kind="consistency"
                )
                s2 = _value(
                    records, "steps_per_s", backend=b, net=net, kind="consistency_cheap"
                )
                rows.append(
                    [
                        b,
                        net,
                        _fmt(s0),
                        _fmt(s1),
                        _fmt(s0 / s1, 2) if s0 and s1 else "—",
                        _fmt(s2),
                        _fmt(s0 / s2, 2) if s0 and s2 else "—",
                    ]
                )
        out.append(
            "\nConsistency overhead (jit 'auto'): steps/s; defaults = start='data', "
            "num_steps=2 (4 network-evaluation units: 1 target, 1 chain, 2 final with "
            "gradients, vs 1 for the ambient loss); cheap = start='ambient', num_steps=1"
        )
        out.append(
            _table(
                [
                    "backend",
                    "net",
                    "cw=0",
                    "defaults",
                    "ratio",
                    "cheap",
                    "ratio",
                ],
                rows,
            )
        )
    if "sampling" in args.sections:
        rows = []
        for b in list(backends) + ["plain_torch"]:
            for variant in ("generate 18", "eager 18", "generate 40", "eager 40"):
                match = dict(backend=b, kind="sampling", variant=variant)
                if not _median(records, **match):
                    continue
                rows.append(
                    [
                        b,
                        variant,
                        str(2 * int(variant.split()[1]) - 1),
                        _fmt(_value(records, "images_per_s", **match)),
                        _fmt(_value(records, "first_call_s", **match), 2),
                    ]
                )
        out.append(
            f"\nSampling, Heun, {args.sample_net}, {cfg['sample_n']} images per call:"
            " images/s (warm) and first-call time (s, incl. compile)"
        )
        out.append(
            _table(
                ["backend", "variant (steps)", "NFE", "images/s", "first call s"], rows
            )
        )
    if "memory" in args.sections:
        rows = []
        for b in list(backends) + ["plain_torch"]:
            match = dict(backend=b, kind="memory")
            if not _median(records, **match):
                continue
            before = _value(records, "rss_before_mb", **match)
            warm = _value(records, "rss_after_warmup_mb", **match)
            after = _value(records, "rss_after_steps_mb", **match)
            dev = _value(records, "device_peak_mb", **match)
            rows.append(
                [
                    b,
                    _fmt(_value(records, "params", **match), 0),
                    _fmt(before, 0),
                    _fmt(warm, 0),
                    _fmt(after, 0),
                    _fmt(after - before, 0),
                    _fmt(dev, 0) if dev else "n/a (CPU)",
                ]
            )
        out.append(
            f"\nMemory, training step, img32 U-Net base {cfg['memory_base']}, batch"
            f" {cfg['memory_batch']}: HOST peak RSS (MiB, ru_maxrss), fresh process"
        )
        out.append(
            _table(
                [
                    "backend",
                    "params",
                    "before",
                    "after warm-up",
                    "after steps",
                    "peak - before",
                    "device peak",
                ],
                rows,
            )
        )
    if errors:
        out.append("\nErrors / failures:")
        for r in errors:
            out.append(
                f"- {r.get('backend')} {r.get('net', r.get('task', ''))} "
                f"{r.get('variant', '')}: {r['error']}"
            )
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(KERAS_BACKENDS))
    parser.add_argument(
        "--quick", action="store_true", help="few steps, small sizes (~3 min)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--nets", default=None, help=f"subset of {','.join(NETS)}")
    parser.add_argument("--jit-nets", default=None, help="nets of the jit section")
    parser.add_argument(
        "--cons-nets", default=None, help="nets of the consistency section"
    )
    parser.add_argument("--sample-net", default=None, choices=NETS)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    parser.add_argument(
        "--torch-compile",
        action="store_true",
        help="also try torch.compile (Keras jit_compile=True on torch, and"
        " the plain reference), each in a process with a timeout",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="per-worker timeout (s)"
    )
    parser.add_argument("--json", default=None, help="write all records to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--task", default="train", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = dict(PRESETS["quick" if args.quick else "default"])
    for key in ("nets", "jit_nets", "cons_nets", "sample_net"):
        if getattr(args, key) is None:
            setattr(args, key, cfg[key])
    for key in ("backends", "sections", "nets", "jit_nets", "cons_nets"):
        setattr(args, key, [s for s in getattr(args, key).split(",") if s])
    if args.worker:
        return run_worker(args, cfg)

    repeats = args.repeats or cfg["repeats"]
    timeout = args.timeout or (300 if args.quick else 900)
    records = []
    t_start = time.perf_counter()
    train_like = {"train", "jit", "consistency", "sampling"} & set(args.sections)
    for rep in range(repeats):
        print(f"repeat {rep + 1}/{repeats}", flush=True)
        jobs = []
        if train_like:
            jobs += [(b, "train") for b in args.backends] + [("plain", "train")]
        if "memory" in args.sections:
            jobs += [(b, "memory") for b in args.backends] + [("plain", "memory")]
        if args.torch_compile and ("jit" in args.sections or "train" in args.sections):
            if "torch" in args.backends and "jit" in args.sections:
                jobs.append(("torch", "compile"))
            jobs.append(("plain", "compile"))
        for worker, task in jobs:
            t = cfg["compile_timeout"] if task == "compile" else timeout
            for r in _spawn(worker, task, args, t):
                r["repeat"] = rep
                records.append(r)
    text = report(records, args, cfg)
    total = time.perf_counter() - t_start
    print()
    print(text)
    print(
        f"\n(total {total:.0f} s, {repeats} repeat(s), {args.threads} thread(s) per worker,"
        f" {'quick' if args.quick else 'default'} sizes)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                dict(config=cfg, args=vars(args), records=records, total_s=total),
                f,
                indent=1,
            )
    return records


if __name__ == "__main__":
    main()
