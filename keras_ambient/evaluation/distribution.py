"""Distribution-level quality metrics for low-dimensional samples (NumPy).

Used by `benchmarks/mixture_2d.py` to compare generated samples with held-out
clean data: the sliced Wasserstein distance (overall fit) and the mean
within-cluster standard deviation (sharpness of a mixture's components; a
model that learned the noisy data has clusters that are too wide, truncated
ambient sampling gives clusters that are too narrow, see docs/method.md §8).
"""

import numpy as np

from keras_ambient.utils.validation import check_samples


def _quantiles(sorted_values, levels):
    """Empirical quantile function of sorted 1-D samples at `levels` (linear interpolation)."""
    n = sorted_values.shape[0]
    positions = (np.arange(n) + 0.5) / n
    return np.stack([np.interp(levels, positions, sorted_values[:, j]) for j in range(sorted_values.shape[1])],
                    axis=1)


def sliced_wasserstein_distance(a, b, num_projections=256, seed=0, power=1):
    """Sliced Wasserstein distance between two sample sets.

    `power=1` (default) gives the sliced W1 described below; `power=2` gives the
    squared sliced W2 (the mean squared quantile difference), which for
    `b = a + c` equals `||c||^2 / dim`. Images `(n, h, w, c)` are flattened
    per sample.

    Projects both sets on `num_projections` random unit directions (drawn
    uniformly on the sphere with `numpy.random.default_rng(seed)`, the same
    directions for both sets) and averages the 1-D **W1** distance
    `integral_0^1 |F_a^-1(q) - F_b^-1(q)| dq` over the directions. With equal
    sample counts the 1-D W1 is the mean absolute difference of the sorted
    projections; with unequal counts both empirical quantile functions are
    linearly interpolated on a common grid of `max(len(a), len(b))` levels.

    For two Gaussians `N(mu, I)` and `N(mu + m, I)` in 2-D every projection is
    a pure shift by `u.m`, so the exact value is `E|u.m| = (2/pi) |m|`.
    The estimate has a positive floor for finite samples (about
    `0.5 * scale / sqrt(n)`): compare two independent sets from the same law
    to calibrate it.

    Args:
        a: samples, shape `(n, dim)` (or `(n,)` for 1-D data).
        b: samples, shape `(m, dim)`, same `dim`.
        num_projections: number of random directions (>= 1).
        seed: seed of the directions.
        power: 1 (sliced W1) or 2 (squared sliced W2).

    Returns:
        A Python float.

    Example:
    ```python
    from keras_ambient.evaluation.distribution import sliced_wasserstein_distance
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2000, 2)), rng.normal(size=(3000, 2)) + [1.0, 0.0]
    sliced_wasserstein_distance(x, y, num_projections=1024)  # about 2/pi
    ```
    """
    a = check_samples("a", a, allow_1d=True)
    b = check_samples("b", b, allow_1d=True)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"`a` and `b` must have the same dimension. Received: a with shape {a.shape}, b with shape {b.shape}"
        )
    if isinstance(num_projections, bool) or not isinstance(num_projections, (int, np.integer)) or num_projections < 1:
        raise ValueError(f"`num_projections` must be an integer >= 1. Received: num_projections={num_projections!r}")
    if power not in (1, 2):
        raise ValueError(f"`power` must be 1 or 2. Received: power={power!r}")
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((a.shape[1], int(num_projections)))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    pa = np.sort(a @ dirs, axis=0)
    pb = np.sort(b @ dirs, axis=0)
    if len(pa) != len(pb):
        n = max(len(pa), len(pb))
        levels = (np.arange(n) + 0.5) / n
        pa = _quantiles(pa, levels) if len(pa) != n else pa
        pb = _quantiles(pb, levels) if len(pb) != n else pb
    return float(np.mean(np.abs(pa - pb) ** power))


def within_cluster_std(samples, centers, max_radius=None, min_cluster_size=5, return_per_cluster=False):
    """Mean within-cluster standard deviation of samples around known centers.

    Each sample is assigned to its nearest center (optionally only if it lies
    within `max_radius` of it; samples farther away are ignored). For each
    cluster the per-axis standard deviation is measured around the cluster's
    own sample mean, `sqrt(mean over samples and axes of (x - mean)^2)` (the
    RMS per-axis deviation), and the result is the average over clusters with
    at least `min_cluster_size` samples. For exact isotropic Gaussian clusters
    of std `s` that are well separated it returns `s`.

    Args:
        samples: `(n, dim)` samples.
        centers: `(k, dim)` cluster centers (e.g. a mixture's means).
        max_radius: if set (> 0), only samples within this distance of their
            nearest center are used (a robust variant that discounts samples
            between clusters).
        min_cluster_size: clusters with fewer assigned samples are skipped.
        return_per_cluster: also return the per-cluster values (NaN for
            skipped clusters) and the counts.

    Returns:
        A Python float (NaN if no cluster has enough samples), or
        `(value, per_cluster, counts)` when `return_per_cluster`.

    Example:
    ```python
    gm = ka.data.GaussianMixture.circle(8, radius=1.0, std=0.05)
    within_cluster_std(gm.sample(4000, seed=0), gm.means)  # about 0.05
    ```
    """
    x = check_samples("samples", samples, allow_1d=True)
    c = check_samples("centers", centers, allow_1d=True)
    if x.shape[1] != c.shape[1]:
        raise ValueError(
            f"`samples` and `centers` must have the same dimension. Received: samples with shape {x.shape}, "
            f"centers with shape {c.shape}"
        )
    if max_radius is not None and not (np.isscalar(max_radius) and float(max_radius) > 0):
        raise ValueError(f"`max_radius` must be None or a number > 0. Received: max_radius={max_radius!r}")
    if isinstance(min_cluster_size, bool) or not isinstance(min_cluster_size, (int, np.integer)) \
            or min_cluster_size < 2:
        raise ValueError(f"`min_cluster_size` must be an integer >= 2. Received: min_cluster_size={min_cluster_size!r}")
    d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    nearest = np.argmin(d2, axis=1)
    keep = np.ones(len(x), dtype=bool)
    if max_radius is not None:
        keep = d2[np.arange(len(x)), nearest] <= float(max_radius) ** 2
    per_cluster = np.full(len(c), np.nan)
    counts = np.zeros(len(c), dtype=int)
    for k in range(len(c)):
        pts = x[keep & (nearest == k)]
        counts[k] = len(pts)
        if len(pts) >= min_cluster_size:
            per_cluster[k] = np.sqrt(np.mean((pts - pts.mean(axis=0)) ** 2))
    valid = ~np.isnan(per_cluster)
    value = float(np.mean(per_cluster[valid])) if valid.any() else float("nan")
    if return_per_cluster:
        return value, per_cluster, counts
    return value
