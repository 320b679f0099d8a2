"""Pictures of samples: image grids, scatter plots of 2-D points, PNG files (Pillow).

Shared by `ka.callbacks.SampleGrid`, the `keras-ambient` command line, the
examples and the guides:

- `image_grid(images)`: tiles `(n, h, w[, c])` images into one uint8 picture;
- `scatter_image(points)`: draws 2-D samples as a uint8 scatter plot (for
  toy data such as `ka.data.GaussianMixture`);
- `to_picture(samples)`: either of the two, chosen by the sample shape;
- `write_png(path, picture)`: writes a uint8 `(H, W)`, `(H, W, 1)`,
  `(H, W, 3)` or `(H, W, 4)` array as a PNG file;
- `save_image_grid(path, images)`: `to_picture` + `write_png`.
"""

import io
import math
import os

import numpy as np

_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # channels -> Pillow mode


def _as_float_array(name, x):
    try:
        x = np.asarray(x, dtype="float64")
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"`{name}` must be a numeric array. Received: {name} of type {type(x).__name__}"
        ) from e
    return x


def to_uint8(images, value_range=(-1.0, 1.0)):
    """Maps values in `value_range` to 0..255 (clipping outside it).

    Args:
        images: a numeric array.
        value_range: `(low, high)` mapped to 0 and 255.

    Returns:
        A uint8 array of the same shape. NaN/Inf become 0.

    Example:
    ```python
    to_uint8(np.array([-1.0, 0.0, 1.0]))  # [0, 128, 255]
    ```
    """
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(
            f"`value_range` must be (low, high) with high > low. Received: value_range={value_range}"
        )
    x = _as_float_array("images", images)
    x = np.nan_to_num(x, nan=low, posinf=high, neginf=low)
    x = (x - low) / (high - low)
    return np.clip(np.round(x * 255.0), 0, 255).astype("uint8")


def image_grid(images, num_columns=None, value_range=(-1.0, 1.0), padding=1, scale=1,
               pad_value=0):
    """Tiles a batch of images into one uint8 picture.

    Args:
        images: `(n, h, w)` or `(n, h, w, c)` with `c` in {1, 3, 4}; values in
            `value_range` (images in [-1, 1] by default, as everywhere in
            keras_ambient).
        num_columns: images per row (default: `ceil(sqrt(n))`).
        value_range: `(low, high)` mapped to black and white.
        padding: pixels of border between images.
        scale: integer upscaling factor (nearest neighbour), handy for 8x8
            digits.
        pad_value: uint8 value of the border and of empty cells (0 black,
            255 white).

    Returns:
        A uint8 array `(H, W, c)`.

    Example:
    ```python
    grid = image_grid(ka.data.load_digits()[:16], scale=4)  # (4*33+1, ...)
    ```
    """
    x = _as_float_array("images", images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] < 1 or x.shape[-1] not in _MODES:
        raise ValueError(
            "`images` must have shape (n, height, width) or (n, height, width, channels) "
            f"with n >= 1 and 1, 3 or 4 channels. Received: images with shape {x.shape}"
        )
    n, h, w, c = x.shape
    if num_columns is None:
        num_columns = int(math.ceil(math.sqrt(n)))
    num_columns = int(num_columns)
    if num_columns < 1:
        raise ValueError(f"`num_columns` must be >= 1. Received: num_columns={num_columns}")
    scale = int(scale)
    padding = int(padding)
    if scale < 1 or padding < 0:
        raise ValueError(
            f"`scale` must be >= 1 and `padding` >= 0. Received: scale={scale}, padding={padding}"
        )
    if isinstance(pad_value, bool) or not isinstance(pad_value, (int, np.integer)) \
            or not 0 <= pad_value <= 255:
        raise ValueError(f"`pad_value` must be an integer in [0, 255]. Received: pad_value={pad_value!r}")
    tiles = to_uint8(x, value_range)
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    num_columns = min(num_columns, n)
    num_rows = int(math.ceil(n / num_columns))
    out = np.full(
        (num_rows * (h + padding) + padding, num_columns * (w + padding) + padding, c),
        pad_value, dtype="uint8",
    )
    for i in range(n):
        r, col = divmod(i, num_columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        out[top : top + h, left : left + w] = tiles[i]
    return out


def scatter_image(points, size=256, limits=None, reference=None, radius=1):
    """Draws 2-D points as a uint8 scatter plot (white on black).

    Args:
        points: `(n, 2)` samples.
        size: picture side in pixels.
        limits: `(low, high)` shared by both axes (default: from the points and
            `reference`, with a 10% margin).
        reference: optional `(m, 2)` points drawn in grey underneath (e.g. the
            clean data).
        radius: half-width of each dot in pixels.

    Returns:
        A uint8 array `(size, size, 1)`.

    Example:
    ```python
    pic = scatter_image(gm.sample(500, seed=0))
    ```
    """
    p = _as_float_array("points", points)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"`points` must have shape (n, 2). Received: points with shape {p.shape}")
    ref = None if reference is None else _as_float_array("reference", reference).reshape(-1, 2)
    size = int(size)
    if size < 8:
        raise ValueError(f"`size` must be >= 8. Received: size={size}")
    if limits is None:
        both = p if ref is None else np.concatenate([p, ref])
        both = both[np.all(np.isfinite(both), axis=1)]
        if len(both) == 0:
            low, high = -1.0, 1.0
        else:
            low, high = float(both.min()), float(both.max())
        margin = 0.1 * max(high - low, 1e-6)
        low, high = low - margin, high + margin
    else:
        low, high = (float(v) for v in limits)
    out = np.zeros((size, size, 1), dtype="uint8")

    def draw(q, value):
        q = q[np.all(np.isfinite(q), axis=1)]
        ij = np.round((q - low) / (high - low) * (size - 1)).astype("int64")
        col, row = ij[:, 0], size - 1 - ij[:, 1]
        for dr in range(-radius, radius + 1):
            for dc in range(-radius, radius + 1):
                r, c = row + dr, col + dc
                ok = (r >= 0) & (r < size) & (c >= 0) & (c < size)
                out[r[ok], c[ok], 0] = value

    if ref is not None:
        draw(ref, 90)
    draw(p, 255)
    return out


