"""keras_ambient: diffusion models of the clean distribution trained on noisy data.

Implements "Consistent Diffusion Meets Tweedie" (Daras, Dimakis, Daskalakis,
ICML 2024) for Keras 3 on JAX, PyTorch and TensorFlow. The equations
(docs/method.md M1-M5) live in `keras_ambient.equations`.
"""

import sys as _sys

# Before Keras is imported (keras_ambient.utils and keras_ambient.cli import no Keras):
# `keras-ambient ...` / `python -m keras_ambient ...` read their command line first
# (fast --help and argument errors; --backend sets KERAS_BACKEND), and without a
# usable configured backend (no KERAS_BACKEND and no keras.json, where Keras would
# use TensorFlow, or a configured backend that is not installed) an installed one
# is used: jax, torch, then tensorflow.
from keras_ambient import cli as _cli
from keras_ambient.utils import backend_choice as _backend_choice

if _cli.launched_from_command_line():
    _cli.prepare(_sys.argv[1:])
_backend_choice.choose_backend()

from keras_ambient import (  # noqa: E402
    annotation,
    callbacks,
    data,
    equations,
    evaluation,
    layers,
    losses,
    memorization,
    networks,
    pretrained,
    samplers,
    schedules,
    utils,
)
from keras_ambient.models.ambient_diffusion import AmbientDiffusion  # noqa: E402
from keras_ambient.version import __version__  # noqa: E402
