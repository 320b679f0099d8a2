"""Blocked exact nearest-neighbour search with `keras.ops` (docs/method.md §7)."""

import keras
import numpy as np
from keras import ops

from keras_ambient.utils.validation import check_choice, check_int, check_samples

METRICS = ("cosine", "l2")


def _l2_normalize(features, epsilon=1e-12):
    """Rows divided by their L2 norm (zero rows stay zero), in float32."""
    features = np.asarray(features, dtype="float32")
    norms = np.linalg.norm(features.astype("float64"), axis=1, keepdims=True)
    return (features / np.maximum(norms, epsilon)).astype("float32")


def _progbar(target, verbose, unit_name="block"):
    """A `keras.utils.Progbar` when `verbose` is truthy, else `None` (silent)."""
    if not verbose:
        return None
    return keras.utils.Progbar(max(int(target), 1), verbose=1, unit_name=unit_name)


def _num_blocks(n, batch_size):
    return -(-int(n) // int(batch_size))


def nearest_neighbors(queries, references, metric="cosine", k=2,
                      query_batch_size=1024, reference_batch_size=8192, verbose=0):
    """Exact k nearest neighbours of every query among `references`.

    The `(queries x references)` score matrix is never formed: queries and
    references are processed in blocks with `keras.ops.matmul`, and a running
    top-k per query is merged block by block, so memory stays at
    `query_batch_size x reference_batch_size` scores (50k x 50k works). The
    returned values are then recomputed exactly (float64, NumPy) for the
    selected pairs, so an exact duplicate has cosine similarity 1 and L2
    distance 0.

    Args:
        queries: array `(n, ...)`; trailing axes are flattened into features.
        references: array `(m, ...)` with the same number of features.
        metric: `"cosine"` (values are similarities, largest first) or `"l2"`
            (values are Euclidean distances, smallest first).
        k: neighbours per query (capped at `m`).
        query_batch_size: queries per block.
        reference_batch_size: references per block.
        verbose: 0 (default) is silent; a truthy value shows a
            `keras.utils.Progbar` over the `(query block, reference block)`
            pairs of the search.

    Returns:
        A tuple `(values, indices)` of NumPy arrays of shape `(n, min(k, m))`:
        float64 similarities or distances, and int64 indices into `references`.

    Example:
    ```python
    values, indices = ka.memorization.nearest_neighbors(
        samples, x_train, metric="l2", k=2)
    ratio = values[:, 0] / values[:, 1]   # Carlini et al. ratio test
    ```
    """
    return _search(queries, references, metric, k, query_batch_size, reference_batch_size,
                   verbose=verbose)


def _search(queries, references, metric, k, query_batch_size, reference_batch_size,
            verbose=0, progbar=None):
    """`nearest_neighbors`; `progbar` (a `Progbar` with room for this search's
    blocks, shared by several searches) overrides `verbose`."""
    check_choice("metric", metric, METRICS)
    k = check_int("k", k, minimum=1)
    query_batch_size = check_int("query_batch_size", query_batch_size, minimum=1)
    reference_batch_size = check_int("reference_batch_size", reference_batch_size, minimum=1)
    q = check_samples("queries", queries, dtype="float32")
    r = check_samples("references", references, dtype="float32")
    if q.shape[1] != r.shape[1]:
        raise ValueError(
            "`queries` and `references` must have the same number of features. "
            f"Received: queries with shape {np.shape(queries)} and references with "
            f"shape {np.shape(references)}"
        )
    k = min(k, r.shape[0])
    q_raw, r_raw = q, r
    if metric == "cosine":
        q, r = _l2_normalize(q), _l2_normalize(r)
    # Reference blocks and their squared norms, converted once.
    ref_blocks = []
    for start in range(0, r.shape[0], reference_batch_size):
        block = r[start:start + reference_batch_size]
        sq = np.sum(block.astype("float64") ** 2, axis=1).astype("float32")
        ref_blocks.append((start, ops.convert_to_tensor(block), ops.convert_to_tensor(sq[None, :])))
    if progbar is None:
        progbar = _progbar(_num_blocks(q.shape[0], query_batch_size) * len(ref_blocks), verbose)

    all_values, all_indices = [], []
    for qs in range(0, q.shape[0], query_batch_size):
        qb = ops.convert_to_tensor(q[qs:qs + query_batch_size])
        best_val = best_idx = None
        for start, rb, rsq in ref_blocks:
            dots = ops.matmul(qb, ops.transpose(rb))
            # Larger is better for both: cosine similarity, or
            # -(|r|^2 - 2 q.r) (= -|q - r|^2 up to the per-query |q|^2).
            score = dots if metric == "cosine" else 2.0 * dots - rsq
            kk = min(k, int(rb.shape[0]))
            val, idx = ops.top_k(score, k=kk, sorted=True)
            idx = ops.cast(idx, "int32") + start
            if best_val is None:
                best_val, best_idx = val, idx
            else:
                val = ops.concatenate([best_val, val], axis=1)
                idx = ops.concatenate([best_idx, idx], axis=1)
                best_val, pos = ops.top_k(val, k=min(k, int(val.shape[1])), sorted=True)
                best_idx = ops.take_along_axis(idx, pos, axis=1)
            if progbar is not None:
                progbar.add(1)
        indices = np.asarray(ops.convert_to_numpy(best_idx), dtype="int64")
        values, indices = _exact_values(q_raw[qs:qs + query_batch_size], r_raw, indices, metric)
        all_values.append(values)
        all_indices.append(indices)
    return np.concatenate(all_values, axis=0), np.concatenate(all_indices, axis=0)


def _exact_values(q, r, indices, metric):
    """Float64 similarities/distances of the selected pairs, re-sorted."""
    q = q.astype("float64")
    picked = r[indices].astype("float64")  # (n, k, d)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        picked = picked / np.maximum(np.linalg.norm(picked, axis=2, keepdims=True), 1e-12)
        values = np.einsum("nd,nkd->nk", q, picked)
        order = np.argsort(-values, axis=1, kind="stable")
    else:
        values = np.sqrt(np.sum((q[:, None, :] - picked) ** 2, axis=2))
        order = np.argsort(values, axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(indices, order, axis=1)
