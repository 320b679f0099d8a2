"""The `keras-ambient` console script: reads the command line before Keras is imported.

It lives outside the `keras_ambient` package because importing any
`keras_ambient.*` module first runs `keras_ambient/__init__.py`, which imports
Keras. `main` marks the process as launched from the command line and imports
`keras_ambient.cli`: `keras_ambient/__init__.py` then calls
`keras_ambient.cli.prepare` before it imports Keras, so `--help` and argument
errors are answered at once (no Keras import) and `--backend` (or, without it,
an installed backend when none is configured) takes effect. `python -m
keras_ambient` goes through the same `prepare`.
"""

import sys

LAUNCHING = False  # read by keras_ambient/__init__.py


def main():
    """Runs `keras-ambient` (`sys.argv`); returns the exit status."""
    global LAUNCHING
    LAUNCHING = True
    try:
        from keras_ambient.cli import main as cli_main
    finally:
        LAUNCHING = False
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
