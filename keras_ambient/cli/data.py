"""Loading the command line's data (digits, image folders, `.npz` files) and estimating its noise."""

import os

from keras_ambient.cli.arguments import CLIError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _images_from_folder(folder, resolution, grayscale):
    import numpy as np

    files = []
    for root, _, names in os.walk(folder):
        files += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise CLIError(
            f"The folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}). "
            "Give a folder of images, 'digits' or an .npz file."
        )
    try:
        import tensorflow  # noqa: F401  (image_dataset_from_directory uses tf.data)
        have_tf = True
    except ImportError:
        have_tf = False
    if have_tf:
        import keras

        ds = keras.utils.image_dataset_from_directory(
            folder, labels=None, color_mode="grayscale" if grayscale else "rgb",
            image_size=(resolution, resolution), batch_size=256, shuffle=False, verbose=False,
        )
        x = np.concatenate([np.asarray(b) for b in ds], axis=0)
    else:  # Pillow fallback when TensorFlow is not installed
        try:
            from PIL import Image
        except ImportError as e:
            raise CLIError("Reading a folder of images needs TensorFlow or Pillow: `pip install pillow`.") from e
        arrays = []
        for f in sorted(files):
            with Image.open(f) as im:
                im = im.convert("L" if grayscale else "RGB").resize((resolution, resolution), Image.BILINEAR)
                a = np.asarray(im, dtype="float32")
            arrays.append(a[..., None] if a.ndim == 2 else a)
        x = np.stack(arrays)
    return (x.astype("float32") / 127.5 - 1.0).astype("float32")


def _load_npz(path):
    import numpy as np

    import zipfile

    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise CLIError(
            f"{path!r} is not an .npz file (an .npz is a zip archive written by np.savez; "
            "this file is not a zip archive). Received: a file of "
            f"{os.path.getsize(path)} bytes"
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            if "x" not in keys:
                raise CLIError(
                    f"The .npz file {path!r} must contain the noisy data under key 'x' "
                    f"(and optionally 'sigma_n'). Received: keys {keys}"
                )
            x = np.asarray(f["x"])
            sigma = np.asarray(f["sigma_n"], dtype="float32") if "sigma_n" in keys else None
    except (OSError, ValueError) as e:
        if isinstance(e, CLIError):
            raise
        raise CLIError(f"Cannot read {path!r} as an .npz file: {e}") from e
    if x.dtype == np.uint8:
        x = x.astype("float32") / 127.5 - 1.0
    x = x.astype("float32")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim not in (2, 4) or len(x) < 2:
        raise CLIError(
            "The .npz key 'x' must hold images (n, height, width[, channels]) or vectors "
            f"(n, dim) with n >= 2. Received: x with shape {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise CLIError(f"The .npz key 'x' holds NaN or Inf values. Received: {path!r}")
    if sigma is not None:
        if sigma.ndim > 1 or (sigma.ndim == 1 and len(sigma) != len(x)):
            raise CLIError(
                f"The .npz key 'sigma_n' must be a scalar or one level per sample ({len(x)}). "
                f"Received: sigma_n with shape {sigma.shape}"
            )
        if not np.all(np.isfinite(sigma)) or np.any(sigma < 0):
            raise CLIError("The .npz key 'sigma_n' must be finite and >= 0.")
    return x, sigma


def load_data(source, resolution=None, grayscale=False, limit=None):
    """Loads `digits`, a folder or an `.npz` file.

    Returns:
        `(x, sigma_n, kind)`: float32 data (images in [-1, 1]), the noise levels
        stored with it (`None` if unknown) and `"digits"`, `"folder"` or `"npz"`.
    """
    if source == "digits":
        if resolution is not None and resolution != 8:
            raise CLIError(f"The built-in digits are 8x8; drop --resolution. Received: --resolution {resolution}")
        from keras_ambient.data.digits import load_digits

        x, sigma, kind = load_digits("train"), None, "digits"
    elif os.path.isdir(source):
        x, sigma, kind = _images_from_folder(source, resolution or 32, grayscale), None, "folder"
    elif source.lower().endswith(".npz"):
        if not os.path.isfile(source):
            raise CLIError(f"The .npz file {source!r} does not exist.")
        x, sigma = _load_npz(source)
        kind = "npz"
    else:
        raise CLIError(
            "DATA must be 'digits', an existing folder of images or an .npz file. "
            f"Received: {source!r}" + ("" if os.path.exists(source) else " (no such file or folder)")
        )
    if limit is not None:
        x = x[:limit]
        if sigma is not None and sigma.ndim == 1:
            sigma = sigma[:limit]
    return x, sigma, kind


def _load_reference(args, kind):
    if args.reference is not None:
        ref, _, _ = load_data(args.reference, args.resolution, args.grayscale)
        return ref, args.reference
    if kind == "digits":
        from keras_ambient.data.digits import load_digits

        return load_digits("test"), "the clean digits test split"
    return None, None


def estimate_noise(y, reference=None, method="auto"):
    """Estimates the noise level of `y`; returns `(estimate, method_used)`.

    `"auto"`: `"calibrated"` with a reference, else the reference-free `"pca"`
    (`estimate_noise_level`'s default: covariance eigenvalues of the images or
    of their patches, the noise found with the Marchenko-Pastur bulk edge; for
    vectors, `estimate_noise_level_pca`), or `"mad"` where the images are too
    few and small for a covariance.
    """
    from keras_ambient.evaluation import images as eval_images  # lazy: optional module

    auto = method == "auto"
    if auto:
        method = "calibrated" if reference is not None else "pca"
    if y.ndim != 4 and method != "pca":
        raise CLIError(
            f"Noise estimation with method '{method}' needs images (n, h, w, c); for vector data "
            f"use --method pca. Received: data with shape {y.shape}"
        )
    if method == "calibrated":
        if reference is None:
            raise CLIError("--method calibrated needs clean images: pass --reference FOLDER_OR_NPZ.")
        if reference.shape[1:] != y.shape[1:]:
            raise CLIError(
                f"--reference images must have the data's shape {y.shape[1:]}. "
                f"Received: reference with shape {reference.shape[1:]}"
            )
        return float(eval_images.estimate_noise_level(y, reference=reference)), "calibrated"
    if method == "mad":
        return float(eval_images.estimate_noise_level(y, method="mad")), "mad"
    if y.ndim != 4:
        return float(eval_images.estimate_noise_level_pca(y)), "pca"
    try:
        return float(eval_images.estimate_noise_level(y, method="pca")), "pca"
    except ValueError as e:
        if auto:  # too few patches for a covariance: the uncalibrated MAD, reported as such
            return float(eval_images.estimate_noise_level(y, method="mad")), "mad"
        raise CLIError(f"{e} (on the command line: more images, --reference CLEAN_IMAGES with "
                       "--method calibrated, or --method mad)") from e


def _noise_disagrees(given, estimate, factor=1.5):
    if given <= 0 or estimate <= 0:
        return False
    ratio = given / estimate
    return ratio > factor or ratio < 1.0 / factor
