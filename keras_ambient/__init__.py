"""keras_ambient: diffusion models of the clean distribution trained on noisy data.

Implements "Consistent Diffusion Meets Tweedie" (Daras, Dimakis, Daskalakis,
ICML 2024) for Keras 3 on JAX, PyTorch and TensorFlow. The equations
(method.md M1-M5) live in `keras_ambient.equations`.
"""

from keras_ambient import (
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
from keras_ambient.models.ambient_diffusion import AmbientDiffusion
from keras_ambient.version import __version__
