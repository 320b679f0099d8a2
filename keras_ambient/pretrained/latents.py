"""Encoding images to latents once (cached) and decoding samples (docs/method.md §6)."""

import os

import keras
import numpy as np
from keras import ops

from keras_ambient.utils.structures import map_in_batches
from keras_ambient.utils.validation import check_int


def encode_images(encode_fn, images, batch_size=16, cache_path=None, verbose=0):
    """Encodes `images` with a frozen VAE, once, optionally cached to `.npz`.

    The paper encoded each training image once and noised the latents once at
    `sigma_n` with a fixed seed (`ka.data.add_noise(latents, sigma_n, seed)`).

    Args:
        encode_fn: images (batch, H, W, C) in [-1, 1] -> latents, e.g. from
            `sd3_vae_codec`.
        images: array of images in [-1, 1].
        batch_size: encoding batch size.
        cache_path: if given and the file exists with latents for the same
            number of images, they are loaded instead of recomputed; otherwise
            they are computed and saved there.
        verbose: show a progress bar.

    Returns:
        A float32 NumPy array of latents.

    Example:
    ```python
    encode, decode = ka.pretrained.sd3_vae_codec(backbone)
    latents = ka.pretrained.encode_images(encode, images, cache_path="latents.npz")
    noisy = ka.data.add_noise(latents, sigma=0.5, seed=0)
    ```
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    images = np.asarray(images, dtype="float32")
    if cache_path is not None and os.path.exists(cache_path):
        with np.load(cache_path) as cached:
            latents = cached["latents"]
        if len(latents) == len(images):
            return latents
    bar = keras.utils.Progbar(len(images), verbose=1 if verbose else 0, unit_name="image")
    latents = map_in_batches(encode_fn, images, batch_size, on_batch=bar.add)
    if cache_path is not None:
        np.savez(cache_path, latents=latents)
    return latents


def decode_latents(decode_fn, latents, batch_size=16):
    """Decodes latents to images in [-1, 1] (clipped), in batches."""
    batch_size = check_int("batch_size", batch_size, minimum=1)
    images = map_in_batches(decode_fn, np.asarray(latents, "float32"), batch_size)
    return np.clip(images, -1.0, 1.0)


def sd3_vae_codec(backbone):
    """`(encode, decode)` for a keras-hub `StableDiffusion3Backbone`'s VAE.

    `encode(images) = (vae.encode(images) - shift) * scale` and
    `decode(latents) = vae.decode(latents / scale + shift)`, the backbone's own
    image/latent rescaling, for images in [-1, 1].
    """
    vae = backbone.vae
    scale, shift = float(vae.scale), float(vae.shift)

    def encode(images):
        return (vae.encode(ops.convert_to_tensor(images), training=False) - shift) * scale

    def decode(latents):
        return vae.decode(ops.convert_to_tensor(latents) / scale + shift, training=False)

    return encode, decode
