"""Shared pieces of the benchmark scripts (no Keras, torch or TF import here).

Worker processes (one per backend), thread settings, synthetic data, host and
device memory peaks, and the Markdown tables of the reports.
"""

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


# ------------------------------------------------------------------ processes
def threads_env(threads):
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


def flush(out, tag="SPEED_JSON"):
    """Workers print their records as one JSON line (the last line wins)."""
    print(f"{tag} " + json.dumps(out), flush=True)


def spawn(script, worker, task, argv, threads, timeout, tag="SPEED_JSON"):
    """Runs `script --worker WORKER --task TASK argv...` in a fresh process
    (KERAS_BACKEND=worker unless worker is "plain"); returns its records, with a
    `failure` record when it fails or times out."""
    env = threads_env(threads)
    if worker != "plain":
        env["KERAS_BACKEND"] = keras_backend_of(worker)
    cmd = [sys.executable, os.path.abspath(script), "--worker", worker, "--task", task]
    cmd += ["--threads", str(threads)] + list(argv)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        stdout, err, status = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, status = f"timed out after {timeout} s", "timeout"
    lines = [ln for ln in stdout.splitlines() if ln.startswith(tag + " ")]
    records = json.loads(lines[-1][len(tag) + 1:]) if lines else []
    wall = time.perf_counter() - t0
    print(f"  {worker:10s} {task:8s} {wall:6.1f} s  {len(records)} records"
          + ("" if status == 0 else f"  [status {status}]"), flush=True)
    if status != 0:
        tail = (err or "").strip().splitlines()[-3:]
        records.append(dict(backend=worker, kind="failure", task=task, status=str(status),
                            error=" | ".join(tail)[:400]))
    return records


# Worker variants: "-generic" turns the library's backend fast paths off
# (`generic_paths`); "-nhwc" builds the U-Nets channels last (`unet_kwargs`), the
# layout every backend used before `UNet(data_format="auto")`; "-bare" trains a plain
# `keras.Model` with the library's loss instead of `AmbientDiffusion`, "-noema" an
# `AmbientDiffusion` without its EMA (speed.py).
WORKER_VARIANTS = ("-generic", "-nhwc", "-bare", "-noema")


def keras_backend_of(worker):
    """`torch` for the workers `torch`, `torch-generic`, `torch-nhwc`, `torch-bare`, ..."""
    for suffix in WORKER_VARIANTS:
        if worker.endswith(suffix):
            return worker[: -len(suffix)]
    return worker


def generic_paths(worker):
    """In a `*-generic` worker: turns keras_ambient's backend fast paths off
    (utils/backend_fast_paths.py), the "before" of a fast path, side by side."""
    if worker.endswith("-generic"):
        from keras_ambient.utils import backend_fast_paths

        backend_fast_paths.set_enabled(False)


def setup_threads(threads, plain=False):
    """Sets the intra-op threads of the framework of this process; returns the
    Keras backend name (or "plain": torch only, Keras is not imported)."""
    if plain:
        import torch

        torch.set_num_threads(threads)
        return "plain"
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


# ----------------------------------------------------------------------- data
# U-Net presets: image shape and channel multipliers (the deepest level is 4x4 or 8x8).
UNET_PRESETS = {
    "digits8": ((8, 8, 1), (1, 2)),     # digits-like
    "img16": ((16, 16, 1), (1, 2, 2)),  # benchmarks/scaling.py's middle size
    "img32": ((32, 32, 3), (1, 2, 2)),  # CIFAR-like
}
# The preset of each image size (benchmarks/scaling.py).
SIZE_NETS = {8: "digits8", 16: "img16", 32: "img32"}


def unet_kwargs(net, base_channels, worker=None):
    """`ka.networks.UNet` (and `torch_reference.UNet`) keyword arguments of a preset;
    for a `*-nhwc` worker, with `data_format="channels_last"`."""
    shape, multipliers = UNET_PRESETS[net]
    kwargs = dict(image_shape=shape, base_channels=base_channels, channel_multipliers=multipliers)
    if worker is not None and worker.endswith("-nhwc"):
        kwargs["data_format"] = "channels_last"
    return kwargs


def data_shape(net):
    return (2,) if net == "mlp2d" else unet_kwargs(net, 1)["image_shape"]


def make_data(net, n, sigma_n, seed=0):
    """Noisy synthetic data (NHWC images in [-1, 1] + noise, or a 2-D ring)."""
    rng = np.random.default_rng(seed)
    if net == "mlp2d":
        angles = rng.integers(0, 8, n) * (2 * np.pi / 8)
        x = np.stack([np.cos(angles), np.sin(angles)], 1) + 0.05 * rng.normal(size=(n, 2))
    else:
        x = np.clip(rng.normal(0.0, 0.5, (n,) + data_shape(net)), -1, 1)
    return (x + sigma_n * rng.normal(size=x.shape)).astype("float32")


# --------------------------------------------------------------------- memory
def rss_mb():
    """Process peak resident set size so far, in MiB (Linux: KiB units)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def device_peak_reset(backend):
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


def device_peak(backend, device):
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


def sync(backend):
    """Waits for queued accelerator work (a no-op on CPU)."""
    if backend in ("torch", "plain"):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


# ------------------------------------------------------------------ reporting
def select(records, **match):
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def mean_std(rows):
    """Per-column mean and sample standard deviation (ddof=1; zeros for one row) of `rows`."""
    rows = np.asarray(rows, dtype=float)
    std = rows.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros(rows.shape[1:])
    return rows.mean(axis=0), std


def median(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def value(records, key, **match):
    """Median of `key` over the records matching `match`."""
    return median([r.get(key) for r in select(records, **match)])


def fmt(v, digits=1):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:.0f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
