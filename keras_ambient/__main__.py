"""`python -m keras_ambient ...`: the `keras-ambient` command line."""

import sys

from keras_ambient.cli import main

if __name__ == "__main__":
    sys.exit(main())
