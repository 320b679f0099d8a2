"""The `keras-ambient` command line (also `python -m keras_ambient`).

Commands:

- `train DATA`: trains an ambient diffusion model on noisy data and writes
  `model.keras`, checkpoints, sample grids and `metrics.json` to
  `--output-dir`. `DATA` is `digits` (the built-in 8x8 digits, noised here at
  `--sigma-n`), a folder of images (already noisy) or an `.npz` file with key
  `x` (already noisy images `(n, h, w[, c])` or vectors `(n, d)`) and optional
  key `sigma_n` (a scalar or one level per sample).
- `sample MODEL`: draws samples from a saved `.keras` model into a PNG grid or
  an `.npz` file.
- `estimate-noise DATA`: estimates the noise level of a dataset.

Run `keras-ambient COMMAND --help` for the options. Keras is imported only
after the command line is read: for `keras-ambient` (the console script,
`keras_ambient_launcher:main`) and `python -m keras_ambient`,
`keras_ambient/__init__.py` calls `prepare` before it imports Keras, so
`--help` and argument errors are answered at once and `--backend` sets
`KERAS_BACKEND`; without `--backend`, an unconfigured or missing backend is
replaced by an installed one (`keras_ambient.utils.backend_choice`). When
`main()` runs in a process whose Keras already uses another backend, the
command restarts itself with `KERAS_BACKEND` set. This module imports only the
standard library at the top (it runs before Keras).
"""

import argparse
import json
import math
import os
import sys
import time

BACKENDS = ("jax", "torch", "tensorflow")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_REEXEC_ENV = "KERAS_AMBIENT_CLI_REEXEC"


class CLIError(ValueError):
    """An error in the command-line arguments or inputs (printed, exit status 2)."""


# ----------------------------------------------------------------- parsing
def _float_parser(description, is_valid, allow_auto=False):
    """An argparse `type` for finite floats that satisfy `is_valid`."""

    def parse(text):
        if allow_auto and text == "auto":
            return "auto"
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and is_valid(value)):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    return parse


_float_or_auto = _float_parser("a number >= 0 or 'auto'", lambda v: v >= 0, allow_auto=True)
_positive_float = _float_parser("a positive number", lambda v: v > 0)
_non_negative_float = _float_parser("a number >= 0", lambda v: v >= 0)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_list(text):
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,2, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 1,2,2, got {text!r}")
    return values


def _add_data_options(p):
    p.add_argument(
        "data",
        help="'digits' (built-in clean 8x8 digits, noised by this command), a folder of "
        "images (already noisy), or an .npz file with key 'x' (already noisy) and "
        "optional key 'sigma_n'.",
    )
    p.add_argument("--resolution", type=_positive_int, default=None,
                   help="folder data: images are resized to RESOLUTION x RESOLUTION (default 32)")
    p.add_argument("--grayscale", action="store_true", help="folder data: load images as one channel")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="use at most this many samples (quick trials)")
    p.add_argument("--reference", default=None,
                   help="clean images of the same kind (folder or .npz) to calibrate the "
                   "noise estimator (default for digits: the clean test split)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the noise added to 'digits'")


def _add_backend_option(p):
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="Keras backend (default: $KERAS_BACKEND or Keras's config)")


