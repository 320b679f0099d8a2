"""
Title: Fine-tuning Stable Diffusion on noisy latents
Author: keras_ambient developers
Date created: 2026/11/28
Last modified: 2026/11/28
Description: Fine-tune keras-hub's Stable Diffusion 3 with LoRA on latents noised once at a known level, with the ambient and consistency losses, then sample and check memorization.
Accelerator: GPU
"""

"""
## Introduction

The headline experiment of "Consistent Diffusion Meets Tweedie" fine-tuned a
pretrained latent model (Stable Diffusion XL) on a dataset whose *latents* had
been noised once, at a known level: the VAE encodes every image once, each
latent gets one fixed draw of noise, and only the denoiser is trained (with
LoRA), using the ambient loss (M3) and the consistency loss (M4). The result is
a model of the *clean* latents that memorizes its training set far less.

Pretrained models do not use EDM's variance-exploding (VE) form. Stable
Diffusion 1.x/2.x/XL predict the noise `eps` of the VP process
`x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`; Stable Diffusion 3 predicts the
velocity `v = eps - x0` of the rectified flow `x_t = (1 - t) x0 + t eps`.
Every such process is VE after a rescaling (docs/method.md §6):
`x_ve = x_t / alpha_t`, `sigma = beta_t / alpha_t`. keras_ambient therefore
wraps a pretrained network in a *denoiser layer* that takes VE inputs and
returns `x0_hat`:

| model | layer | network output | `x0_hat` |
|---|---|---|---|
| SD 1.x/2.x/XL | `ka.layers.VPDenoiser` | `eps` (or `v`) | `(x_t - beta eps)/alpha` |
| SD 3 | `ka.layers.FlowDenoiser` | velocity | `x_t - t v` |
| trained from scratch | `ka.layers.EDMDenoiser` | `F` | EDM preconditioning (M2) |

The losses and samplers are written once, in VE coordinates, for all three.

This guide uses keras-hub's `StableDiffusion3Backbone`. Its task model
(`StableDiffusion3TextToImage`) has no `fit`, so we wrap `backbone.diffuser`.
In smoke mode (`KERAS_AMBIENT_SMOKE=1`) it builds keras-hub's tiny test
configuration with random weights instead of downloading a preset, and the
numbers it prints mean nothing.
"""

"""
## Setup
"""

import json
import os

import keras_ambient.utils.backend_choice  # noqa: F401  (first: picks a backend if none is set)
import keras
import numpy as np

import keras_ambient as ka
from keras_ambient.utils.images import save_image_grid

SMOKE = os.environ.get("KERAS_AMBIENT_SMOKE", "0") == "1"
OUTPUT_DIR = os.path.join(
    os.environ.get("KERAS_AMBIENT_OUTPUT_DIR", "outputs/guides"),
    "finetuning_stable_diffusion",
)
os.makedirs(OUTPUT_DIR, exist_ok=True)

PRESET = "stable_diffusion_3_medium"
RESOLUTION = 64 if SMOKE else 256
NUM_IMAGES = 8 if SMOKE else 1000
STEPS = 4 if SMOKE else 3000
BATCH_SIZE = 4 if SMOKE else 8
NUM_SAMPLES = 4 if SMOKE else 16
NUM_STEPS = 3 if SMOKE else 25  # the paper sampled with 25 steps
LORA_RANK = 4 if SMOKE else 16
keras.utils.set_random_seed(0)

"""
## Noise levels: timesteps, VP sigmas and VE sigmas

The paper noised SDXL latents at VP timesteps 100, 500 and 800 and quotes
`sigma = 0.325, 0.850, 0.981`: those are the VP noise scales
`sqrt(1 - abar_t)`. keras_ambient's levels are VE: `sqrt((1 - abar)/abar)`.
`ka.schedules.VPSchedule` converts both ways (continuously, interpolating
`log sigma` between integer timesteps).
"""

