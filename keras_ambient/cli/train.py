"""`keras-ambient train`: train on noisy data; write the model, checkpoints, grids and metrics."""

import json
import math
import os
import sys
import time

from keras_ambient.cli.arguments import CLIError
from keras_ambient.cli.launch import _select_backend
from keras_ambient.cli.data import _load_reference, _noise_disagrees, estimate_noise, load_data


def _default_multipliers(height):
    return (1, 2) if height <= 16 else (1, 2, 2)


def _build_network(data_shape, args):
    import keras_ambient as ka

    if len(data_shape) == 1:
        return ka.networks.MLPDenoiser(data_shape[0], hidden_units=args.hidden_units, seed=args.seed)
    multipliers = args.channel_multipliers or _default_multipliers(data_shape[0])
    factor = 2 ** (len(multipliers) - 1)
    if data_shape[0] % factor or data_shape[1] % factor:
        raise CLIError(
            f"--channel-multipliers {','.join(map(str, multipliers))} halves the images "
            f"{len(multipliers) - 1} times, so height and width must be divisible by {factor}. "
            f"Received: images of shape {data_shape}; choose --resolution or fewer levels."
        )
    return ka.networks.UNet(
        image_shape=data_shape, base_channels=args.base_channels, channel_multipliers=multipliers,
        num_res_blocks=args.num_res_blocks, seed=args.seed,
    )


def _err(msg):
    print(f"warning: {msg}", file=sys.stderr)


def _make_output_dir(out):
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise CLIError(
            f"Cannot create the output folder {out!r} ({type(e).__name__}: {e.strerror or e}); "
            "is a parent of it a regular file? Received: --output-dir " + out
        ) from e
    if not os.access(out, os.W_OK):
        raise CLIError(f"The output folder {out!r} is not writable. Received: --output-dir {out}")


