"""Helpers for conditions that are arrays or nested structures of arrays, and
for the input list of a denoiser.

A condition is one array (class labels, vectors) or a dict / tuple of arrays
(e.g. Stable Diffusion 3's `{"context": ..., "pooled_projection": ...}`), each
with one entry per sample along axis 0.
"""

import keras
import numpy as np
from keras import ops


def denoiser_inputs(x, sigma, condition=None):
    """The inputs of a denoiser and of the network it wraps: `[x, sigma]`, or
    `[x, sigma, condition]` when a condition is given."""
    return [x, sigma] if condition is None else [x, sigma, condition]


def condition_length(condition):
    """Number of samples of a (possibly nested) condition."""
    leaves = keras.tree.flatten(condition)
    lengths = {int(np.shape(leaf)[0]) for leaf in leaves}
    if len(lengths) != 1:
        raise ValueError(
            "Every array of a nested condition must have one entry per sample. "
            f"Received: arrays with {sorted(lengths)} entries"
        )
    return lengths.pop()


def slice_condition(condition, start, stop):
    """`condition[start:stop]` for every array, as NumPy."""
    if condition is None:
        return None
    return keras.tree.map_structure(lambda a: np.asarray(a)[start:stop], condition)


def pad_condition(condition, pad):
    """Appends `pad` copies of the first entry to every array (NumPy)."""
    if condition is None or pad == 0:
        return condition
    return keras.tree.map_structure(
        lambda a: np.concatenate([a, np.repeat(np.asarray(a)[:1], pad, axis=0)]), condition
    )


def repeat_condition(condition, times=2):
    """`[condition; ...; condition]` (`times` copies) along axis 0 for every array (tensors)."""
    if condition is None:
        return None
    return keras.tree.map_structure(lambda a: ops.concatenate([a] * times, axis=0), condition)


def map_in_batches(fn, x, batch_size, pad=False, on_batch=None):
    """`fn` over `x[i:i + batch_size]`, outputs as float32 NumPy, concatenated.

    The one batching loop of the library's NumPy-side helpers (feature
    extractors, latent encoding, noise attacks). With `pad=True` and more than
    one batch, the last batch is padded to `batch_size` by repeating its final
    row, so a compiled function (JAX, XLA) sees a single batch shape; the padded
    rows are dropped. `on_batch(num_rows)` is called after each batch (progress).
    """
    n = len(x)
    outs = []
    for i in range(0, n, batch_size):
        batch = x[i:i + batch_size]
        m = len(batch)
        if pad and n > batch_size and m < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - m, axis=0)], axis=0)
        outs.append(np.asarray(ops.convert_to_numpy(fn(batch)), dtype="float32")[:m])
        if on_batch is not None:
            on_batch(m)
    return np.concatenate(outs, axis=0)
