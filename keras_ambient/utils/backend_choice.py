"""Chooses an installed Keras backend before Keras is imported (no Keras import here).

Without `KERAS_BACKEND` and without `~/.keras/keras.json` Keras uses
TensorFlow, which fails with `ModuleNotFoundError: No module named
'tensorflow'` in a JAX- or PyTorch-only environment. `choose_backend()` fixes
that case: when no backend is configured, or `keras.json` names one that is
not installed (Keras writes "tensorflow" there at its first import), it sets `KERAS_BACKEND` to the first installed backend of
`PREFERENCE` (jax, then torch, then tensorflow) and says so on stderr. A
configured backend that is installed is never changed, and nothing happens
once Keras is imported.

`import keras_ambient` calls it before it imports Keras, so scripts put that
import (or `import keras_ambient.utils.backend_choice`) before `import keras`.
This module only uses the standard library: it must stay importable before
Keras (`keras_ambient/__init__.py` and `keras_ambient/utils/__init__.py`
import it first).

Example:
```python
import keras_ambient.utils.backend_choice  # noqa: F401  (before keras: picks a backend if none is configured)
import keras
```
"""

import importlib.util
import json
import os
import sys

PREFERENCE = ("jax", "torch", "tensorflow")
# Keras backend name -> the module it needs.
BACKEND_MODULES = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow", "numpy": "numpy",
                   "openvino": "openvino"}
KERAS_DEFAULT = "tensorflow"  # what Keras uses when nothing is configured


def _find_spec(name):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def is_installed(backend, find_spec=None):
    """Whether the module of Keras backend `backend` is installed (found, not imported).

    An unknown backend name counts as installed: Keras itself reports it.
    """
    module = BACKEND_MODULES.get(backend)
    if module is None:
        return True
    return (find_spec or _find_spec)(module) is not None


def installed_backends(find_spec=None):
    """The installed backends among `PREFERENCE`, in that order."""
    return [b for b in PREFERENCE if is_installed(b, find_spec)]


def keras_config_path(environ=None):
    """The `keras.json` Keras reads: `$KERAS_HOME/keras.json`, else `~/.keras/keras.json`
    (`/tmp/.keras/keras.json` when the home folder is not writable), as Keras does."""
    environ = os.environ if environ is None else environ
    if "KERAS_HOME" in environ:
        folder = environ["KERAS_HOME"]
    else:
        home = environ.get("HOME") or os.path.expanduser("~")
        folder = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    return os.path.expanduser(os.path.join(folder, "keras.json"))


def configured_backend(environ=None):
    """The configured backend and where it comes from: `(name, source)`, or `(None, None)`.

    `KERAS_BACKEND` (when not empty) wins over the `backend` key of
    `keras.json`, as in Keras. An unreadable `keras.json` configures nothing.
    """
    environ = os.environ if environ is None else environ
    if environ.get("KERAS_BACKEND"):
        return environ["KERAS_BACKEND"], "KERAS_BACKEND"
    path = keras_config_path(environ)
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None, None
    backend = config.get("backend") if isinstance(config, dict) else None
    return (backend, path) if backend else (None, None)


def _write_keras_config(path, backend):
    # Keras writes this file at its first import, with "tensorflow" whatever
    # KERAS_BACKEND says; writing it first keeps the next runs on the same backend.
    config = {"floatx": "float32", "epsilon": 1e-07, "backend": backend,
              "image_data_format": "channels_last"}
    if os.path.exists(path):
        return False
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "x") as f:
            f.write(json.dumps(config, indent=4))
        return True
    except OSError:
        return False


def choose_backend(environ=None, find_spec=None, stream=None, write_config=True, modules=None):
    """Sets `KERAS_BACKEND` to an installed backend when none usable is configured.

    Does nothing when Keras is already imported, or when the configured
    backend (`KERAS_BACKEND`, else `keras.json`) is installed. Otherwise sets
    `environ["KERAS_BACKEND"]` to the first installed backend of `PREFERENCE`
    (jax, torch, tensorflow), prints one line saying so to `stream`, and, when
    no `keras.json` exists, writes one with that backend (Keras would write
    one with "tensorflow"), so the next runs agree.

    Args:
        environ: the environment to read and update (default `os.environ`).
        find_spec: `importlib.util.find_spec` or a stand-in (tests).
        stream: where the message goes (default `sys.stderr`).
        write_config: whether to write a missing `keras.json`.
        modules: the imported modules (default `sys.modules`; tests).

    Returns:
        The backend Keras will use (`None` when Keras is already imported, or
        when nothing is configured and no backend is installed).

    Example:
    ```python
    from keras_ambient.utils.backend_choice import choose_backend

    choose_backend()  # e.g. "jax" in a JAX-only environment without keras.json
    ```
    """
    if "keras" in (sys.modules if modules is None else modules):
        return None
    environ = os.environ if environ is None else environ
    configured, source = configured_backend(environ)
    if configured is not None and (source == "KERAS_BACKEND" or is_installed(configured, find_spec)):
        # An explicit KERAS_BACKEND is the user's word: never overridden (Keras
        # reports a missing module itself).
        return configured
    installed = installed_backends(find_spec)
    if not installed:
        return configured  # Keras reports the missing module
    choice = installed[0]
    environ["KERAS_BACKEND"] = choice
    path = keras_config_path(environ)
    if configured is None:
        reason = (f"no Keras backend is configured (KERAS_BACKEND is unset and {path} names "
                  f"none; Keras would use '{KERAS_DEFAULT}')")
        saved = write_config and _write_keras_config(path, choice)
    else:
        reason = f"the configured Keras backend '{configured}' ({source}) is not installed"
        saved = False
    print(f"keras_ambient: {reason}: using the installed '{choice}' backend (installed: "
          f"{', '.join(installed)})" + (f", saved in {path}" if saved else "")
          + ". Set KERAS_BACKEND to choose.", file=sys.stderr if stream is None else stream)
    return choice
