"""`python -m keras_ambient ...`: the `keras-ambient` command line.

`keras_ambient/__init__.py` runs first: it reads the command line with
`keras_ambient.cli.prepare` before it imports Keras (fast `--help` and
argument errors; `--backend` sets `KERAS_BACKEND`), then this runs the command.
"""

import sys

from keras_ambient.cli import main

if __name__ == "__main__":
    sys.exit(main())
