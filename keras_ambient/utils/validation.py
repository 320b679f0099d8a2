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


def check_bool(name, value):
    """A Python bool (or NumPy bool); strings such as "yes" are refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"`{name}` must be True or False. Received: {name}={value!r} of type {type(value).__name__}"
        )
    return bool(value)


def check_path(name, value):
    """A non-empty str or os.PathLike; returns it as a str."""
    import os

    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"`{name}` must be a path (str or os.PathLike). Received: {name}={value!r} "
            f"of type {type(value).__name__}"
        )
    path = os.fspath(value)
    if not path:
        raise ValueError(f"`{name}` must be a non-empty path. Received: {name}={value!r}")
    return path


def check_range(name, value, hint=""):
    """A `(low, high)` pair of finite reals with `low < high` (`hint`: an example for the error)."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low = high = float("nan")
    if isinstance(value, str) or not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(
            f"`{name}` must be a (low, high) pair of finite numbers with low < high{hint}. "
            f"Received: {name}={value!r}"
        )
    return low, high


def check_int_tuple(name, value, *, length=None, minimum=None, allow_empty=False):
    """A list/tuple of integers (each >= `minimum`, `length` of them if given); returns a tuple."""
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
    ok = ok and (length is None or len(value) == length) and (allow_empty or len(value) > 0)
    ok = ok and (minimum is None or all(v >= minimum for v in value))
    if not ok:
        what = f"{length} integers" if length is not None else "a list of integers"
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"`{name}` must be {what}{bound}. Received: {name}={value!r}")
    return tuple(int(v) for v in value)


def check_samples(name, x, *, min_rows=1, allow_1d=False, dtype="float64"):
    """A finite real array of samples as an `(n, d)` NumPy matrix (trailing axes flattened).

    The one validator of sample matrices (evaluation metrics, nearest neighbours,
    feature extractors). A 1-D array is `n` scalar samples when `allow_1d`, an
    error otherwise; `min_rows=0` admits an empty array.
    """
    try:
        arr = np.asarray(x)
    except Exception as e:  # noqa: BLE001  (ragged lists and exotic objects)
        raise TypeError(f"`{name}` must be a numeric array. Received: {name} of type "
                        f"{type(x).__name__}") from e
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"`{name}` must be a numeric array of real numbers. Received: {name} "
                        f"with dtype {arr.dtype}")
    if arr.ndim == 1 and allow_1d:
        arr = arr[:, None]
    if arr.ndim < 2:
        raise ValueError(f"`{name}` must be an array of samples with shape (n, dim) or (n, ...). "
                         f"Received: {name} with shape {arr.shape}")
    if arr.shape[0] < min_rows:
        what = "must not be empty" if min_rows == 1 else f"must hold at least {min_rows} samples"
        raise ValueError(f"`{name}` {what}. Received: {name} with shape {arr.shape}")
    arr = arr.reshape(arr.shape[0], -1).astype(dtype)
    if arr.shape[1] == 0:
        raise ValueError(f"`{name}` has no features. Received: {name} with shape {np.shape(x)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite. Received: {name} with "
                         f"{int(np.sum(~np.isfinite(arr)))} NaN/Inf values")
    return arr
