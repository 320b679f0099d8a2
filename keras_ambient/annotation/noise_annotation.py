import os
import warnings

import numpy as np

from keras_ambient.utils.validation import check_path, check_scalar


class NoiseAnnotation:
    """Per-sample minimum noise levels of a corrupted dataset (Ambient Omni annotation).

    Holds, for each corrupted sample `i`, the classifier's probability of
    "clean" along a grid of noise levels, and the level `levels[i]`: the
    lowest grid level from which on that probability stays `>= tau` (the
    classifier can no longer tell the sample from clean data). A sample whose
    probability never reaches `tau` on the grid is unusable: its level is NaN
    and `training_data` drops it (counted). With groups, every member of a
    group gets the level of the group's mean curve.

    Made by `ka.annotation.annotate_noise_levels`; saved with `save(path)`
    (a NumPy `.npz`) and reloaded with `NoiseAnnotation.load(path)`.

    Args:
        grid: increasing noise levels `(num_levels,)`.
        probabilities: `(num_samples, num_levels)` probabilities of "clean".
        tau: the threshold, in (0, 1).
        groups: optional group id per sample (`(num_samples,)` ints): one
            level per group.

    Example:
    ```python
    annotation = ka.annotation.annotate_noise_levels(classifier, blurred, seed=0)
    annotation.levels            # (n,), NaN where unusable
    y, sigma_n = annotation.training_data(clean, blurred, seed=1)
    model.fit((y, sigma_n), epochs=10)
    annotation.save("levels.npz")
    annotation = ka.annotation.NoiseAnnotation.load("levels.npz")
    ```

    References:
        - Daras, Rodriguez-Munoz, Klivans, Torralba, Daskalakis. "Ambient
          Diffusion Omni: Training Good Models with Bad Data". 2025,
          arXiv:2506.10038.
        - docs/method.md §9 (in this repository).
    """

    def __init__(self, grid, probabilities, tau=0.45, groups=None):
        grid = check_grid(grid)
        p = _float_array("probabilities", probabilities)
        if p.ndim != 2 or p.shape[1] != len(grid) or not np.all((p >= 0) & (p <= 1)):
            raise ValueError(
                "`probabilities` must be an array (num_samples, len(grid)) of values in [0, 1]. "
                f"Received: probabilities with shape {p.shape} for a grid of {len(grid)} levels"
            )
        self.tau = check_scalar("tau", tau, minimum=0, maximum=1, min_inclusive=False,
                                max_inclusive=False)
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape != (len(p),) or groups.dtype.kind not in "iu":
                raise ValueError(
                    "`groups` must hold one integer group id per sample. Received: groups with "
                    f"shape {groups.shape} and dtype {groups.dtype} for {len(p)} samples"
                )
        self.grid, self.probabilities, self.groups = grid, p, groups
        self.levels = self._levels()

    def _levels(self):
        curves = self.probabilities
        if self.groups is not None:
            ids, inverse = np.unique(self.groups, return_inverse=True)
            means = np.stack([curves[inverse == k].mean(axis=0) for k in range(len(ids))])
            return _first_level_staying_above(means, self.grid, self.tau)[inverse]
        return _first_level_staying_above(curves, self.grid, self.tau)

    @property
    def usable(self):
        """Boolean mask `(num_samples,)`: samples with a level on the grid."""
        return np.isfinite(self.levels)

    @property
    def num_dropped(self):
        """Samples whose probability never reached `tau` on the grid."""
        return int(np.sum(~self.usable))

    def training_data(self, clean, corrupted, seed=None):
        """`(y, sigma_n)` for `AmbientDiffusion.fit`: clean samples at level 0, usable
        corrupted samples noised once at their level; unusable ones dropped (warned).

        Args:
            clean: clean samples `(m, ...)` (may be empty: `(0, ...)`).
            corrupted: the annotated corrupted samples `(n, ...)`, in the order
                of the annotation.
            seed: seed of the one noise draw per corrupted sample.

        Returns:
            `(y, sigma_n)`: float32 arrays `(m + n_usable, ...)` and
            `(m + n_usable,)`, clean samples first.
        """
        from keras_ambient.data.noise import add_noise

        clean = np.asarray(clean, dtype="float32")
        corrupted = np.asarray(corrupted, dtype="float32")
        if len(corrupted) != len(self.levels):
            raise ValueError(
                f"`corrupted` must hold the {len(self.levels)} annotated samples. Received: "
                f"corrupted with {len(corrupted)} samples"
            )
        if clean.shape[1:] != corrupted.shape[1:]:
            raise ValueError(
                "`clean` and `corrupted` must have samples of the same shape. Received: clean "
                f"with shape {clean.shape}, corrupted with shape {corrupted.shape}"
            )
        if self.num_dropped:
            warnings.warn(
                f"{self.num_dropped} of {len(self.levels)} corrupted samples never became "
                f"indistinguishable from clean data on the grid (probability < tau={self.tau} up "
                f"to sigma={self.grid[-1]:g}); they are dropped.",
                stacklevel=2,
            )
        keep = self.usable
        noisy = add_noise(corrupted[keep], self.levels[keep], seed=seed)
        y = np.concatenate([clean, noisy], axis=0).astype("float32")
        sigma_n = np.concatenate([np.zeros(len(clean)), self.levels[keep]]).astype("float32")
        return y, sigma_n

    def save(self, path):
        """Writes the annotation to a NumPy `.npz` file."""
        path = check_path("path", path)
        if not path.endswith(".npz"):
            raise ValueError(f"`path` must end in '.npz'. Received: path={path!r}")
        arrays = {"grid": self.grid, "probabilities": self.probabilities, "tau": np.float64(self.tau)}
        if self.groups is not None:
            arrays["groups"] = self.groups
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path):
        """Reads an annotation written by `save`."""
        path = check_path("path", path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No annotation file at `path`. Received: path={path!r}")
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls(f["grid"], f["probabilities"], float(f["tau"]),
                           f["groups"] if "groups" in f.files else None)
        except (KeyError, ValueError, OSError) as e:
            if isinstance(e, ValueError) and "Received" in str(e):
                raise
            raise ValueError(f"`path` is not an annotation written by NoiseAnnotation.save. "
                             f"Received: path={path!r} ({e})") from e

    def __repr__(self):
        usable = self.levels[self.usable]
        median = f"{np.median(usable):.3g}" if len(usable) else "n/a"
        return (f"NoiseAnnotation({len(self.levels)} samples, median level {median}, "
                f"{self.num_dropped} unusable, tau={self.tau})")


def check_grid(grid):
    """At least 2 increasing finite noise levels > 0, as a float64 array."""
    grid = _float_array("grid", grid)
    if grid.ndim != 1 or len(grid) < 2 or not np.all(np.isfinite(grid)) or np.any(grid <= 0) \
            or np.any(np.diff(grid) <= 0):
        raise ValueError(
            "`grid` must be at least 2 increasing noise levels > 0. Received: grid="
            f"{np.array2string(grid, precision=4, threshold=8)}"
        )
    return grid


def _float_array(name, value):
    try:
        return np.asarray(value, dtype="float64")
    except (TypeError, ValueError) as e:
        raise TypeError(f"`{name}` must be an array of numbers. Received: {name}={value!r}") from e


def _first_level_staying_above(curves, grid, tau):
    """Per row, the lowest grid level from which the curve stays >= tau (NaN: never at the top)."""
    above = curves >= tau
    # Index of the first level of the final run of True values.
    stays = np.flip(np.cumprod(np.flip(above, axis=1), axis=1), axis=1).astype(bool)
    first = np.argmax(stays, axis=1)
    levels = grid[first].astype("float64")
    levels[~above[:, -1]] = np.nan
    return levels
