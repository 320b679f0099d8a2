import keras

from keras_ambient.networks.conditioning import SeededInitializers, condition_inputs, embed_noise_and_condition
from keras_ambient.utils.validation import check_int, check_scalar
from keras_ambient.utils.versioning import dtype_policy_config, rebuild_under_saved_policy


@keras.saving.register_keras_serializable(package="keras_ambient")
class MLPDenoiser(keras.Model):
    """A residual MLP network `F(x, c_noise)` for vector data (e.g. 2-D mixtures).

    Called as `net([x, c_noise])` or `net([x, c_noise, condition])`; returns a
    tensor of the shape of `x`. Wrap it in `ka.layers.EDMDenoiser` (done by
    `ka.AmbientDiffusion`) to get the preconditioned denoiser of M2.

    Args:
        data_dim: dimension of the data vectors.
        hidden_units: width of the hidden layers.
        num_blocks: number of residual blocks.
        embedding: `"fourier"` or `"positional"` noise embedding.
        embedding_dim: dimension of the noise embedding.
        num_classes: if set, a class-label input (int) is added.
        condition_dim: if set, a vector condition input (e.g. a text embedding).
        dropout: dropout rate inside the blocks.
        seed: seed of the weight initializers (equal seeds give equal networks).

    Example:
    ```python
    net = ka.networks.MLPDenoiser(data_dim=2, hidden_units=128, num_blocks=3)
    out = net([keras.ops.zeros((4, 2)), keras.ops.zeros((4,))])  # (4, 2)
    ```

    References:
        - Tancik et al. "Fourier Features Let Networks Learn High Frequency Functions in Low
          Dimensional Domains". NeurIPS 2020, arXiv:2006.10739.
        - Karras, Aittala, Aila, Laine. "Elucidating the Design Space of Diffusion-Based
          Generative Models" (EDM). NeurIPS 2022, arXiv:2206.00364.
    """

    def __init__(self, data_dim, hidden_units=256, num_blocks=3, embedding="fourier",
                 embedding_dim=64, num_classes=None, condition_dim=None, dropout=0.0,
                 seed=None, **kwargs):
        data_dim = check_int("data_dim", data_dim, minimum=1)
        hidden_units = check_int("hidden_units", hidden_units, minimum=1)
        num_blocks = check_int("num_blocks", num_blocks, minimum=1)
        embedding_dim = check_int("embedding_dim", embedding_dim, minimum=4)
        dropout = check_scalar("dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)

        x_in = keras.Input(shape=(data_dim,), name="x")
        noise_in = keras.Input(shape=(), name="noise_condition")
        cond_in = condition_inputs(num_classes, condition_dim)
        init = SeededInitializers(seed)
        emb = embed_noise_and_condition(
            noise_in, cond_in, embedding, embedding_dim, hidden_units, num_classes, seed, init
        )
        h = keras.layers.Dense(hidden_units, kernel_initializer=init(), name="input_dense")(x_in)
        for i in range(num_blocks):
            r = keras.layers.LayerNormalization(name=f"block{i}_norm")(h)
            r = keras.layers.Add(name=f"block{i}_add_emb")(
                [r, keras.layers.Dense(hidden_units, kernel_initializer=init(), name=f"block{i}_emb")(emb)]
            )
            r = keras.layers.Activation("silu", name=f"block{i}_act1")(r)
            r = keras.layers.Dense(hidden_units, kernel_initializer=init(), name=f"block{i}_dense1")(r)
            r = keras.layers.Activation("silu", name=f"block{i}_act2")(r)
            if dropout:
                r = keras.layers.Dropout(dropout, seed=init.next_seed(), name=f"block{i}_dropout")(r)
            r = keras.layers.Dense(hidden_units, kernel_initializer=init(), name=f"block{i}_dense2")(r)
            h = keras.layers.Add(name=f"block{i}_residual")([h, r])
        h = keras.layers.LayerNormalization(name="output_norm")(h)
        h = keras.layers.Activation("silu", name="output_act")(h)
        out = keras.layers.Dense(data_dim, kernel_initializer="zeros", name="output_dense")(h)
        inputs = [x_in, noise_in] + ([cond_in] if cond_in is not None else [])
        super().__init__(inputs=inputs, outputs=out, **kwargs)

        self.data_dim = data_dim
        self.hidden_units = hidden_units
        self.num_blocks = num_blocks
        self.embedding = embedding
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.condition_dim = condition_dim
        self.dropout = dropout
        self.seed = seed

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": dtype_policy_config(self.layers[-1]),  # its layers' policy
            "data_dim": self.data_dim,
            "hidden_units": self.hidden_units,
            "num_blocks": self.num_blocks,
            "embedding": self.embedding,
            "embedding_dim": self.embedding_dim,
            "num_classes": self.num_classes,
            "condition_dim": self.condition_dim,
            "dropout": self.dropout,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return rebuild_under_saved_policy(cls, config)  # its layers' policy
