"""Argument checks that raise Keras-style errors ("... Received: name=value")."""

import math
import numbers

import numpy as np


def check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"`{name}` must be one of {sorted(allowed)}. Received: {name}={value!r}"
        )
    return value


def check_scalar(name, value, *, minimum=None, maximum=None,
                 min_inclusive=True, max_inclusive=True, allow_none=False):
    """Checks that `value` is a finite real number inside the given bounds."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a real number. Received: {name}={value!r} "
            f"of type {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite. Received: {name}={value}")
    if minimum is not None:
        bad = value < minimum if min_inclusive else value <= minimum
        if bad:
            op = ">=" if min_inclusive else ">"
            raise ValueError(
                f"`{name}` must be {op} {minimum}. Received: {name}={value}"
            )
    if maximum is not None:
        bad = value > maximum if max_inclusive else value >= maximum
        if bad:
            op = "<=" if max_inclusive else "<"
            raise ValueError(
                f"`{name}` must be {op} {maximum}. Received: {name}={value}"
            )
    return value


def check_int(name, value, *, minimum=None, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be an integer. Received: {name}={value!r} "
            f"of type {type(value).__name__}"
        )
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}. Received: {name}={value}")
    return value


def check_noise_levels(name, sigma, *, sigma_max=None, length=None):
    """Validates a scalar or per-sample array of noise levels (numpy side).

    Returns a float32 numpy array (0-d for a scalar).
    """
    arr = np.asarray(sigma, dtype="float64")
    if arr.ndim > 1:
        arr = arr.reshape(arr.shape[0], -1)
        if arr.shape[1] != 1:
            raise ValueError(
                f"`{name}` must be a scalar or hold one value per sample. "
                f"Received: {name} with shape {np.shape(sigma)}"
            )
        arr = arr[:, 0]
    if not np.all(np.isfinite(arr)):
        bad = arr[~np.isfinite(arr)].ravel()[0]
        raise ValueError(
            f"`{name}` must be finite. Received: {name} containing {bad}"
        )
    if np.any(arr < 0):
        bad = arr[arr < 0].ravel()[0]
        raise ValueError(f"`{name}` must be >= 0. Received: {name}={_show(arr, bad)}")
    if sigma_max is not None and np.any(arr >= sigma_max):
        bad = arr[arr >= sigma_max].ravel()[0]
        raise ValueError(
            f"`{name}` must be below the schedule's sigma_max={sigma_max}. "
            f"Received: {name}={_show(arr, bad)}"
        )
    if length is not None and arr.ndim == 1 and arr.shape[0] != length:
        raise ValueError(
            f"A per-sample `{name}` must have one value per sample: the data has "
            f"{length} samples. Received: {name} with {arr.shape[0]} values"
        )
    return arr.astype("float32")


def _show(arr, bad):
    return f"{bad:g}" if arr.ndim == 0 else f"array with value {bad:g}"


def check_finite_array(name, x):
    """Raises if a numpy array holds NaN or Inf (numpy inputs only)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fc":
        return
    finite = np.isfinite(arr)
    if not finite.all():
        flat = np.argwhere(~finite)
        idx = tuple(int(i) for i in flat[0])
        raise ValueError(
            f"`{name}` holds {int((~finite).sum())} non-finite value(s) "
            f"(first at index {idx}: {arr[idx]}). Training on NaN/Inf would "
            f"silently corrupt the model; clean or drop those samples. "
            f"Received: {name} with non-finite values"
        )
