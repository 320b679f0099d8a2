"""`python -m keras_ambient.cli ...`: the command line (as `python -m keras_ambient`)."""

import sys

from keras_ambient.cli import main

if __name__ == "__main__":
    sys.exit(main())