def build_parser():
    """The argument parser of `keras-ambient` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="keras-ambient",
        description="Train diffusion models of the CLEAN distribution from NOISY data "
        "(ambient diffusion, 'Consistent Diffusion Meets Tweedie', Daras et al. 2024).",
        epilog="examples:\n"
        "  keras-ambient train digits --sigma-n 0.2 --epochs 50 --output-dir runs/digits\n"
        "  keras-ambient train photos/ --sigma-n auto --resolution 64 --output-dir runs/photos\n"
        "  keras-ambient sample runs/digits/model.keras --num 64 --out samples.png\n"
        "  keras-ambient estimate-noise data.npz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train", help="train a model on noisy data",
        description="Train an ambient diffusion model on noisy data. Writes OUTPUT_DIR/model.keras, "
        "OUTPUT_DIR/checkpoints/epoch_XXXX.keras, OUTPUT_DIR/samples/samples_epoch_XXXX.png "
        "and OUTPUT_DIR/metrics.json.",
    )
    _add_data_options(t)
    t.add_argument("--sigma-n", type=_float_or_auto, default=None,
                   help="noise level of the data: a number, or 'auto' to estimate it. Default: "
                   "0.2 for digits (the level the digits are noised at), the .npz key "
                   "'sigma_n' if present, else 'auto'")
    _add_backend_option(t)
    t.add_argument("--epochs", type=_positive_int, default=20, help="training epochs (default 20)")
    t.add_argument("--steps", type=_positive_int, default=None,
                   help="total optimizer steps instead of --epochs (rounded up to whole epochs)")
    t.add_argument("--batch-size", type=_positive_int, default=64, help="batch size (default 64)")
    t.add_argument("--learning-rate", type=_positive_float, default=5e-4, help="Adam learning rate (default 5e-4)")
    t.add_argument("--consistency-weight", type=_non_negative_float, default=None,
                   help="weight of the consistency loss (default: the library's, "
                   "ka.AmbientDiffusion's consistency_weight; 0 disables it: faster, truncated sampling only)")
    t.add_argument("--sigma-data", type=_float_or_auto, default="auto",
                   help="std of the clean data, or 'auto' = sqrt(var(y) - sigma_n^2) (default)")
    t.add_argument("--base-channels", type=_positive_int, default=32, help="UNet width (default 32)")
    t.add_argument("--channel-multipliers", type=_int_list, default=None,
                   help="UNet levels, e.g. 1,2,2 (default: 1,2 for images up to 16 px, else 1,2,2)")
    t.add_argument("--num-res-blocks", type=_positive_int, default=1, help="UNet blocks per level (default 1)")
    t.add_argument("--hidden-units", type=_positive_int, default=256,
                   help="MLP width, for vector data (default 256)")
    t.add_argument("--output-dir", default="outputs/keras_ambient_run",
                   help="folder of the outputs (default outputs/keras_ambient_run)")
    t.add_argument("--checkpoint-every", type=_positive_int, default=5,
                   help="save a checkpoint every N epochs (default 5)")
    t.add_argument("--grid-every", type=_positive_int, default=5,
                   help="write a sample grid every N epochs (default 5)")
    t.add_argument("--grid-samples", type=_positive_int, default=16, help="samples per grid (default 16)")
    t.add_argument("--grid-steps", type=_positive_int, default=18, help="sampling steps of the grids (default 18)")
    t.add_argument("--seed", type=int, default=0, help="seed of the model and the grids (default 0)")
    t.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2, help="Keras fit verbosity (default 2)")

    s = sub.add_parser(
        "sample", help="sample from a saved model",
        description="Draw samples from a saved .keras model into a PNG grid or an .npz file (key 'x').",
    )
    s.add_argument("model", help="a .keras file written by `keras-ambient train` or model.save")
    s.add_argument("--num", type=_positive_int, default=16, help="number of samples (default 16)")
    s.add_argument("--steps", type=_positive_int, default=18, help="sampling steps (default 18)")
    s.add_argument("--mode", choices=("full", "truncated"), default="full",
                   help="'full' (to sigma = 0) or 'truncated' (posterior mean at the model's sigma_n)")
    s.add_argument("--sampler", choices=("heun", "euler", "euler_ancestral"), default="heun")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    s.add_argument("--batch-size", type=_positive_int, default=256)
    s.add_argument("--out", default="samples.png", help="output file: .png (a grid) or .npz (default samples.png)")
    s.add_argument("--no-ema", action="store_true", help="sample with the raw weights instead of the EMA")
    s.add_argument("--clip-denoised", action="store_true",
                   help="clip the denoiser's outputs to the image range [-1, 1] while sampling")
    s.add_argument("--verbose", type=int, choices=(0, 1), default=1, help="progress bar (default 1)")
    _add_backend_option(s)

    e = sub.add_parser(
        "estimate-noise", help="estimate the noise level of a dataset",
        description="Estimate the standard deviation of the Gaussian noise in a dataset. "
        "For 'digits' the clean digits are first noised at --sigma-n (a demonstration).",
    )
    _add_data_options(e)
    e.add_argument("--sigma-n", type=_non_negative_float, default=0.2,
                   help="digits only: the level the clean digits are noised at (default 0.2)")
    e.add_argument("--method", choices=("auto", "calibrated", "mad", "pca"), default="auto",
                   help="'calibrated' (needs --reference; default for digits), 'mad' (median of "
                   "neighbour differences; reads high on small edge-rich images), 'pca' (smallest "
                   "covariance eigenvalues; needs many images); 'auto' picks calibrated when a "
                   "reference exists, else mad")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_backend_option(e)
    return parser


# ----------------------------------------------------------------- backend
# The modules whose `python -m` runs this command line.
_CLI_MODULES = ("keras_ambient", "keras_ambient.__main__", "keras_ambient.cli")


def _module_being_run():
    """For `python -m MODULE` while Python is still locating MODULE (it imports the
    parent packages then, with `sys.argv[0] == "-m"`): MODULE, or "" when the
    original command line does not show it. Otherwise None."""
    if sys.argv[:1] != ["-m"]:
        return None
    args = list(getattr(sys, "orig_argv", []))[1:]
    for i, arg in enumerate(args):
        if arg == "-m":
            return args[i + 1] if i + 1 < len(args) else ""
        if arg.startswith("-m"):
            return arg[2:]
    return ""


def launched_from_command_line():
    """Whether this process is `keras-ambient ...` or `python -m keras_ambient ...`
    and Keras is not imported yet (then `keras_ambient/__init__.py` calls `prepare`)."""
    if "keras" in sys.modules:
        return False
    if getattr(sys.modules.get("keras_ambient_launcher"), "LAUNCHING", False):
        return True
    module = _module_being_run()
    return module is not None and (module == "" or module in _CLI_MODULES)


def prepare(argv=None):
    """Reads the command line before Keras is imported; returns the parsed arguments.

    `--help` and argument errors exit here (fast: no Keras import). Then
    `--backend B` sets `KERAS_BACKEND=B` (an error when B is not installed);
    without it, `keras_ambient.utils.backend_choice.choose_backend()` replaces
    an unconfigured or missing backend by an installed one (jax, torch, then
    tensorflow) and says so on stderr.
    """
    from keras_ambient.utils import backend_choice

    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command is None:
        parser.print_help()
        raise SystemExit(2)
    if args.backend is None:
        backend_choice.choose_backend()
    elif not backend_choice.is_installed(args.backend):
        parser.exit(2, f"keras-ambient {args.command}: error: {_not_installed(args.backend)}\n")
    else:
        os.environ["KERAS_BACKEND"] = args.backend
    return args


def _not_installed(backend):
    from keras_ambient.utils import backend_choice

    installed = ", ".join(backend_choice.installed_backends()) or "none"
    return (f"the '{backend}' backend is not installed (installed backends: {installed}). "
            f"Received: --backend {backend}")


def _select_backend(backend, allow_reexec):
    """Makes `backend` the Keras backend (before Keras is used)."""
    if backend is None:
        return
    from keras_ambient.utils import backend_choice

    if not backend_choice.is_installed(backend):
        raise CLIError(_not_installed(backend))
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = backend
        return
    import keras

    active = keras.backend.backend()
    if active == backend:
        return
    if allow_reexec and os.environ.get(_REEXEC_ENV) != "1":
        env = dict(os.environ, KERAS_BACKEND=backend, **{_REEXEC_ENV: "1"})
        sys.stdout.flush()
        sys.stderr.flush()
        cmd = [sys.executable, "-m", "keras_ambient"] + sys.argv[1:]
        if os.name == "nt":  # no real exec on Windows
            import subprocess

            sys.exit(subprocess.call(cmd, env=env))
        os.execve(sys.executable, cmd, env)
    raise CLIError(
        f"Keras is already imported with the '{active}' backend in this process, so "
        f"--backend {backend} cannot take effect. Run the command in a fresh process "
        f"(e.g. `KERAS_BACKEND={backend} keras-ambient ...`). Received: --backend {backend}"
    )


# -------------------------------------------------------------------- data
def _images_from_folder(folder, resolution, grayscale):
    import numpy as np

    files = []
    for root, _, names in os.walk(folder):
        files += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise CLIError(
            f"The folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}). "
            "Give a folder of images, 'digits' or an .npz file."
        )
    try:
        import tensorflow  # noqa: F401  (image_dataset_from_directory uses tf.data)
        have_tf = True
    except ImportError:
        have_tf = False
    if have_tf:
        import keras

        ds = keras.utils.image_dataset_from_directory(
            folder, labels=None, color_mode="grayscale" if grayscale else "rgb",
            image_size=(resolution, resolution), batch_size=256, shuffle=False, verbose=False,
        )
        x = np.concatenate([np.asarray(b) for b in ds], axis=0)
    else:  # Pillow fallback when TensorFlow is not installed
        try:
            from PIL import Image
        except ImportError as e:
            raise CLIError("Reading a folder of images needs TensorFlow or Pillow: `pip install pillow`.") from e
        arrays = []
        for f in sorted(files):
            with Image.open(f) as im:
                im = im.convert("L" if grayscale else "RGB").resize((resolution, resolution), Image.BILINEAR)
                a = np.asarray(im, dtype="float32")
            arrays.append(a[..., None] if a.ndim == 2 else a)
        x = np.stack(arrays)
    return (x.astype("float32") / 127.5 - 1.0).astype("float32")


def _load_npz(path):
    import numpy as np

    import zipfile

    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise CLIError(
            f"{path!r} is not an .npz file (an .npz is a zip archive written by np.savez; "
            "this file is not a zip archive). Received: a file of "
            f"{os.path.getsize(path)} bytes"
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            if "x" not in keys:
                raise CLIError(
                    f"The .npz file {path!r} must contain the noisy data under key 'x' "
                    f"(and optionally 'sigma_n'). Received: keys {keys}"
                )
            x = np.asarray(f["x"])
            sigma = np.asarray(f["sigma_n"], dtype="float32") if "sigma_n" in keys else None
    except (OSError, ValueError) as e:
        if isinstance(e, CLIError):
            raise
        raise CLIError(f"Cannot read {path!r} as an .npz file: {e}") from e
    if x.dtype == np.uint8:
        x = x.astype("float32") / 127.5 - 1.0
    x = x.astype("float32")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim not in (2, 4) or len(x) < 2:
        raise CLIError(
            "The .npz key 'x' must hold images (n, height, width[, channels]) or vectors "
            f"(n, dim) with n >= 2. Received: x with shape {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise CLIError(f"The .npz key 'x' holds NaN or Inf values. Received: {path!r}")
    if sigma is not None:
        if sigma.ndim > 1 or (sigma.ndim == 1 and len(sigma) != len(x)):
            raise CLIError(
                f"The .npz key 'sigma_n' must be a scalar or one level per sample ({len(x)}). "
                f"Received: sigma_n with shape {sigma.shape}"
            )
        if not np.all(np.isfinite(sigma)) or np.any(sigma < 0):
            raise CLIError("The .npz key 'sigma_n' must be finite and >= 0.")
    return x, sigma


def load_data(source, resolution=None, grayscale=False, limit=None):
    """Loads `digits`, a folder or an `.npz` file.

    Returns:
        `(x, sigma_n, kind)`: float32 data (images in [-1, 1]), the noise levels
        stored with it (`None` if unknown) and `"digits"`, `"folder"` or `"npz"`.
    """
    if source == "digits":
        if resolution is not None and resolution != 8:
            raise CLIError(f"The built-in digits are 8x8; drop --resolution. Received: --resolution {resolution}")
        from keras_ambient.data.digits import load_digits

        x, sigma, kind = load_digits("train"), None, "digits"
    elif os.path.isdir(source):
        x, sigma, kind = _images_from_folder(source, resolution or 32, grayscale), None, "folder"
    elif source.lower().endswith(".npz"):
        if not os.path.isfile(source):
            raise CLIError(f"The .npz file {source!r} does not exist.")
        x, sigma = _load_npz(source)
        kind = "npz"
    else:
        raise CLIError(
            "DATA must be 'digits', an existing folder of images or an .npz file. "
            f"Received: {source!r}" + ("" if os.path.exists(source) else " (no such file or folder)")
        )
    if limit is not None:
        x = x[:limit]
        if sigma is not None and sigma.ndim == 1:
            sigma = sigma[:limit]
    return x, sigma, kind


def _load_reference(args, kind):
    if args.reference is not None:
        ref, _, _ = load_data(args.reference, args.resolution, args.grayscale)
        return ref, args.reference
    if kind == "digits":
        from keras_ambient.data.digits import load_digits

        return load_digits("test"), "the clean digits test split"
    return None, None


def estimate_noise(y, reference=None, method="auto"):
    """Estimates the noise level of `y`; returns `(estimate, method_used)`."""
    from keras_ambient.evaluation import images as eval_images  # lazy: optional module

    if method == "auto":
        method = "calibrated" if reference is not None else "mad"
    if y.ndim != 4 and method != "pca":
        raise CLIError(
            f"Noise estimation with method '{method}' needs images (n, h, w, c); for vector data "
            f"use --method pca. Received: data with shape {y.shape}"
        )
    if method == "calibrated":
        if reference is None:
            raise CLIError("--method calibrated needs clean images: pass --reference FOLDER_OR_NPZ.")
        if reference.shape[1:] != y.shape[1:]:
            raise CLIError(
                f"--reference images must have the data's shape {y.shape[1:]}. "
                f"Received: reference with shape {reference.shape[1:]}"
            )
        return float(eval_images.estimate_noise_level(y, reference=reference)), "calibrated"
    if method == "mad":
        return float(eval_images.estimate_noise_level(y)), "mad"
    return float(eval_images.estimate_noise_level_pca(y)), "pca"


def _noise_disagrees(given, estimate, factor=1.5):
    if given <= 0 or estimate <= 0:
        return False
    ratio = given / estimate
    return ratio > factor or ratio < 1.0 / factor


# ---------------------------------------------------------------- commands
def _default_multipliers(height):
    return (1, 2) if height <= 16 else (1, 2, 2)


def _build_network(data_shape, args):
    import keras_ambient as ka

    if len(data_shape) == 1:
        return ka.networks.MLPDenoiser(data_shape[0], hidden_units=args.hidden_units, seed=args.seed)
    multipliers = args.channel_multipliers or _default_multipliers(data_shape[0])
    factor = 2 ** (len(multipliers) - 1)
    if data_shape[0] % factor or data_shape[1] % factor:
        raise CLIError(
            f"--channel-multipliers {','.join(map(str, multipliers))} halves the images "
            f"{len(multipliers) - 1} times, so height and width must be divisible by {factor}. "
            f"Received: images of shape {data_shape}; choose --resolution or fewer levels."
        )
    return ka.networks.UNet(
        image_shape=data_shape, base_channels=args.base_channels, channel_multipliers=multipliers,
        num_res_blocks=args.num_res_blocks, seed=args.seed,
    )


def _checkpoint_callback(folder, every):
    import keras

    class _Checkpoint(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.paths = []

        def on_epoch_end(self, epoch, logs=None):
            if (epoch + 1) % every == 0:
                path = os.path.join(folder, f"epoch_{epoch + 1:04d}.keras")
                os.makedirs(folder, exist_ok=True)
                self.model.save(path)
                self.paths.append(path)

    return _Checkpoint()


def _err(msg):
    print(f"warning: {msg}", file=sys.stderr)


def _make_output_dir(out):
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise CLIError(
            f"Cannot create the output folder {out!r} ({type(e).__name__}: {e.strerror or e}); "
            "is a parent of it a regular file? Received: --output-dir " + out
        ) from e
    if not os.access(out, os.W_OK):
        raise CLIError(f"The output folder {out!r} is not writable. Received: --output-dir {out}")


def cmd_train(args):
    import numpy as np

    # Everything that can be checked before training is checked here, so a bad
    # argument never costs a training run.
    _make_output_dir(args.output_dir)
    if args.sigma_n == "auto" and args.data == "digits":
        raise CLIError(
            "The built-in digits are clean; --sigma-n sets the level this command noises them "
            "at, so it must be a number (e.g. --sigma-n 0.2). Received: --sigma-n auto"
        )
    y, stored_sigma, kind = load_data(args.data, args.resolution, args.grayscale, args.limit)
    info = {"data": args.data, "data_kind": kind, "num_samples": int(len(y)),
            "data_shape": list(y.shape[1:])}
    per_sample = None
    estimate = None
    if kind == "digits":
        sigma_n = 0.2 if args.sigma_n is None else float(args.sigma_n)
        from keras_ambient.data.noise import add_noise

        y = add_noise(y, sigma_n, seed=args.data_seed) if sigma_n > 0 else y
        source = "digits noised by this command"
    elif args.sigma_n is None and stored_sigma is not None:
        if stored_sigma.ndim == 1:
            per_sample = stored_sigma
            sigma_n = float(stored_sigma.max())
            source = "per-sample levels from the .npz key 'sigma_n'"
        else:
            sigma_n = float(stored_sigma)
            source = "the .npz key 'sigma_n'"
    elif args.sigma_n is None or args.sigma_n == "auto":
        reference, ref_name = _load_reference(args, kind)
        estimate, method = estimate_noise(y, reference, "auto" if y.ndim == 4 else "pca")
        sigma_n = estimate
        source = f"estimated ({method})"
        print(f"Estimated noise level: sigma_n = {estimate:.4f} (method: {method}"
              + (f", calibrated on {ref_name})" if ref_name else ")"))
    else:
        sigma_n = float(args.sigma_n)
        source = "given"
        if y.ndim == 4:
            reference, _ = _load_reference(args, kind)
            estimate, method = estimate_noise(y, reference)
            if _noise_disagrees(sigma_n, estimate):
                _err(
                    f"the given --sigma-n {sigma_n:g} disagrees with the noise level estimated "
                    f"from the data ({estimate:.3f}, method {method}) by more than a factor 1.5. "
                    "A wrong sigma_n biases the model (too low: samples keep noise; too high: "
                    "samples are too smooth). Check it, or use --sigma-n auto"
                    + ("" if method == "calibrated" else
                       " (the 'mad' estimate reads high on small images with sharp edges; "
                       "--reference CLEAN_IMAGES calibrates it)") + "."
                )
    info.update(sigma_n=sigma_n, sigma_n_source=source,
                sigma_n_estimate=None if estimate is None else float(estimate))

    _select_backend(args.backend, allow_reexec=False)  # already done in main; re-check
    import keras

    import keras_ambient as ka
    from keras_ambient.callbacks.sample_grid import SampleGrid
    from keras_ambient.utils.defaults import suggest_sigma_data

    if args.sigma_data == "auto":
        sigma_data = suggest_sigma_data(y, per_sample if per_sample is not None else sigma_n)
    else:
        sigma_data = float(args.sigma_data)
        if sigma_data <= 0:
            raise CLIError(f"--sigma-data must be > 0. Received: --sigma-data {args.sigma_data}")
    info["sigma_data"] = float(sigma_data)

    network = _build_network(tuple(y.shape[1:]), args)
    weight = {} if args.consistency_weight is None else {"consistency_weight": args.consistency_weight}
    model = ka.AmbientDiffusion(network, sigma_n=sigma_n, sigma_data=sigma_data, seed=args.seed, **weight)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))

    batch_size = min(args.batch_size, len(y))
    steps_per_epoch = int(math.ceil(len(y) / batch_size))
    epochs = args.epochs if args.steps is None else int(math.ceil(args.steps / steps_per_epoch))
    out = args.output_dir
    mode = "full" if (model.consistency_weight > 0 or sigma_n == 0) else "truncated"
    if mode == "truncated" and args.grid_steps < 2:
        raise CLIError(
            "Without the consistency loss the sample grids use truncated sampling, which needs "
            "--grid-steps >= 2 (levels from sigma_max down to sigma_n). Received: --grid-steps "
            f"{args.grid_steps}"
        )
    grid = SampleGrid(os.path.join(out, "samples"), every_n_epochs=min(args.grid_every, epochs),
                      num_samples=args.grid_samples, seed=args.seed, mode=mode,
                      num_steps=args.grid_steps)
    ckpt = _checkpoint_callback(os.path.join(out, "checkpoints"), min(args.checkpoint_every, epochs))
    data = y if per_sample is None else (y, per_sample)
    print(f"Training on {len(y)} samples of shape {tuple(y.shape[1:])}, sigma_n={sigma_n:g} ({source}), "
          f"sigma_data={sigma_data:.3f}, {epochs} epochs x {steps_per_epoch} steps, backend "
          f"{keras.backend.backend()}, outputs in {out}")
    start = time.time()
    model_path = os.path.join(out, "model.keras")
    try:
        history = model.fit(data, batch_size=batch_size, epochs=epochs, shuffle=True,
                            callbacks=[grid, ckpt], verbose=args.verbose)
    except Exception:
        # Keep what was trained (a divergence leaves NaN weights; the file says so).
        failed = os.path.join(out, "model_failed.keras")
        try:
            model.save(failed)
            _err(f"training failed; the model as it was is saved in {failed}")
        except Exception:  # pragma: no cover - nothing more to save
            pass
        raise
    train_seconds = time.time() - start
    model.save(model_path)  # first, so that nothing after training can lose the model
    final_grid = os.path.join(out, "samples", "samples_final.png")
    from keras_ambient.utils.images import save_image_grid

    try:
        save_image_grid(final_grid, grid.generate())
    except Exception as e:
        _err(f"the final sample grid failed ({type(e).__name__}: {e}); the model is saved in {model_path}")
        final_grid = None
    metrics = dict(
        info,
        command="train",
        backend=keras.backend.backend(),
        keras_ambient_version=ka.__version__,
        consistency_weight=model.consistency_weight,
        epochs=epochs,
        steps=epochs * steps_per_epoch,
        batch_size=batch_size,
        learning_rate=args.learning_rate,
        sample_mode=mode,
        train_seconds=round(train_seconds, 3),
        history={k: [float(v) for v in vals] for k, vals in history.history.items()},
        files={"model": model_path, "checkpoints": ckpt.paths, "sample_grids": grid.paths + ([final_grid] if final_grid else [])},
    )
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"Saved {model_path}, {len(ckpt.paths)} checkpoint(s), {len(grid.paths) + 1} sample grid(s) "
          f"and {os.path.join(out, 'metrics.json')}")
    if not np.isfinite(metrics["history"].get("loss", [0.0])[-1]):
        raise CLIError("Training ended with a non-finite loss; lower --learning-rate.")
    return 0


def cmd_sample(args):
    out = args.out
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".png", ".npz"):
        raise CLIError(f"--out must end with .png or .npz. Received: --out {out}")
    if not os.path.isfile(args.model):
        raise CLIError(f"The model file {args.model!r} does not exist (expected a .keras file).")
    import keras
    import numpy as np

    import keras_ambient  # noqa: F401  (registers the serializable classes)
    from keras_ambient.models.ambient_diffusion import AmbientDiffusion

    try:
        model = keras.models.load_model(args.model, compile=False)
    except Exception as e:  # noqa: BLE001  (any loading failure gets a readable message)
        raise CLIError(f"Cannot load {args.model!r} as a Keras model: {type(e).__name__}: {e}") from e
    if not isinstance(model, AmbientDiffusion):
        raise CLIError(
            f"{args.model!r} holds a {type(model).__name__}, not a keras_ambient AmbientDiffusion model."
        )
    if args.mode == "truncated" and model.sigma_n <= 0:
        raise CLIError(
            "--mode truncated stops at the model's sigma_n, but this model has sigma_n=0 "
            "(trained on clean data). Use --mode full."
        )
    x = model.generate(args.num, num_steps=args.steps, sampler=args.sampler, mode=args.mode,
                       seed=args.seed, batch_size=args.batch_size, use_ema=not args.no_ema,
                       verbose=args.verbose, clip_denoised=(-1.0, 1.0) if args.clip_denoised else None)
    parent = os.path.dirname(out)
    if parent:
        os.makedirs(parent, exist_ok=True)
    if ext == ".npz":
        np.savez(out, x=x)
    else:
        from keras_ambient.utils.images import save_image_grid

        save_image_grid(out, x)
    print(f"Wrote {len(x)} samples of shape {tuple(x.shape[1:])} to {out}")
    return 0


def cmd_estimate_noise(args):
    y, stored_sigma, kind = load_data(args.data, args.resolution, args.grayscale, args.limit)
    true_sigma = None
    if kind == "digits":
        from keras_ambient.data.noise import add_noise

        true_sigma = float(args.sigma_n)
        y = add_noise(y, true_sigma, seed=args.data_seed) if true_sigma > 0 else y
    reference, ref_name = _load_reference(args, kind)
    estimate, method = estimate_noise(y, reference, args.method)
    result = {"data": args.data, "num_samples": int(len(y)), "sigma_n_estimate": estimate, "method": method}
    if ref_name and method == "calibrated":
        result["reference"] = ref_name
    if true_sigma is not None:
        result["sigma_n_true"] = true_sigma
    if stored_sigma is not None:
        result["sigma_n_stored"] = stored_sigma.tolist()
    if args.json:
        print(json.dumps(result))
    else:
        line = f"Estimated noise level: sigma_n = {estimate:.4f} (method: {method}"
        line += f", calibrated on {ref_name})" if "reference" in result else ")"
        if true_sigma is not None:
            line += f"; the digits were noised at {true_sigma:g}"
        print(line)
    return 0


_COMMANDS = {"train": cmd_train, "sample": cmd_sample, "estimate-noise": cmd_estimate_noise}


def main(argv=None):
    """Runs the command line; returns the exit status (0 ok, 2 bad arguments/inputs).

    Args:
        argv: the arguments (default: `sys.argv[1:]`). With `argv=None` a
            `--backend` different from the one Keras was already imported with
            restarts the process; with an explicit `argv` it is an error.
    """
    allow_reexec = argv is None
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command is None:
        parser.print_help()
        return 2
    prog = f"keras-ambient {args.command}"
    try:
        _select_backend(args.backend, allow_reexec)
        return _COMMANDS[args.command](args)
    except (CLIError, ValueError, TypeError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