def cmd_train(args):
    import numpy as np

    # Everything that can be checked before training is checked here, so a bad
    # argument never costs a training run.
    _make_output_dir(args.output_dir)
    if args.sigma_n == "auto" and args.data == "digits":
        raise CLIError(
            "The built-in digits are clean; --sigma-n sets the level this command noises them "
            "at, so it must be a number (e.g. --sigma-n 0.2). Received: --sigma-n auto"
        )
    y, stored_sigma, kind = load_data(args.data, args.resolution, args.grayscale, args.limit)
    info = {"data": args.data, "data_kind": kind, "num_samples": int(len(y)),
            "data_shape": list(y.shape[1:])}
    per_sample = None
    estimate = None
    if kind == "digits":
        sigma_n = 0.2 if args.sigma_n is None else float(args.sigma_n)
        from keras_ambient.data.noise import add_noise

        y = add_noise(y, sigma_n, seed=args.data_seed) if sigma_n > 0 else y
        source = "digits noised by this command"
    elif args.sigma_n is None and stored_sigma is not None:
        if stored_sigma.ndim == 1:
            per_sample = stored_sigma
            sigma_n = float(stored_sigma.max())
            source = "per-sample levels from the .npz key 'sigma_n'"
        else:
            sigma_n = float(stored_sigma)
            source = "the .npz key 'sigma_n'"
    elif args.sigma_n is None or args.sigma_n == "auto":
        reference, ref_name = _load_reference(args, kind)
        estimate, method = estimate_noise(y, reference, "auto" if y.ndim == 4 else "pca")
        sigma_n = estimate
        source = f"estimated ({method})"
        print(f"Estimated noise level: sigma_n = {estimate:.4f} (method: {method}"
              + (f", calibrated on {ref_name})" if ref_name else ")"))
    else:
        sigma_n = float(args.sigma_n)
        source = "given"
        if y.ndim == 4:
            reference, _ = _load_reference(args, kind)
            try:
                estimate, method = estimate_noise(y, reference)
            except CLIError:  # too few images for the reference-free estimate: no check
                estimate, method = None, None
            if estimate is not None and _noise_disagrees(sigma_n, estimate):
                _err(
                    f"the given --sigma-n {sigma_n:g} disagrees with the noise level estimated "
                    f"from the data ({estimate:.3f}, method {method}) by more than a factor 1.5. "
                    "A wrong sigma_n biases the model (too low: samples keep noise; too high: "
                    "samples are too smooth). Check it, or use --sigma-n auto"
                    + ("" if method == "calibrated" else
                       " (the reference-free estimate reads high on strongly textured images; "
                       "--reference CLEAN_IMAGES calibrates it)") + "."
                )
    info.update(sigma_n=sigma_n, sigma_n_source=source,
                sigma_n_estimate=None if estimate is None else float(estimate))

    _select_backend(args.backend, allow_reexec=False)  # already done in main; re-check
    import keras

    import keras_ambient as ka
    from keras_ambient.callbacks.sample_grid import SampleGrid
    from keras_ambient.utils.defaults import suggest_sigma_data

    if args.sigma_data == "auto":
        sigma_data = suggest_sigma_data(y, per_sample if per_sample is not None else sigma_n)
    else:
        sigma_data = float(args.sigma_data)
        if sigma_data <= 0:
            raise CLIError(f"--sigma-data must be > 0. Received: --sigma-data {args.sigma_data}")
    info["sigma_data"] = float(sigma_data)

    network = _build_network(tuple(y.shape[1:]), args)
    weight = {} if args.consistency_weight is None else {"consistency_weight": args.consistency_weight}
    if args.consistency_interval is not None:
        weight["consistency_interval"] = args.consistency_interval
    model = ka.AmbientDiffusion(network, sigma_n=sigma_n, sigma_data=sigma_data, seed=args.seed, **weight)
    batch_size = min(args.batch_size, len(y))
    steps_per_epoch = int(math.ceil(len(y) / batch_size))
    epochs = args.epochs if args.steps is None else int(math.ceil(args.steps / steps_per_epoch))
    schedule = keras.optimizers.schedules.CosineDecay(
        args.learning_rate, decay_steps=epochs * steps_per_epoch, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    out = args.output_dir
    mode = "full" if (model.consistency_weight > 0 or sigma_n == 0) else "truncated"
    if mode == "truncated" and args.grid_steps < 2:
        raise CLIError(
            "Without the consistency loss the sample grids use truncated sampling, which needs "
            "--grid-steps >= 2 (levels from sigma_max down to sigma_n). Received: --grid-steps "
            f"{args.grid_steps}"
        )
    grid = SampleGrid(os.path.join(out, "samples"), every_n_epochs=min(args.grid_every, epochs),
                      num_samples=args.grid_samples, seed=args.seed, mode=mode,
                      num_steps=args.grid_steps)
    checkpoint_dir = os.path.join(out, "checkpoints")
    ckpt = keras.callbacks.ModelCheckpoint(  # a whole-model .keras file every N epochs
        os.path.join(checkpoint_dir, "epoch_{epoch:04d}.keras"),
        save_freq=min(args.checkpoint_every, epochs) * steps_per_epoch)
    data = y if per_sample is None else (y, per_sample)
    print(f"Training on {len(y)} samples of shape {tuple(y.shape[1:])}, sigma_n={sigma_n:g} ({source}), "
          f"sigma_data={sigma_data:.3f}, {epochs} epochs x {steps_per_epoch} steps, backend "
          f"{keras.backend.backend()}, outputs in {out}")
    start = time.time()
    model_path = os.path.join(out, "model.keras")
    try:
        history = model.fit(data, batch_size=batch_size, epochs=epochs, shuffle=True,
                            callbacks=[grid, ckpt], verbose=args.verbose)
    except Exception:
        # Keep what was trained (a divergence leaves NaN weights; the file says so).
        failed = os.path.join(out, "model_failed.keras")
        try:
            model.save(failed)
            _err(f"training failed; the model as it was is saved in {failed}")
        except Exception:  # pragma: no cover - nothing more to save
            pass
        raise
    train_seconds = time.time() - start
    checkpoints = sorted(  # written by this run (an earlier run's may share the folder)
        path for path in (os.path.join(checkpoint_dir, n) for n in os.listdir(checkpoint_dir))
        if os.path.getmtime(path) >= start - 1
    ) if os.path.isdir(checkpoint_dir) else []
    model.save(model_path)  # first, so that nothing after training can lose the model
    final_grid = os.path.join(out, "samples", "samples_final.png")
    from keras_ambient.utils.images import save_image_grid

    try:
        save_image_grid(final_grid, grid.generate())
    except Exception as e:
        _err(f"the final sample grid failed ({type(e).__name__}: {e}); the model is saved in {model_path}")
        final_grid = None
    metrics = dict(
        info,
        command="train",
        backend=keras.backend.backend(),
        keras_ambient_version=ka.__version__,
        consistency_weight=model.consistency_weight,
        consistency_interval=model.consistency_interval,
        epochs=epochs,
        steps=epochs * steps_per_epoch,
        batch_size=batch_size,
        learning_rate=args.learning_rate,
        sample_mode=mode,
        train_seconds=round(train_seconds, 3),
        history={k: [float(v) for v in vals] for k, vals in history.history.items()},
        files={"model": model_path, "checkpoints": checkpoints, "sample_grids": grid.paths + ([final_grid] if final_grid else [])},
    )
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"Saved {model_path}, {len(checkpoints)} checkpoint(s), {len(grid.paths) + 1} sample grid(s) "
          f"and {os.path.join(out, 'metrics.json')}")
    if not np.isfinite(metrics["history"].get("loss", [0.0])[-1]):
        raise CLIError("Training ended with a non-finite loss; lower --learning-rate.")
    return 0
