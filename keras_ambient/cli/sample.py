"""`keras-ambient sample`: draw samples from a saved model into a PNG grid or an `.npz` file."""

import os

from keras_ambient.cli.arguments import CLIError


def cmd_sample(args):
    out = args.out
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".png", ".npz"):
        raise CLIError(f"--out must end with .png or .npz. Received: --out {out}")
    if not os.path.isfile(args.model):
        raise CLIError(f"The model file {args.model!r} does not exist (expected a .keras file).")
    import numpy as np

    import keras_ambient  # noqa: F401  (registers the serializable classes)
    from keras_ambient.models.loading import load_model

    try:
        model = load_model(args.model, compile=False)
    except (ValueError, TypeError) as e:  # corrupt, legacy or another kind of model: say so
        raise CLIError(f"--model {args.model}: {e}") from e
    if args.mode == "truncated" and model.sigma_n <= 0:
        raise CLIError(
            "--mode truncated stops at the model's sigma_n, but this model has sigma_n=0 "
            "(trained on clean data). Use --mode full."
        )
    x = model.generate(args.num, num_steps=args.steps, sampler=args.sampler, mode=args.mode,
                       seed=args.seed, batch_size=args.batch_size, use_ema=not args.no_ema,
                       verbose=args.verbose, clip_denoised=(-1.0, 1.0) if args.clip_denoised else None,
                       sigma_min=args.sigma_min)
    parent = os.path.dirname(out)
    if parent:
        os.makedirs(parent, exist_ok=True)
    if ext == ".npz":
        np.savez(out, x=x)
    else:
        from keras_ambient.utils.images import save_image_grid

        save_image_grid(out, x)
    print(f"Wrote {len(x)} samples of shape {tuple(x.shape[1:])} to {out}")
    return 0
