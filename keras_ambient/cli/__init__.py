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

Modules: `arguments` (the parser), `launch` (backend choice before Keras),
`data` (loading digits, folders and `.npz` files; noise estimates), and one
module per command (`train`, `sample`, `estimate_noise`).
"""

import sys

from keras_ambient.cli.arguments import BACKENDS, CLIError, build_parser  # noqa: F401
from keras_ambient.cli.data import IMAGE_EXTENSIONS, estimate_noise, load_data  # noqa: F401
from keras_ambient.cli.launch import (  # noqa: F401
    _REEXEC_ENV,
    _module_being_run,
    _select_backend,
    launched_from_command_line,
    prepare,
)


def _commands():
    # Imported on use: each command imports Keras only when it runs.
    from keras_ambient.cli.estimate_noise import cmd_estimate_noise
    from keras_ambient.cli.sample import cmd_sample
    from keras_ambient.cli.train import cmd_train

    return {"train": cmd_train, "sample": cmd_sample, "estimate-noise": cmd_estimate_noise}


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
        return _commands()[args.command](args)
    except (CLIError, ValueError, TypeError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
