"""The command line's arguments: value parsers and the parser (standard library only)."""

import argparse
import math

BACKENDS = ("jax", "torch", "tensorflow")


class CLIError(ValueError):
    """An error in the command-line arguments or inputs (printed, exit status 2)."""


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
    t.add_argument("--learning-rate", type=_positive_float, default=2e-3,
                   help="peak Adam learning rate, cosine decay to 5%% of it over the run (default "
                   "2e-3: the schedule of the measured benchmarks and main job, docs/choosing_defaults.md)")
    t.add_argument("--consistency-weight", type=_non_negative_float, default=None,
                   help="weight of the consistency loss (default: the library's, "
                   "ka.AmbientDiffusion's consistency_weight; 0 disables it: faster, truncated sampling only)")
    t.add_argument("--consistency-interval", type=_positive_int, default=None,
                   help="the consistency loss on one step in this many, with this many times its weight "
                   "(default: the library's, ka.AmbientDiffusion's consistency_interval)")
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
    s.add_argument("--sigma-min", type=_positive_float, default=None,
                   help="full sampling: the last noise level before the final step to D(x; sigma_min) "
                        "(default: the model's, 0.002; coarsely quantized data such as the 8x8 digits "
                        "sample better with a larger one, e.g. 0.05: docs/consistency.md)")
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
                   help="'pca' (reference-free: covariance eigenvalues of the images, or of their "
                   "8x8 patches, the noise found with the Marchenko-Pastur bulk edge), 'calibrated' "
                   "(needs clean images: --reference, or the digits' clean test split), 'mad' (median "
                   "of neighbour differences; reads high on small edge-rich images); 'auto' "
                   "(default) picks calibrated when --reference is given, else pca")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_backend_option(e)
    return parser
