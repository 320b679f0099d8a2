"""Loading a saved `AmbientDiffusion` model, with errors that say what is wrong with the file."""

import os
import zipfile

import keras

from keras_ambient.utils.validation import check_path

# `.keras` is the only format that stores the whole model (network, EMA copy, seed
# state, losses); the legacy HDF5 format cannot be loaded back into an AmbientDiffusion.
LEGACY_EXTENSIONS = (".h5", ".hdf5")


def check_save_path(filepath):
    """Raise unless `filepath` names a native `.keras` file (what `AmbientDiffusion.save` writes)."""
    if hasattr(filepath, "write"):  # a file object: Keras writes the `.keras` archive into it
        return filepath
    path = check_path("filepath", filepath)
    if path.lower().endswith(LEGACY_EXTENSIONS):
        raise ValueError(
            "AmbientDiffusion saves only to the native `.keras` format: the legacy HDF5 "
            "format cannot store its EMA network, seed state and losses, and the file could "
            "not be loaded back. Use a `.keras` path (or `save_weights(\"....weights.h5\")` for "
            f"the weights alone). Received: filepath={path!r}"
        )
    if not path.endswith(".keras"):
        raise ValueError(f"`filepath` must end in `.keras`. Received: filepath={path!r}")
    return path


def load_model(filepath, compile=True, safe_mode=True):
    """Loads an `AmbientDiffusion` model saved with `model.save("....keras")`.

    Same as `keras.models.load_model` for a good file; for a bad one the error
    names the file and what is wrong with it (missing, legacy HDF5, not a `.keras`
    zip archive, truncated or corrupt weights, another kind of model) instead of
    Keras's "File not found" or a deep h5py traceback.

    Args:
        filepath: path of a `.keras` file.
        compile: whether to restore the compiled optimizer and its state.
        safe_mode: passed to `keras.models.load_model` (refuses `Lambda` code).

    Returns:
        The `keras_ambient.AmbientDiffusion` model.

    Raises:
        FileNotFoundError: no file at `filepath`.
        ValueError: the file is not a readable `.keras` archive of a model.
        TypeError: the file holds a Keras model that is not an `AmbientDiffusion`.

    Example:

    ```python
    model.save("ambient.keras")
    model = keras_ambient.models.load_model("ambient.keras")
    ```
    """
    from keras_ambient.models.ambient_diffusion import AmbientDiffusion

    path = check_path("filepath", filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No model file at `filepath`. Received: filepath={path!r}")
    if os.path.isdir(path):
        raise ValueError(
            f"`filepath` is a folder, not a `.keras` file. Received: filepath={path!r}"
        )
    if path.lower().endswith(LEGACY_EXTENSIONS):
        raise ValueError(
            "Legacy HDF5 model files cannot hold an AmbientDiffusion model (its EMA network, "
            "seed state and losses); save with `model.save(\"....keras\")`. For a weights file "
            "written by `save_weights`, build the model and call `model.load_weights(path)`. "
            f"Received: filepath={path!r}"
        )
    problem = None
    if os.path.getsize(path) == 0:
        problem = "the file is empty"
    elif not zipfile.is_zipfile(path):
        problem = "it is not a complete zip archive (a `.keras` file is one; a truncated copy is not)"
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                bad_member = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            problem = f"its zip archive is damaged ({type(e).__name__}: {e})"
        else:
            if bad_member is not None:
                problem = f"its member {bad_member!r} fails its checksum (the file is damaged)"
            elif "config.json" not in names:
                problem = "it has no `config.json` (not a Keras model archive)"
    if problem is None:
        try:
            model = keras.models.load_model(path, compile=compile, safe_mode=safe_mode)
        except (OSError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            # h5py's errors for damaged weights are OSErrors; a damaged JSON or archive
            # member gives the others.
            problem = f"its contents could not be read ({type(e).__name__}: {str(e)[:300]})"
        except Exception as e:  # noqa: BLE001  (e.g. an unregistered custom class: keep Keras's words)
            raise ValueError(
                f"Keras could not load the model in `filepath`: {type(e).__name__}: {e} "
                f"Received: filepath={path!r}"
            ) from e
    if problem is not None:
        raise ValueError(
            f"Cannot load an AmbientDiffusion model: the file is corrupt or not a `.keras` file: "
            f"{problem}. Received: filepath={path!r}"
        )
    if not isinstance(model, AmbientDiffusion):
        raise TypeError(
            f"The file holds a {type(model).__name__}, not a keras_ambient AmbientDiffusion "
            f"model; load it with `keras.models.load_model`. Received: filepath={path!r}"
        )
    return model
