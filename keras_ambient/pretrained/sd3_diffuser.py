import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ambient")
class SD3Diffuser(keras.Model):
    """keras-hub's Stable Diffusion 3 MMDiT with the `[x, timestep, condition]` signature.

    `keras_hub.models.StableDiffusion3Backbone` has no `fit` for its text-to-image
    task; its `diffuser` (an `MMDiT`) takes a dict
    `{"latent", "context", "pooled_projection", "timestep"}` and predicts the
    flow velocity. This adapter calls it as
    `adapter([latents, timestep, condition])`, with `condition` a dict
    `{"context": (batch, tokens, dim), "pooled_projection": (batch, pooled_dim)}`
    of precomputed text embeddings (`None`: zero embeddings, i.e.
    unconditional), so it plugs into `ka.layers.FlowDenoiser`.

    Args:
        diffuser: the MMDiT, `backbone.diffuser`.

    Example:
    ```python
    backbone = keras_hub.models.StableDiffusion3Backbone.from_preset(...)
    D = ka.layers.FlowDenoiser(ka.pretrained.SD3Diffuser(backbone.diffuser),
                               shift=backbone.shift)
    model = ka.AmbientDiffusion(D, sigma_n=0.5, sigma_data=1.0, lora_rank=8,
                                ema_decay=None)
    ```

    References:
        - Esser et al. "Scaling Rectified Flow Transformers for High-Resolution Image
          Synthesis" (Stable Diffusion 3). ICML 2024, arXiv:2403.03206.
        - Liu, Gong, Liu. "Flow Straight and Fast: Learning to Generate and Transfer Data
          with Rectified Flow". ICLR 2023, arXiv:2209.03003.
    """

    def __init__(self, diffuser, **kwargs):
        super().__init__(**kwargs)
        inputs = getattr(diffuser, "input", None)
        if not isinstance(inputs, dict) or not {"latent", "context", "pooled_projection", "timestep"} <= set(inputs):
            raise TypeError(
                "`diffuser` must be keras-hub's MMDiT (`StableDiffusion3Backbone.diffuser`), "
                "a functional model with inputs latent/context/pooled_projection/timestep. "
                f"Received: diffuser={diffuser!r}"
            )
        self.diffuser = diffuser
        self.context_shape = tuple(inputs["context"].shape[1:])
        self.pooled_projection_dim = int(inputs["pooled_projection"].shape[-1])
        self.built = True  # the functional MMDiT is built

    @property
    def latent_shape(self):
        """Shape of one latent, `(height/8, width/8, channels)`."""
        return tuple(self.diffuser.input["latent"].shape[1:])

    def call(self, inputs, training=None):
        latents, timestep = inputs[0], inputs[1]
        condition = inputs[2] if len(inputs) > 2 else None
        batch = ops.shape(latents)[0]
        if condition is None:
            context = ops.zeros((batch, 1, self.context_shape[-1]), latents.dtype)
            pooled = ops.zeros((batch, self.pooled_projection_dim), latents.dtype)
        else:
            if not isinstance(condition, dict) or set(condition) != {"context", "pooled_projection"}:
                raise ValueError(
                    "The SD3 condition must be a dict with keys 'context' and "
                    "'pooled_projection' (precomputed text embeddings). Received: "
                    f"{sorted(condition) if isinstance(condition, dict) else type(condition).__name__}"
                )
            context, pooled = condition["context"], condition["pooled_projection"]
        timestep = ops.reshape(ops.cast(timestep, latents.dtype), (-1, 1))
        return self.diffuser(
            {"latent": latents, "context": context, "pooled_projection": pooled,
             "timestep": timestep},
            training=training,
        )

    def get_config(self):
        config = super().get_config()
        config["diffuser"] = keras.saving.serialize_keras_object(self.diffuser)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["diffuser"] = keras.saving.deserialize_keras_object(config["diffuser"])
        return cls(**config)
