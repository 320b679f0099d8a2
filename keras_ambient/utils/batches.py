"""The batch formats of `ka.AmbientDiffusion` and their collision with Keras's.

A batch is one of
- `data` alone (every sample at the model's `sigma_n`),
- a tuple `(data,)`, `(data, sigma_n)` or `(data, sigma_n, condition)`,
- a dict with the key `"data"` and optionally `"sigma_n"`, `"condition"` and
  `"sample_weight"` (the documented format for datasets).

Keras unpacks every flat 3-tuple batch of a dataset as `(x, y, sample_weight)`,
so `(data, sigma_n, condition)` would reach the loss with the labels as sample
weights. `as_keras_batch` rewraps such a batch as `((data, sigma_n, condition),)`
before Keras unpacks it (in `train_step` / `test_step`), so the tuple means the
same from NumPy, `tf.data`, `PyDataset`, a torch `DataLoader` and in
`validation_data`. Sample weights given to `fit`/`evaluate` are moved into the
dict form first (`fold_sample_weight`), so no 3-tuple is ambiguous.
"""

DATA_KEYS = ("data", "sigma_n", "condition", "sample_weight")


def _is_structure(v):
    return isinstance(v, (dict, list, tuple))


def as_keras_batch(batch):
    """The raw batch Keras's adapters deliver, rewrapped so Keras unpacks it as
    `x = batch` (a flat `(data, sigma_n, condition)` tuple becomes `(batch,)`)."""
    if isinstance(batch, (list, tuple)) and len(batch) == 3 and not _is_structure(batch[0]):
        return (tuple(batch),)
    return batch


def unpack(x, y=None, sample_weight=None):
    """`(data, sigma_n, condition, sample_weight)` of a batch unpacked by Keras.

    Args:
        x: what Keras passes to `compute_loss` as `x`.
        y: what Keras passes as `y` (per-sample `sigma_n`, as in `fit(y, sigma_n)`).
        sample_weight: what Keras passes as `sample_weight`.
    """
    sigma_n = condition = weight = None
    if isinstance(x, dict):
        unknown = set(x) - set(DATA_KEYS)
        if unknown or "data" not in x:
            raise ValueError(
                "A dict batch must have the key 'data' and optionally 'sigma_n', "
                f"'condition', 'sample_weight'. Received: keys {sorted(x)}"
            )
        data, sigma_n = x["data"], x.get("sigma_n")
        condition, weight = x.get("condition"), x.get("sample_weight")
    elif isinstance(x, (list, tuple)):
        if not 1 <= len(x) <= 3:
            raise ValueError(
                "A tuple batch must be (data,), (data, sigma_n) or (data, sigma_n, "
                "condition); pass a dict {'data', 'sigma_n', 'condition', "
                f"'sample_weight'}} for anything else. Received: a tuple of {len(x)} elements"
            )
        data = x[0]
        sigma_n = x[1] if len(x) > 1 else None
        condition = x[2] if len(x) > 2 else None
    else:
        data = x
    if y is not None:
        if sigma_n is not None:
            raise ValueError(
                "Per-sample sigma_n was given twice: in the inputs and as `y`. "
                "Received: both"
            )
        sigma_n = y
    if sample_weight is not None:
        if weight is not None:
            raise ValueError(
                "Sample weights were given twice: as the batch's 'sample_weight' and "
                "as Keras's `sample_weight`. Received: both"
            )
        weight = sample_weight
    return data, sigma_n, condition, weight


def fold_sample_weight(x, y, sample_weight):
    """Moves `fit`/`evaluate`'s `sample_weight` (and a `y` of per-sample
    `sigma_n`) into the dict batch format. Returns `(x, y)`."""
    if sample_weight is None:
        return x, y
    data, sigma_n, condition, _ = unpack(x, y)
    batch = {"data": data, "sample_weight": sample_weight}
    if sigma_n is not None:
        batch["sigma_n"] = sigma_n
    if condition is not None:
        batch["condition"] = condition
    return batch, None
