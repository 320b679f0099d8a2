import dataclasses

import keras
import numpy as np
from keras import ops

from keras_ambient import samplers as samplers_lib
from keras_ambient.data.noise import add_noise
from keras_ambient.memorization.neighbors import _num_blocks, _progbar
from keras_ambient.memorization.similarity_index import SimilarityIndex
from keras_ambient.utils.structures import map_in_batches
from keras_ambient.utils.validation import check_int, check_scalar


def _sigma_key(sigma):
    return f"{float(sigma):g}"


@dataclasses.dataclass
class NoiseAttackResult:
    """Reconstructions of a noise attack (see `noise_attack`).

    Attributes:
        x: the attacked training images `(n, ...)`.
        source_indices: index of each attacked image in the training set
            (`np.arange(n)` unless given).
        sigmas: the attack levels (floats).
        noisy: `{sigma: x + sigma z}` (in the model's space: latents for a
            latent model).
        mmse: `{sigma: D(x + sigma z; sigma)}` (one denoiser call), shape `(n, ...)`.
        posterior: `{sigma: posterior samples}` of shape `(num_draws, n, ...)`
            (the reverse process started at `sigma`).
        settings: the attack's settings.

    Example:
    ```python
    result = ka.memorization.noise_attack(model, x_train[:64], sigma=[1.0, 2.0], seed=0)
    reports = result.reports(x_train, center=True)
    for name, r in reports.items():
        print(r.summary())
    ```

    References:
        - Daras, Dimakis, Daskalakis. "Consistent Diffusion Meets Tweedie: Training Exact
          Ambient Diffusion Models with Noisy Data". ICML 2024, arXiv:2404.10177.
        - Carlini et al. "Extracting Training Data from Diffusion Models". USENIX Security
          2023, arXiv:2301.13188.
    """

    x: np.ndarray
    source_indices: np.ndarray
    sigmas: tuple
    noisy: dict
    mmse: dict
    posterior: dict
    settings: dict = dataclasses.field(default_factory=dict)

    def reconstructions(self, kind, sigma):
        """The reconstructions of one kind (`"mmse"` or `"posterior"`) at `sigma`,
        flattened to `(num_queries, ...)`, with their source indices."""
        store = {"mmse": self.mmse, "posterior": self.posterior}.get(kind)
        if store is None:
            raise ValueError(f"`kind` must be 'mmse' or 'posterior'. Received: kind={kind!r}")
        key = _sigma_key(sigma)
        if key not in store:
            raise ValueError(
                f"No {kind} reconstructions at sigma={sigma}; available: {sorted(store)}. Received: sigma={sigma}"
            )
        rec = store[key]
        if kind == "mmse":
            return rec, self.source_indices
        draws = rec.shape[0]
        return rec.reshape((-1,) + rec.shape[2:]), np.tile(self.source_indices, draws)

    def reports(self, references, feature_extractor="pixels", center=False, verbose=0, **kwargs):
        """Memorization reports of every reconstruction set.

        Args:
            references: the training set (images), or a `SimilarityIndex` of it.
            feature_extractor, center, **kwargs: forwarded to `SimilarityIndex`
                when `references` is an array.
            verbose: forwarded to `SimilarityIndex.query` (one progress bar
                per reconstruction set when truthy).

        Returns:
            A dict `{"mmse@sigma=s" / "posterior@sigma=s": MemorizationReport}`;
            each report has `source_match_rate` (nearest training image is the
            attacked one).

        Example:
        ```python
        reports = result.reports(x_train, center=True)
        ```
        """
        index = references if isinstance(references, SimilarityIndex) else SimilarityIndex(
            references, feature_extractor=feature_extractor, center=center, **kwargs)
        out = {}
        for kind, store in (("mmse", self.mmse), ("posterior", self.posterior)):
            for key in store:
                queries, src = self.reconstructions(kind, float(key))
                settings = dict(self.settings, kind=kind, sigma=float(key))
                name = f"{kind}@sigma={key}"
                out[name] = index.query(queries, source_indices=src, name=name, settings=settings,
                                        verbose=verbose)
        return out


