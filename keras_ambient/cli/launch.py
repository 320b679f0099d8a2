"""Before Keras is imported: is this the command line, and which backend (standard library only)."""

import os
import sys

from keras_ambient.cli.arguments import CLIError, build_parser

_REEXEC_ENV = "KERAS_AMBIENT_CLI_REEXEC"

# The modules whose `python -m` runs this command line.
_CLI_MODULES = ("keras_ambient", "keras_ambient.__main__", "keras_ambient.cli", "keras_ambient.cli.__main__")


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
