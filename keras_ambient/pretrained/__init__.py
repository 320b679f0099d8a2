"""Fine-tuning pretrained (latent) diffusion models on noisy data (docs/method.md §6).

- `SD3Diffuser`: keras-hub's Stable Diffusion 3 MMDiT for `ka.layers.FlowDenoiser`.
- `KerasCVUNet`: keras-cv's Stable Diffusion 1.x/2.x U-Net for `ka.layers.VPDenoiser`
  (optional extra; keras-cv is no longer developed).
- `enable_lora`, `lora_variables`, `reinitialize_lora`: LoRA adapters.
- `encode_images`, `decode_latents`, `sd3_vae_codec`: latents encoded once, cached.
"""

from keras_ambient.pretrained.keras_cv_unet import KerasCVUNet, build_keras_cv_diffusion_model
from keras_ambient.pretrained.latents import decode_latents, encode_images, sd3_vae_codec
from keras_ambient.pretrained.lora import enable_lora, lora_variables, reinitialize_lora
from keras_ambient.pretrained.sd3_diffuser import SD3Diffuser