schedule = ka.schedules.VPSchedule.stable_diffusion()
ve = keras.ops.convert_to_numpy(
    schedule.timestep_to_sigma(np.array([100.0, 500.0, 800.0]))
)
vp = ve / np.sqrt(1 + ve**2)
for t, s_ve, s_vp in zip((100, 500, 800), ve, vp):
    print(f"timestep {t}: VP sigma {s_vp:.3f}  VE sigma {s_ve:.3f}")
print(
    "timestep of VE sigma 1.0:", float(schedule.sigma_to_timestep(np.array([1.0]))[0])
)

"""
For rectified flow, `sigma = t / (1 - t)`; SD3's schedule *shift* `s`
(`t' = s t / (1 + (s - 1) t)`) is simply `sigma' = s sigma` in VE terms, and
its logit-normal training law of `t` is the log-normal `ln sigma ~ N(ln s, 1)`.
`AmbientLoss(noise_distribution="denoiser")` draws from each pretrained
model's own training law (VP: timesteps uniform above `t(sigma_n)`, as the paper
did; flow: that shifted log-normal), truncated above the data's `sigma_n`.

## A pretrained Stable Diffusion 3
"""


def tiny_sd3_backbone():
    """keras-hub's test configuration of SD3, randomly initialised (smoke mode)."""
    import keras_hub
    from keras_hub.src.models.clip.clip_text_encoder import CLIPTextEncoder
    from keras_hub.src.models.vae.vae_backbone import VAEBackbone

    vae = VAEBackbone([32] * 4, [1] * 4, [32] * 4, [1] * 4, sampler_method="mode")
    clip_l = CLIPTextEncoder(20, 32, 32, 2, 2, 64, "quick_gelu", -2, name="clip_l")
    clip_g = CLIPTextEncoder(20, 64, 64, 2, 2, 128, "gelu", -2, name="clip_g")
    return keras_hub.models.StableDiffusion3Backbone(
        mmdit_patch_size=2,
        mmdit_hidden_dim=32,
        mmdit_num_layers=2,
        mmdit_num_heads=2,
        mmdit_position_size=192,
        mmdit_qk_norm=None,
        mmdit_dual_attention_indices=None,
        vae=vae,
        clip_l=clip_l,
        clip_g=clip_g,
        image_shape=(RESOLUTION, RESOLUTION, 3),
    )


if SMOKE:
    backbone = tiny_sd3_backbone()
else:
    import keras_hub

    backbone = keras_hub.models.StableDiffusion3Backbone.from_preset(
        PRESET, image_shape=(RESOLUTION, RESOLUTION, 3)
    )
print("MMDiT parameters:", backbone.diffuser.count_params())

"""
## Encode once, noise once

The images must be in [-1, 1]. Here: CIFAR-10 upscaled (downloaded by
`keras.datasets` on your machine), or random smooth images in smoke mode.
`encode_images` caches the latents in a `.npz` file, so a second run skips
the VAE. Each latent is then noised **once** with a fixed seed: the dataset
the model sees is fixed, as it is for real noisy data.
"""