def to_picture(samples, value_range=(-1.0, 1.0), scale=None, num_columns=None, reference=None):
    """A uint8 picture of generated samples: an image grid or a 2-D scatter plot.

    Args:
        samples: images `(n, h, w[, c])` or 2-D points `(n, 2)`.
        value_range: value range of images.
        scale: upscaling of images (default: enough to make tiles >= 32 px).
        num_columns: images per row.
        reference: points drawn underneath a scatter plot.

    Returns:
        A uint8 array `(H, W, c)`.

    Example:
    ```python
    write_png("samples.png", to_picture(model.generate(16, seed=0)))
    ```
    """
    x = _as_float_array("samples", samples)
    if x.ndim == 2 and x.shape[1] == 2:
        return scatter_image(x, reference=reference)
    if x.ndim in (3, 4):
        if scale is None:
            scale = max(1, int(math.ceil(32 / max(x.shape[1], 1))))
        return image_grid(x, num_columns=num_columns, value_range=value_range, scale=scale)
    raise ValueError(
        "Can only picture images (n, height, width[, channels]) or 2-D points (n, 2). "
        f"Received: samples with shape {x.shape}"
    )


def encode_png(picture):
    """Encodes a uint8 `(H, W)` / `(H, W, c)` array (c in 1..4) as PNG bytes (Pillow).

    Example:
    ```python
    data = encode_png(np.zeros((4, 4), "uint8"))
    ```
    """
    from PIL import Image

    a = np.asarray(picture)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in _MODES or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(
            "`picture` must have shape (height, width) or (height, width, channels) with "
            f"1-4 channels. Received: picture with shape {a.shape}"
        )
    if a.dtype != np.uint8:
        raise TypeError(
            "`picture` must be uint8 (use `to_uint8` or `image_grid`). "
            f"Received: picture with dtype {a.dtype}"
        )
    channels = a.shape[-1]
    image = Image.fromarray(np.ascontiguousarray(a[..., 0] if channels == 1 else a))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path, picture):
    """Writes a uint8 picture to `path` as PNG (creating parent folders).

    Example:
    ```python
    write_png("out/grid.png", image_grid(x))
    ```
    """
    data = encode_png(picture)
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def save_image_grid(path, samples, value_range=(-1.0, 1.0), scale=None, num_columns=None,
                    reference=None):
    """Writes samples (images or 2-D points) to `path` as one PNG picture.

    Args:
        path: output file (`.png`).
        samples: images `(n, h, w[, c])` in `value_range` or points `(n, 2)`.
        value_range, scale, num_columns, reference: see `to_picture`.

    Returns:
        The path written.

    Example:
    ```python
    save_image_grid("samples.png", model.generate(16, seed=0))
    ```
    """
    return write_png(
        path,
        to_picture(samples, value_range=value_range, scale=scale, num_columns=num_columns,
                   reference=reference),
    )


def read_png(path):
    """Reads a PNG file into a uint8 `(H, W, c)` array (Pillow; c = 1, 2, 3 or 4).

    Palette and 16-bit files are converted to 8-bit RGB(A) / grey.

    Example:
    ```python
    pic = read_png("samples.png")
    ```
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(os.fspath(path)) as image:
            if image.format != "PNG":
                raise ValueError(f"Not a PNG file ({image.format}). Received: path={path!r}")
            if image.mode not in _MODES.values():
                has_alpha = "A" in image.mode or "transparency" in image.info
                image = image.convert("RGBA" if has_alpha else
                                      ("L" if image.mode.startswith(("I", "F")) else "RGB"))
            a = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"Not a readable PNG file ({e}). Received: path={path!r}") from e
    return a[..., None].copy() if a.ndim == 2 else a.copy()
