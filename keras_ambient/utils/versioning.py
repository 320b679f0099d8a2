"""Version stamps in saved configs and the checks made when loading them.

`AmbientDiffusion.get_config()` records the installed library version under
`VERSION_KEY`; `from_config` calls `check_saved_config`, which

- raises a `ValueError` when the file was written by a keras_ambient whose
  major version is newer than the installed one (its format may have
  changed in ways this version cannot read), and
- raises a `ValueError` naming the keys it does not know (a file written by
  a newer or different version, or an edited config), instead of the
  `TypeError` about an unexpected keyword argument that Keras would report.

Files saved before the stamp existed (no version key) load as before.

`saved_dtype_policy(policy)` rebuilds a saved network or model under the dtype
policy it was built with (its config's `dtype`): the built-in networks create
their layers in `__init__` under the global policy, so without it a
`mixed_float16` model loaded in a fresh process would come back float32 (and
its optimizer without its `LossScaleOptimizer` and saved state).
"""

import contextlib
import inspect

import keras

from keras_ambient.version import __version__

VERSION_KEY = "keras_ambient_version"
# Accepted by keras.Model's constructor through **kwargs.
_BASE_KEYS = ("name", "trainable", "dtype")


def parse_version(version):
    """`"1.2.3"` (or `"1.2.3rc1"`, `"1.2"`) -> `(1, 2, 3)`."""
    if not isinstance(version, str) or not version.strip():
        raise ValueError(
            f"A version must be a non-empty string. Received: version={version!r}"
        )
    numbers = []
    for part in version.strip().split(".")[:3]:
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            raise ValueError(f"Cannot parse the version. Received: version={version!r}")
        numbers.append(int(digits))
    while len(numbers) < 3:
        numbers.append(0)
    return tuple(numbers)


def check_saved_config(cls, config, installed=__version__):
    """Checks the version stamp and the keys of a saved config.

    Returns a copy of `config` without the version key, ready for
    `cls(**config)`.

    Example:
    ```python
    @classmethod
    def from_config(cls, config):
        config = check_saved_config(cls, config)
        return cls(**config)
    ```
    """
    config = dict(config)
    saved = config.pop(VERSION_KEY, None)
    name = cls.__name__
    if saved is not None:
        try:
            saved_version = parse_version(saved)
        except ValueError:
            raise ValueError(
                f"The saved {name} has an unreadable keras_ambient version. "
                f"Received: {VERSION_KEY}={saved!r}"
            ) from None
        if saved_version[0] > parse_version(installed)[0]:
            raise ValueError(
                f"This {name} was saved by keras_ambient {saved}, a newer major "
                f"version than the installed keras_ambient {installed}; its format "
                "may not be readable by this version. Upgrade keras_ambient "
                "(pip install -U keras-ambient) to load it. "
                f"Received: a file saved with {VERSION_KEY}={saved!r}"
            )
    known = set(_BASE_KEYS)
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            known.add(param.name)
    known.discard("self")
    unknown = sorted(set(config) - known)
    if unknown:
        origin = (
            f"keras_ambient {saved}"
            if saved is not None
            else "an unknown keras_ambient version"
        )
        raise ValueError(
            f"The saved {name} config is not compatible with the installed "
            f"keras_ambient {installed}: it has keys this version does not know: "
            f"{unknown}. The file was written by {origin}; load it with that "
            f"version (or a newer one), or remove those keys. Received: config keys "
            f"{sorted(config)}"
        )
    return config


def dtype_policy_config(layer):
    """The `dtype` entry of a config: the layer's dtype policy, serialized (for a
    built-in network, that of a layer it built: the global policy when it was built)."""
    return keras.dtype_policies.serialize(layer.dtype_policy)


@contextlib.contextmanager
def saved_dtype_policy(policy):
    """Sets the global dtype policy to `policy` (a saved `dtype` entry, or None: no
    change) while a saved object is rebuilt, and restores the previous one."""
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(keras.dtype_policies.deserialize(policy)
                                  if isinstance(policy, dict) else policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def rebuild_under_saved_policy(cls, config):
    """`cls(**config)` built under the policy saved in the config's `dtype` (the
    `from_config` of a network that builds its layers in `__init__`)."""
    config = dict(config)
    with saved_dtype_policy(config.pop("dtype", None)):
        return cls(**config)