if SMOKE:
    blocks = np.tanh(np.random.default_rng(0).normal(size=(NUM_IMAGES, 8, 8, 3)))
    images = blocks.repeat(RESOLUTION // 8, 1).repeat(RESOLUTION // 8, 2)
else:
    (x_train, _), _ = keras.datasets.cifar10.load_data()
    images = keras.ops.image.resize(x_train[:NUM_IMAGES], (RESOLUTION, RESOLUTION))
    images = keras.ops.convert_to_numpy(images) / 127.5 - 1.0
images = images.astype("float32")

encode, decode = ka.pretrained.sd3_vae_codec(backbone)
latents = ka.pretrained.encode_images(
    encode,
    images,
    batch_size=BATCH_SIZE,
    cache_path=os.path.join(OUTPUT_DIR, "latents.npz"),
)
sigma_data = float(latents.std())
SIGMA_N = (
    1.618  # VE level of VP timestep 500 (VP sigma 0.850), the paper's middle setting
)
noisy = ka.data.add_noise(latents, sigma=SIGMA_N, seed=0)
print("latents", latents.shape, "std", round(sigma_data, 3))
save_image_grid(
    os.path.join(OUTPUT_DIR, "noisy_decoded.png"),
    ka.pretrained.decode_latents(decode, noisy[:8]),
)

"""
Text conditioning uses precomputed embeddings: encode the prompt(s) once with
the backbone's (frozen) text encoders and pass the dict
`{"context", "pooled_projection"}` as the condition, one entry per image. With
no condition, `SD3Diffuser` feeds zero embeddings (unconditional). In the smoke
run the tiny CLIP encoders encode fixed token ids; with a preset use
`keras_hub.models.StableDiffusion3TextToImagePreprocessor.from_preset(PRESET)
.generate_preprocess([prompt])` for the token ids.
"""

ids = {"clip_l": np.ones((1, 5), "int32"), "clip_g": np.ones((1, 5), "int32")}
if not SMOKE:
    preprocessor = keras_hub.models.StableDiffusion3TextToImagePreprocessor.from_preset(
        PRESET
    )
    ids = preprocessor.generate_preprocess(["a photo"])
context, _, pooled, _ = backbone.encode_text_step(ids, ids)
condition = {
    "context": np.repeat(keras.ops.convert_to_numpy(context), len(noisy), axis=0),
    "pooled_projection": np.repeat(
        keras.ops.convert_to_numpy(pooled), len(noisy), axis=0
    ),
}

"""
## LoRA fine-tuning with the ambient loss

`FlowDenoiser(SD3Diffuser(backbone.diffuser))` is the pretrained model as a VE
denoiser. `AmbientDiffusion` accepts it in place of a raw network.
`lora_rank` adds LoRA adapters to every `Dense`/`EinsumDense` layer
(`layer.enable_lora(rank)`) and freezes everything else. The VAE and text
encoders are not part of the model at all. The EMA is off here: for a big
model it is a second copy of the weights (with LoRA it averages only the
adapters).

We fine-tune twice from the same pretrained weights: without consistency
(sample with `mode="truncated"`, stopping at `sigma_n`) and with it (sample to
0).
"""

diffuser_config = ka.pretrained.SD3Diffuser(backbone.diffuser).get_config()
pretrained_weights = backbone.diffuser.get_weights()


def make_model(consistency_weight):
    adapter = ka.pretrained.SD3Diffuser.from_config(diffuser_config)
    adapter.diffuser.set_weights(pretrained_weights)
    denoiser = ka.layers.FlowDenoiser(adapter, shift=float(backbone.shift))
    model = ka.AmbientDiffusion(
        denoiser,
        sigma_n=SIGMA_N,
        sigma_data=sigma_data,
        consistency_weight=consistency_weight,
        ambient_loss=ka.losses.AmbientLoss(
            sigma_data=sigma_data, noise_distribution="denoiser"
        ),
        lora_rank=LORA_RANK,
        ema_decay=None,
        data_shape=latents.shape[1:],
        seed=0,
    )
    model.compile(optimizer=keras.optimizers.AdamW(1e-4))
    return model


data = {"data": noisy, "condition": condition}
epochs = max(1, STEPS // max(1, len(noisy) // BATCH_SIZE))
results = {}
models = {}
for weight in (0.0, 1.0):
    model = make_model(weight)
    lora = ka.pretrained.lora_variables(model.network)
    print(
        f"consistency_weight={weight}: training {len(model.trainable_weights)} "
        f"LoRA variables ({sum(int(np.prod(v.shape)) for v in lora)} parameters)"
    )
    history = model.fit(data, batch_size=BATCH_SIZE, epochs=epochs, verbose=2)
    models[weight] = model
    results[f"consistency_{weight:g}"] = {"final_loss": history.history["loss"][-1]}

"""
## Sampling and decoding

Without consistency the denoiser is only trained above `sigma_n`: sample with
`mode="truncated"`, which stops there and returns `E[x0 | x_{sigma_n}]`. With
consistency, sample to 0. The samples are latents; decode them with the VAE.
"""

sample_condition = ka.utils.structures.slice_condition(condition, 0, NUM_SAMPLES)
if len(noisy) < NUM_SAMPLES:
    sample_condition = ka.utils.structures.pad_condition(
        condition, NUM_SAMPLES - len(noisy)
    )
pictures = {}
for weight, mode in ((0.0, "truncated"), (1.0, "full")):
    samples = models[weight].generate(
        NUM_SAMPLES,
        num_steps=NUM_STEPS,
        mode=mode,
        condition=sample_condition,
        seed=0,
        batch_size=BATCH_SIZE,
    )
    pictures[weight] = ka.pretrained.decode_latents(decode, samples)
    save_image_grid(
        os.path.join(OUTPUT_DIR, f"samples_consistency_{weight:g}.png"),
        pictures[weight],
    )

"""
## Did it memorize the fine-tuning set?

Compare the decoded samples with the fine-tuning images by nearest-neighbour
similarity (see the guide "Measuring memorization"). Pixels are a weak feature
for real photographs; use `feature_extractor="dinov2_small"`-style keras-hub
DINOv2 presets (`ka.memorization.DINOv2FeatureExtractor`) on a GPU machine.
"""

index = ka.memorization.SimilarityIndex(images)
for weight in (0.0, 1.0):
    report = index.query(pictures[weight], name=f"consistency_weight={weight:g}")
    print(report.summary())
    results[f"consistency_{weight:g}"].update(
        {
            "rate_above_0.95": report.almost_identical_rate,
            "mean_similarity": report.mean_similarity,
        }
    )

"""
## Saving and loading

The fine-tuned denoiser saves with the model. Keras merges LoRA adapters into
the kernels when saving and zeroes them when loading; the loaded model samples
identically. To continue fine-tuning a loaded model, call
`ka.pretrained.reinitialize_lora(model.network)` first (with both adapter
matrices at zero, their gradients are zero).
"""

path = os.path.join(OUTPUT_DIR, "finetuned.keras")
models[1.0].save(path)
restored = keras.models.load_model(path)
check = ka.utils.structures.slice_condition(condition, 0, 2)
difference = np.max(
    np.abs(
        restored.denoise(noisy[:2], 2.0, condition=check)
        - models[1.0].denoise(noisy[:2], 2.0, condition=check)
    )
)
print("max difference after reload:", difference)
results["reload_max_difference"] = float(difference)

"""
## Stable Diffusion 1.x with keras-cv

keras-cv is no longer developed, so it is an optional extra
(`pip install keras-ambient[keras-cv]`). Its U-Net predicts `eps` on the
scaled-linear VP schedule, the parameterization of the paper's SDXL.
`ka.pretrained.KerasCVUNet` builds it with `download_weights=False` (bring
your own weights) and computes keras-cv's timestep embedding:

```python
unet = ka.pretrained.KerasCVUNet(img_height=512, img_width=512)
unet.network.load_weights("diffusion_model.weights.h5")
denoiser = ka.layers.VPDenoiser(unet, ka.schedules.VPSchedule.stable_diffusion(), "epsilon")
model = ka.AmbientDiffusion(denoiser, sigma_n=1.618, sigma_data=1.0, lora_rank=16,
                            sigma_max=denoiser.schedule.sigma_max, ema_decay=None,
                            ambient_loss=ka.losses.AmbientLoss(sigma_data=1.0, noise_distribution="denoiser"))
```

`examples/finetune_stable_diffusion.py` runs this whole guide on a folder of
images for either model.
"""

with open(os.path.join(OUTPUT_DIR, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
print(json.dumps(results, indent=2))
if SMOKE:
    print("(smoke mode: a tiny random model; these numbers carry no meaning)")

"""
## Conclusion

- A pretrained model becomes a VE denoiser with one layer (`VPDenoiser`,
  `FlowDenoiser`), so the ambient and consistency losses need no rewriting.
- Encode once, noise once with a fixed seed, train LoRA adapters only.
- Without consistency, sample truncated; with it, sample to 0.
- Measure memorization against the fine-tuning set before you ship.
"""
