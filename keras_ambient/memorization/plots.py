"""Pictures of memorization: image triplets and similarity histograms (matplotlib, Agg)."""

import numpy as np

from keras_ambient.memorization.report import MemorizationReport


def _plt():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "Plots need matplotlib: `pip install matplotlib pillow` "
            "(or `pip install keras-ambient[plots]`)."
        ) from e
    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo"):
        try:
            matplotlib.use("Agg", force=False)
        except Exception:  # pragma: no cover
            pass
    import matplotlib.pyplot as plt

    return plt


def _to_display(img, value_range):
    img = np.asarray(img, dtype="float32")
    low, high = value_range
    img = np.clip((img - low) / (high - low), 0.0, 1.0)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
        raise ValueError(
            "Images must be (h, w), (h, w, 1), (h, w, 3) or (h, w, 4) to be drawn. "
            f"Received: an image with shape {img.shape}"
        )
    return img


def plot_triplets(path, queries, references, nearest_indices, originals=None, similarities=None,
                  num=8, order="similarity", value_range=(-1.0, 1.0), titles=None, dpi=100):
    """Saves a PNG grid: (original /) query / nearest training image, per column.

    Each column shows, top to bottom, the attacked original (if given, e.g.
    the training image or its noisy copy), the query (a reconstruction or a
    generated sample), and the training image nearest to it, with the
    similarity above. People look at these pairs before trusting a number.

    Args:
        path: output PNG path.
        queries: images `(n, h, w[, c])`.
        references: the training images.
        nearest_indices: index into `references` of each query's neighbour
            (`MemorizationReport.nearest_indices`).
        originals: optional images `(n, ...)` shown in a first row, or a list
            of such arrays (several rows, e.g. `[x, noisy]`).
        similarities: optional `(n,)` similarities shown as titles.
        num: number of columns.
        order: `"similarity"` (most similar first, needs `similarities`),
            `"index"` (first `num`) or `"random"`.
        value_range: `(low, high)` of the images.
        titles: row labels (default: "original", "query", "nearest train").
        dpi: resolution.

    Returns:
        `path`.

    Example:
    ```python
    r = reports["mmse@sigma=1"]
    ka.memorization.plot_triplets("triplets.png", result.mmse["1"], x_train,
                                  r.nearest_indices, originals=result.x,
                                  similarities=r.similarities)
    ```
    """
    plt = _plt()
    queries = np.asarray(queries)
    references = np.asarray(references)
    nearest_indices = np.asarray(nearest_indices).reshape(-1)
    n = len(queries)
    if n == 0:
        raise ValueError("`queries` must not be empty. Received: queries with shape (0, ...)")
    if nearest_indices.shape[0] != n:
        raise ValueError(
            f"`nearest_indices` must have one entry per query ({n}). Received: {nearest_indices.shape[0]} entries"
        )
    if np.any(nearest_indices < 0) or np.any(nearest_indices >= len(references)):
        raise ValueError(f"`nearest_indices` must index the {len(references)} references. Received: out-of-range values")
    rows = []
    if originals is not None:
        originals = list(originals) if isinstance(originals, (list, tuple)) else [originals]
        for o in originals:
            o = np.asarray(o)
            if len(o) != n:
                raise ValueError(f"`originals` must have one image per query ({n}). Received: {len(o)} images")
            rows.append(o)
    rows += [queries, references[nearest_indices]]
    if titles is None:
        titles = (["original"] + [f"original {i + 1}" for i in range(1, len(rows) - 2)])[:len(rows) - 2]
        titles += ["query", "nearest train"]
    if similarities is not None:
        similarities = np.asarray(similarities).reshape(-1)
        if similarities.shape[0] != n:
            raise ValueError(f"`similarities` must have one value per query ({n}). Received: {similarities.shape[0]}")
    if order == "similarity":
        if similarities is None:
            raise ValueError("order='similarity' needs `similarities`. Received: similarities=None")
        cols = np.argsort(-similarities, kind="stable")[:num]
    elif order == "index":
        cols = np.arange(min(num, n))
    elif order == "random":
        cols = np.random.default_rng(0).choice(n, size=min(num, n), replace=False)
    else:
        raise ValueError(f"`order` must be 'similarity', 'index' or 'random'. Received: order={order!r}")
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.2 * len(cols) + 0.8, 1.25 * len(rows)),
                             squeeze=False)
    try:
        for j, c in enumerate(cols):
            for i, row in enumerate(rows):
                ax = axes[i, j]
                ax.imshow(_to_display(row[c], value_range), cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(titles[i], fontsize=8)
            if similarities is not None:
                axes[0, j].set_title(f"{similarities[c]:.3f}", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def plot_similarity_histogram(path, results, thresholds=(0.90, 0.95), bins=50, title=None,
                              value_range=None, dpi=100):
    """Saves a PNG histogram of nearest-neighbour similarities, several models on one plot.

    Args:
        path: output PNG path.
        results: `{label: MemorizationReport or array of similarities}`.
        thresholds: vertical lines (the paper's 0.90 and 0.95).
        bins: number of bins.
        title: plot title.
        value_range: `(low, high)` of the x axis (default: the data's range).
        dpi: resolution.

    Returns:
        `path`.

    Example:
    ```python
    ka.memorization.plot_similarity_histogram(
        "hist.png", {"clean": report_clean, "sigma_n=0.4": report_amb})
    ```
    """
    plt = _plt()
    if not isinstance(results, dict) or not results:
        raise ValueError(
            "`results` must be a non-empty dict {label: MemorizationReport or similarities}. "
            f"Received: results of type {type(results).__name__}"
        )
    data = {}
    for label, r in results.items():
        sims = r.similarities if isinstance(r, MemorizationReport) else r
        sims = np.asarray(sims, dtype="float64").reshape(-1)
        if sims.size == 0:
            raise ValueError(f"No similarities for {label!r}. Received: an empty array")
        data[str(label)] = sims
    allv = np.concatenate(list(data.values()))
    lo, hi = value_range if value_range is not None else (float(allv.min()), float(allv.max()))
    if hi <= lo:
        lo, hi = lo - 0.01, hi + 0.01
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    try:
        for label, sims in data.items():
            ax.hist(sims, bins=edges, alpha=0.45, label=f"{label} (n={sims.size})", density=True)
        for t in thresholds or ():
            ax.axvline(t, color="k", linestyle="--", linewidth=0.8)
        ax.set_xlabel("similarity to nearest training image")
        ax.set_ylabel("density")
        if title:
            ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path
