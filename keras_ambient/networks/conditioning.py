"""Shared pieces of the built-in networks: noise and condition embeddings."""

import keras

from keras_ambient.layers.fourier_embedding import FourierEmbedding
from keras_ambient.layers.positional_embedding import PositionalEmbedding
from keras_ambient.utils.validation import check_choice, check_int

EMBEDDINGS = ("fourier", "positional")


class SeededInitializers:
    """Initializers for the layers of one network: with a `seed`, layer `i` gets
    `seed + i`, so equal seeds build equal networks; without, Keras's defaults.

    Example: `init = SeededInitializers(0); Dense(8, kernel_initializer=init())`.
    """

    def __init__(self, seed):
        self.seed = check_int("seed", seed, minimum=0, allow_none=True)
        self._count = 0

    def next_seed(self):
        if self.seed is None:
            return None
        self._count += 1
        return int(self.seed) + 7919 * self._count

    def __call__(self, kind="glorot_uniform"):
        seed = self.next_seed()
        if seed is None:
            return kind
        if kind == "glorot_uniform":
            return keras.initializers.GlorotUniform(seed=seed)
        if kind == "uniform":  # keras.layers.Embedding's default
            return keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)
        raise ValueError(f"Unknown initializer kind. Received: kind={kind!r}")


def condition_inputs(num_classes, condition_dim):
    """Returns the optional condition `keras.Input` (or None) after validation."""
    check_int("num_classes", num_classes, minimum=2, allow_none=True)
    check_int("condition_dim", condition_dim, minimum=1, allow_none=True)
    if num_classes is not None and condition_dim is not None:
        raise ValueError(
            "Give either `num_classes` (class labels) or `condition_dim` "
            "(precomputed text/vector embeddings), not both. Received: "
            f"num_classes={num_classes}, condition_dim={condition_dim}"
        )
    if num_classes is not None:
        return keras.Input(shape=(), dtype="int32", name="class_label")
    if condition_dim is not None:
        return keras.Input(shape=(condition_dim,), name="condition")
    return None


def embed_noise_and_condition(noise_in, cond_in, embedding, embedding_dim, width,
                              num_classes, seed, init=None):
    """Embeds `c_noise` (and the condition) into a `(batch, width)` vector."""
    init = init if init is not None else SeededInitializers(seed)
    check_choice("embedding", embedding, EMBEDDINGS)
    if embedding == "fourier":
        emb = FourierEmbedding(embedding_dim, seed=seed, name="noise_fourier")(noise_in)
    else:
        emb = PositionalEmbedding(embedding_dim, name="noise_positional")(noise_in)
    emb = keras.layers.Dense(width, activation="silu", kernel_initializer=init(), name="noise_dense_1")(emb)
    emb = keras.layers.Dense(width, kernel_initializer=init(), name="noise_dense_2")(emb)
    if cond_in is not None:
        if num_classes is not None:
            c = keras.layers.Embedding(num_classes, width, embeddings_initializer=init("uniform"),
                                       name="class_embedding")(cond_in)
        else:
            c = keras.layers.Dense(width, kernel_initializer=init(), name="condition_dense")(cond_in)
        emb = keras.layers.Add(name="add_condition")([emb, c])
    return keras.layers.Activation("silu", name="embedding_act")(emb)