def noise_attack(denoiser, x, sigma, *, num_draws=1, mmse=True, posterior=True,
                 sampler="euler_ancestral", num_steps=32, sigma_min=0.002, seed=None,
                 batch_size=256, use_ema=True, source_indices=None, encode=None, decode=None,
                 verbose=0):
    """The noise attack of docs/method.md §7: can the model reconstruct its training
    images from heavily noised copies?

    For each level `sigma`, forms `x + sigma z` (NumPy noise from `seed`: the
    same noisy inputs on every backend) and reconstructs it with (a) one
    denoiser call, the MMSE estimate `E[x0 | x_sigma]`, and (b) the reverse
    process started at `sigma` and run to 0, a posterior sample
    (`num_draws` per image, from the same noisy input). A model that has
    memorized its training set returns the training image itself even from
    `sigma` well above the data scale; a model of the distribution returns a
    plausible but different image. Measure it with `NoiseAttackResult.reports`.

    Args:
        denoiser: a trained `ka.AmbientDiffusion` (uses `denoise` and
            `generate(mode="from_input")`), or any callable
            `fn(x, sigma) -> x0_hat` taking a batch and a float level (e.g. a
            closed-form posterior mean).
        x: training images (or latents' source images when `encode` is given),
            `(n, ...)`.
        sigma: one attack level or a list of levels (each `> 0`).
        num_draws: posterior samples per image and level.
        mmse: compute the one-call MMSE reconstruction.
        posterior: compute posterior samples.
        sampler: sampler of the reverse process (`"euler_ancestral"`, the
            stochastic DDPM-like sampler, gives distinct draws; `"heun"` and
            `"euler"` are deterministic, so every draw would be identical).
        num_steps: levels of the EDM schedule from `sigma` down to `sigma_min`.
        sigma_min: last non-zero level of the schedule.
        seed: int seed of the attack noise and of the samplers.
        batch_size: images per denoiser/sampler call.
        use_ema: for an `AmbientDiffusion`, use the EMA weights.
        source_indices: index of each image of `x` in the training set
            (default `arange(n)`), used by `reports`.
        encode, decode: for latent models, `encode(images) -> latents` applied
            before noising and `decode(latents) -> images` applied to the
            reconstructions (the attack then runs in latent space and the
            reconstructions are compared as images).
        verbose: 0 (default) is silent; a truthy value shows a
            `keras.utils.Progbar` over batches: one unit per batch of
            denoiser calls (MMSE) and per batch of reverse-process runs
            (each posterior draw), over all levels.

    Returns:
        A `NoiseAttackResult`.

    Example:
    ```python
    result = ka.memorization.noise_attack(model, x_train[:100], sigma=[1.0, 2.0],
                                          num_draws=2, seed=0)
    reports = result.reports(x_train, center=True)
    print(reports["mmse@sigma=1"].summary())
    ```
    """
    from keras_ambient.models.ambient_diffusion import AmbientDiffusion

    is_model = isinstance(denoiser, AmbientDiffusion)
    if not is_model and not callable(denoiser):
        raise TypeError(
            "`denoiser` must be a ka.AmbientDiffusion or a callable fn(x, sigma) -> x0_hat. "
            f"Received: denoiser of type {type(denoiser).__name__}"
        )
    images = np.asarray(x, dtype="float32")
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"`x` must be a non-empty batch of shape (n, ...). Received: x with shape {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError("`x` must be finite. Received: x with NaN or Inf values")
    try:
        sigmas = [float(s) for s in np.atleast_1d(np.asarray(sigma, dtype="float64")).ravel()]
    except (TypeError, ValueError) as e:
        raise TypeError(f"`sigma` must be a number or a list of numbers. Received: sigma={sigma!r}") from e
    if not sigmas:
        raise ValueError("`sigma` must hold at least one level. Received: sigma=[]")
    if len({_sigma_key(s) for s in sigmas}) != len(sigmas):
        raise ValueError(f"The attack levels `sigma` must be distinct. Received: sigma={sigmas}")
    for s in sigmas:
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"Every attack level `sigma` must be finite and > 0. Received: sigma={s}")
        if is_model and s >= denoiser.sigma_max:
            raise ValueError(f"`sigma` must be below the model's sigma_max={denoiser.sigma_max}. Received: sigma={s}")
    num_draws = check_int("num_draws", num_draws, minimum=1)
    num_steps = check_int("num_steps", num_steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    sigma_min = check_scalar("sigma_min", sigma_min, minimum=0, min_inclusive=False)
    if not (mmse or posterior):
        raise ValueError("At least one of `mmse` and `posterior` must be True. Received: mmse=False, posterior=False")
    sample_fn = samplers_lib.get_sampler(sampler)
    n = images.shape[0]
    if source_indices is None:
        source_indices = np.arange(n)
    source_indices = np.asarray(source_indices)
    if source_indices.shape != (n,) or source_indices.dtype.kind not in "iu":
        raise ValueError(
            f"`source_indices` must be an int array with one entry per image ({n},). "
            f"Received: source_indices with shape {source_indices.shape}"
        )
    for name, fn in (("encode", encode), ("decode", decode)):
        if fn is not None and not callable(fn):
            raise TypeError(f"`{name}` must be callable or None. Received: {name}={fn!r}")

    clean = images if encode is None else np.asarray(ops.convert_to_numpy(encode(images)), dtype="float32")
    to_images = (lambda z: z) if decode is None else (
        lambda z: np.asarray(ops.convert_to_numpy(decode(z)), dtype="float32"))
    base_seed = 0 if seed is None else int(seed)
    if seed is None:
        base_seed = int(np.random.default_rng().integers(2 ** 31 - 1))

    num_batches = _num_blocks(n, batch_size)
    bar = _progbar(len(sigmas) * num_batches * (int(bool(mmse)) + (num_draws if posterior else 0)),
                   verbose, unit_name="batch")

    def tick():
        if bar is not None:
            bar.add(1)

    if is_model:
        def denoise_chunk(chunk, s):
            return denoiser.denoise(chunk, s, use_ema=use_ema, batch_size=batch_size)
    else:
        def denoise_chunk(chunk, s):
            out = np.asarray(ops.convert_to_numpy(denoiser(ops.convert_to_tensor(chunk), s)), dtype="float32")
            if out.shape != chunk.shape:
                raise ValueError(
                    "The denoiser must return an array shaped like its input. "
                    f"Received: output shape {out.shape} for input shape {chunk.shape}"
                )
            return out

    def denoise_batch(z, s):
        # A model sees padded batches (one compiled shape; each row is denoised independently).
        return map_in_batches(lambda chunk: denoise_chunk(chunk, s), z, batch_size, pad=is_model,
                              on_batch=lambda _: tick())

    def sample_model(y, s, draw_seed):
        kwargs = {}
        if sample_fn in samplers_lib.SAMPLERS.values():
            last_step = num_steps - 1  # edm_sigmas(num_steps, sigma_min, s) has num_steps moves

            def callback(info):
                if info["i"] == last_step:
                    tick()

            if bar is not None:
                kwargs["callback"] = callback
        out = denoiser.generate(x_start=y, sigma_start=s, mode="from_input", add_noise=False,
                                sampler=sampler, num_steps=num_steps, sigma_min=sigma_min,
                                seed=draw_seed, batch_size=batch_size, use_ema=use_ema, **kwargs)
        if bar is not None and "callback" not in kwargs:
            bar.add(num_batches)  # a custom sampler: no per-batch callback
        return out

    noisy, mmse_out, post_out = {}, {}, {}
    for j, s in enumerate(sigmas):
        key = _sigma_key(s)
        y = add_noise(clean, s, seed=base_seed + 1000 * j)
        noisy[key] = y
        if mmse:
            mmse_out[key] = to_images(denoise_batch(y, s))
        if posterior:
            draws = []
            for d in range(num_draws):
                draw_seed = base_seed + 1000 * j + d + 1
                if s <= sigma_min:
                    z = denoise_batch(y, s)
                elif is_model:
                    z = sample_model(y, s, draw_seed)
                else:
                    z = _sample_callable(denoiser, y, s, sample_fn, num_steps, sigma_min, draw_seed, batch_size,
                                         tick)
                draws.append(to_images(z))
            post_out[key] = np.stack(draws, axis=0)
    settings = {
        "sigmas": sigmas, "num_draws": num_draws, "sampler": sampler if isinstance(sampler, str) else repr(sampler),
        "num_steps": num_steps, "sigma_min": sigma_min, "seed": base_seed, "use_ema": bool(use_ema),
        "denoiser": type(denoiser).__name__ if is_model else getattr(denoiser, "__name__", type(denoiser).__name__),
        "latent": encode is not None,
    }
    return NoiseAttackResult(x=images, source_indices=source_indices.astype("int64"), sigmas=tuple(sigmas),
                             noisy=noisy, mmse=mmse_out, posterior=post_out, settings=settings)


def _sample_callable(fn, y, sigma_start, sample_fn, num_steps, sigma_min, seed, batch_size, tick=None):
    sigmas = samplers_lib.edm_sigmas(num_steps, sigma_min, sigma_start)
    seed_gen = keras.random.SeedGenerator(seed)
    return map_in_batches(
        lambda chunk: samplers_lib.run_sampler(sample_fn, fn, ops.convert_to_tensor(chunk), sigmas,
                                               seed=seed_gen),
        y, batch_size, on_batch=None if tick is None else (lambda _: tick()))
