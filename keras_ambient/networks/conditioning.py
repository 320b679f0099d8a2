"""Shared pieces of the built-in networks: noise and condition embeddings."""

import keras

from keras_ambient.layers.fourier_embedding import FourierEmbedding
from keras_ambient.layers.positional_embedding import PositionalEmbedding
from keras_ambient.utils.validation import check_choice, check_int

EMBEDDINGS = ("fourier", "positional")


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
                              num_classes, seed):
    """Embeds `c_noise` (and the condition) into a `(batch, width)` vector."""
    check_choice("embedding", embedding, EMBEDDINGS)
    if embedding == "fourier":
        emb = FourierEmbedding(embedding_dim, seed=seed, name="noise_fourier")(noise_in)
    else:
        emb = PositionalEmbedding(embedding_dim, name="noise_positional")(noise_in)
    emb = keras.layers.Dense(width, activation="silu", name="noise_dense_1")(emb)
    emb = keras.layers.Dense(width, name="noise_dense_2")(emb)
    if cond_in is not None:
        if num_classes is not None:
            c = keras.layers.Embedding(num_classes, width, name="class_embedding")(cond_in)
        else:
            c = keras.layers.Dense(width, name="condition_dense")(cond_in)
        emb = keras.layers.Add(name="add_condition")([emb, c])
    return keras.layers.Activation("silu", name="embedding_act")(emb)
