"""Fine-tune a pretrained Stable Diffusion on images noised at a chosen level (docs/method.md §6).

The paper's headline experiment: encode every training image once with the
frozen VAE, noise each latent ONCE at `sigma_n` with a fixed seed, fine-tune
only the denoiser (LoRA adapters) with the ambient loss (M3) -- with and
without the consistency loss (M4) -- and sample. This script does the same
with keras-hub's Stable Diffusion 3 (rectified flow, `ka.layers.FlowDenoiser`)
or keras-cv's Stable Diffusion 1.x (epsilon prediction on the VP schedule,
`ka.layers.VPDenoiser`, the parameterization of the paper's SDXL), then writes
sample grids and measures memorization of the fine-tuning set.

    # GPU, keras-hub preset (downloads the weights on your machine):
    python examples/finetune_stable_diffusion.py IMAGES --preset stable_diffusion_3_medium \\
        --sigma-n 1.618 --resolution 512 --prompt "a photo of a face"
    # keras-cv (optional extra, no longer developed; bring your own weights):
    python examples/finetune_stable_diffusion.py IMAGES --model keras-cv \\
        --keras-cv-weights diffusion_model.weights.h5 --keras-cv-vae-weights vae/
    # CPU smoke run with a tiny random SD3 (keras-hub's test configuration):
    python examples/finetune_stable_diffusion.py --smoke

Noise levels are VE sigmas of the latents: the paper's VP timesteps 100/500/800
(sqrt(1 - abar) = 0.325/0.850/0.981) are `--sigma-n 0.344 / 1.618 / 5.11`
(`ka.schedules.VPSchedule.stable_diffusion().timestep_to_sigma(t)`).

Outputs in `--output-dir`: `noisy_decoded.png` (what the model is trained on),
for each consistency weight `w`: `samples_cons{w}.png`, `memorization_cons{w}.json`
(nearest-neighbour similarity of decoded samples to the fine-tuning images),
and `metrics.json`. `--save` also writes each fine-tuned model (`.keras`).
"""

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", help="folder of training images (not needed with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny random SD3 and synthetic images (CPU)")
    p.add_argument("--model", choices=("sd3", "keras-cv"), default="sd3")
    p.add_argument("--preset", default="stable_diffusion_3_medium", help="keras-hub SD3 preset")
    p.add_argument("--keras-cv-weights", help="weights of keras-cv's DiffusionModel (.h5)")
    p.add_argument("--keras-cv-vae-weights", nargs=2, metavar=("ENCODER", "DECODER"),
                   help="weights of keras-cv's ImageEncoder and Decoder")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--sigma-n", type=float, default=1.618, help="VE noise level of the latents")
    p.add_argument("--prompt", default="", help="one prompt for every image ('' = unconditional)")
    p.add_argument("--consistency-weights", default="0,1",
                   help="comma-separated consistency weights, one fine-tune each")
    p.add_argument("--lora-rank", type=int, default=16, help="0 fine-tunes every weight")
    p.add_argument("--steps", type=int, default=2000, help="training steps per fine-tune")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--num-steps", type=int, default=25, help="sampling steps (paper: 25)")
    p.add_argument("--feature-extractor", default="pixels",
                   help="memorization features: 'pixels' or a keras-hub DINOv2 preset name")
    p.add_argument("--save", action="store_true", help="save each fine-tuned model")
    p.add_argument("--output-dir", default="outputs/finetune_stable_diffusion")
    args = p.parse_args(argv)
    if args.smoke:
        args.resolution, args.steps, args.batch_size = 64, 4, 4
        args.num_samples, args.num_steps, args.lora_rank = 4, 3, 4
    elif not args.folder:
        p.error("a folder of images is required (or --smoke)")
    if args.resolution % 8:
        p.error(f"--resolution must be a multiple of 8. Received: {args.resolution}")
    if args.model == "keras-cv" and not args.smoke and not (args.keras_cv_weights and args.keras_cv_vae_weights):
        p.error("--model keras-cv needs --keras-cv-weights and --keras-cv-vae-weights "
                "(keras-cv cannot download weights here)")
    return args


def load_images(args):
    import keras
    import numpy as np

    if args.smoke:
        rng = np.random.default_rng(0)
        blocks = np.tanh(rng.normal(size=(8, 8, 8, 3)))
        return blocks.repeat(args.resolution // 8, 1).repeat(args.resolution // 8, 2).astype("float32")
    if not os.path.isdir(args.folder):
        sys.exit(f"error: {args.folder!r} is not a folder of images")
    dataset = keras.utils.image_dataset_from_directory(
        args.folder, labels=None, image_size=(args.resolution, args.resolution),
        batch_size=64, shuffle=False)
    return np.concatenate([np.asarray(b) for b in dataset]).astype("float32") / 127.5 - 1.0


def tiny_sd3_backbone(resolution):
    """keras-hub's own test configuration of the SD3 backbone, randomly initialised."""
    from keras_hub.src.models.clip.clip_text_encoder import CLIPTextEncoder
    from keras_hub.src.models.vae.vae_backbone import VAEBackbone
    import keras_hub

    vae = VAEBackbone([32] * 4, [1] * 4, [32] * 4, [1] * 4, sampler_method="mode", name="vae")
    clip_l = CLIPTextEncoder(20, 32, 32, 2, 2, 64, "quick_gelu", -2, name="clip_l")
    clip_g = CLIPTextEncoder(20, 64, 64, 2, 2, 128, "gelu", -2, name="clip_g")
    return keras_hub.models.StableDiffusion3Backbone(
        mmdit_patch_size=2, mmdit_hidden_dim=32, mmdit_num_layers=2, mmdit_num_heads=2,
        mmdit_position_size=192, mmdit_qk_norm=None, mmdit_dual_attention_indices=None,
        vae=vae, clip_l=clip_l, clip_g=clip_g, image_shape=(resolution, resolution, 3))


def sd3_components(args):
    """`(make_denoiser, encode, decode, condition_fn)` for keras-hub SD3."""
    import keras
    import keras_hub
    import numpy as np

    import keras_ambient as ka

    if args.smoke:
        backbone = tiny_sd3_backbone(args.resolution)
    else:
        backbone = keras_hub.models.StableDiffusion3Backbone.from_preset(
            args.preset, image_shape=(args.resolution, args.resolution, 3))
    encode, decode = ka.pretrained.sd3_vae_codec(backbone)
    diffuser_config = ka.pretrained.SD3Diffuser(backbone.diffuser).get_config()
    pretrained_weights = backbone.diffuser.get_weights()

    def make_denoiser():
        # A fresh copy of the pretrained MMDiT for each fine-tune.
        adapter = ka.pretrained.SD3Diffuser.from_config(diffuser_config)
        adapter.diffuser.set_weights(pretrained_weights)
        return ka.layers.FlowDenoiser(adapter, shift=float(backbone.shift))

    def condition_fn(n):
        if not args.prompt and not args.smoke:
            return None  # zero embeddings: unconditional
        if args.smoke:  # the tiny CLIP encoders on fixed token ids
            ids = {"clip_l": np.ones((1, 5), "int32"), "clip_g": np.ones((1, 5), "int32")}
        else:
            preprocessor = keras_hub.models.StableDiffusion3TextToImagePreprocessor.from_preset(args.preset)
            ids = preprocessor.generate_preprocess([args.prompt])
        context, _, pooled, _ = backbone.encode_text_step(ids, ids)
        context, pooled = keras.ops.convert_to_numpy(context), keras.ops.convert_to_numpy(pooled)
        return {"context": np.repeat(context, n, axis=0), "pooled_projection": np.repeat(pooled, n, axis=0)}

    return make_denoiser, encode, decode, condition_fn


def keras_cv_components(args):
    """`(make_denoiser, encode, decode, condition_fn)` for keras-cv SD 1.x."""
    import keras_ambient as ka
    from keras_cv.src.models.stable_diffusion.decoder import Decoder
    from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder

    encoder = ImageEncoder(download_weights=False)
    decoder = Decoder(args.resolution, args.resolution, download_weights=False)
    if args.keras_cv_vae_weights:
        encoder.load_weights(args.keras_cv_vae_weights[0])
        decoder.load_weights(args.keras_cv_vae_weights[1])

    def make_denoiser():
        unet = ka.pretrained.KerasCVUNet(img_height=args.resolution, img_width=args.resolution)
        if args.keras_cv_weights:
            unet.network.load_weights(args.keras_cv_weights)
        return ka.layers.VPDenoiser(unet, ka.schedules.VPSchedule.stable_diffusion(), "epsilon")

    # keras-cv's ImageEncoder/Decoder include the 0.18215 latent scaling.
    return make_denoiser, encoder, decoder, lambda n: None


def main(argv=None):
    args = parse_args(argv)
    import keras_ambient.utils.backend_choice  # noqa: F401  (first: picks a backend if none is set)
    import keras
    import numpy as np

    import keras_ambient as ka
    from keras_ambient.utils.images import save_image_grid

    os.makedirs(args.output_dir, exist_ok=True)
    keras.utils.set_random_seed(0)
    images = load_images(args)
    print(f"{len(images)} images of shape {images.shape[1:]}; backend {keras.backend.backend()}")
    components = sd3_components if args.model == "sd3" else keras_cv_components
    make_denoiser, encode, decode, condition_fn = components(args)

    latents = ka.pretrained.encode_images(
        encode, images, batch_size=args.batch_size,
        cache_path=os.path.join(args.output_dir, "latents.npz"), verbose=1)
    sigma_data = float(latents.std())
    noisy = ka.data.add_noise(latents, sigma=args.sigma_n, seed=0)  # once per image, fixed seed
    condition = condition_fn(len(noisy))
    save_image_grid(os.path.join(args.output_dir, "noisy_decoded.png"),
                    ka.pretrained.decode_latents(decode, noisy[:8], batch_size=args.batch_size))
    index = ka.memorization.SimilarityIndex(images, feature_extractor=args.feature_extractor)
    data = {"data": noisy} if condition is None else {"data": noisy, "condition": condition}
    steps_per_epoch = max(1, len(noisy) // args.batch_size)
    epochs = max(1, args.steps // steps_per_epoch)

    metrics = {"backend": keras.backend.backend(), "model": args.model, "sigma_n": args.sigma_n,
               "sigma_data": sigma_data, "num_images": int(len(images)), "runs": {}}
    for weight in [float(w) for w in args.consistency_weights.split(",")]:
        denoiser = make_denoiser()
        model = ka.AmbientDiffusion(
            denoiser, sigma_n=args.sigma_n, sigma_data=sigma_data, consistency_weight=weight,
            ambient_loss=ka.losses.AmbientLoss(sigma_data=sigma_data, noise_distribution="denoiser"),
            lora_rank=args.lora_rank or None, ema_decay=None, data_shape=latents.shape[1:],
            sigma_max=getattr(getattr(denoiser, "schedule", None), "sigma_max", 80.0), seed=0)
        model.compile(optimizer=keras.optimizers.AdamW(args.learning_rate))
        start = time.time()
        history = model.fit(data, batch_size=args.batch_size, epochs=epochs, verbose=2)
        seconds = time.time() - start
        mode = "full" if weight > 0 else "truncated"
        cond = ka.utils.structures.slice_condition(
            ka.utils.structures.pad_condition(condition, max(0, args.num_samples - len(noisy))), 0,
            args.num_samples)
        samples = model.generate(args.num_samples, num_steps=args.num_steps, mode=mode,
                                 condition=cond, seed=0, batch_size=args.batch_size, verbose=1)
        pictures = ka.pretrained.decode_latents(decode, samples, batch_size=args.batch_size)
        save_image_grid(os.path.join(args.output_dir, f"samples_cons{weight:g}.png"), pictures)
        report = index.query(pictures, name=f"samples, consistency_weight={weight:g}")
        report.to_json(os.path.join(args.output_dir, f"memorization_cons{weight:g}.json"))
        print(report.summary())
        if args.save:
            model.save(os.path.join(args.output_dir, f"model_cons{weight:g}.keras"))
        metrics["runs"][f"{weight:g}"] = {
            "mode": mode, "train_seconds": seconds,
            "final_loss": float(history.history["loss"][-1]),
            "rate_above_0.95": report.almost_identical_rate,
            "mean_similarity": report.mean_similarity,
        }
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
