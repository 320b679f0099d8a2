import math
import warnings

import keras
from keras import ops

from keras_ambient.networks.conditioning import SeededInitializers, condition_inputs, embed_noise_and_condition
from keras_ambient.utils import backend_fast_paths
from keras_ambient.utils.validation import check_int, check_int_tuple, check_scalar
from keras_ambient.utils.versioning import dtype_policy_config, rebuild_under_saved_policy


def _groups(channels, num_groups):
    return math.gcd(channels, num_groups)


def _resolve_data_format(data_format):
    """The layout the layers use on this backend.

    `"auto"`: channels first on torch (its convolutions and group normalisation are
    channels-first kernels; channels-last layers add a transpose around each), channels
    last elsewhere. TensorFlow always runs channels last: its CPU convolutions are
    channels-last only, and Keras's channels-first convolution there gave wrong outputs
    for 2-channel inputs (Keras 3.15, TensorFlow 2.21; found by the cross-backend loading
    test of tests/test_networks.py). The layout changes neither the weights nor the
    function.
    """
    backend = keras.backend.backend()
    if data_format == "auto":
        return "channels_first" if backend == "torch" else "channels_last"
    if backend == "tensorflow" and data_format == "channels_first":
        warnings.warn(
            "UNet(data_format='channels_first') runs channels last on the TensorFlow backend "
            "(Keras's channels-first convolution is unreliable on TensorFlow's CPU); the "
            "weights and the function are the same.",
            stacklevel=3,
        )
        return "channels_last"
    return data_format


class _Layout:
    """Which axis holds the channels and which the height, for one data format."""

    def __init__(self, data_format):
        self.data_format = data_format
        self.channel_axis = 1 if data_format == "channels_first" else -1
        self.height_axis = 2 if data_format == "channels_first" else 1

    def channels(self, h):
        return h.shape[self.channel_axis]

    def height(self, h):
        return h.shape[self.height_axis]

    def conv(self, channels, kernel_size, name, **kwargs):
        return keras.layers.Conv2D(channels, kernel_size, padding="same", data_format=self.data_format,
                                   name=name, **kwargs)

    def norm(self, channels, num_groups, name):
        return GroupNormalization(_groups(channels, num_groups), axis=self.channel_axis, epsilon=1e-6,
                                  name=name)


def _res_block(h, emb, channels, num_groups, dropout, name, init, layout):
    skip = h
    h = layout.norm(layout.channels(h), num_groups, f"{name}_norm1")(h)
    h = keras.layers.Activation("silu", name=f"{name}_act1")(h)
    h = layout.conv(channels, 3, f"{name}_conv1", kernel_initializer=init())(h)
    # Adaptive scale/shift from the noise embedding (DDPM++ `adaptive_scale`).
    scale_shift = keras.layers.Dense(2 * channels, kernel_initializer=init(), name=f"{name}_emb")(emb)
    shape = (2 * channels, 1, 1) if layout.channel_axis == 1 else (1, 1, 2 * channels)
    scale_shift = keras.layers.Reshape(shape, name=f"{name}_emb_reshape")(scale_shift)
    h = layout.norm(channels, num_groups, f"{name}_norm2")(h)
    h = _ScaleShift(axis=layout.channel_axis, name=f"{name}_scale_shift")([h, scale_shift])
    h = keras.layers.Activation("silu", name=f"{name}_act2")(h)
    if dropout:
        h = keras.layers.Dropout(dropout, seed=init.next_seed(), name=f"{name}_dropout")(h)
    h = layout.conv(channels, 3, f"{name}_conv2", kernel_initializer="zeros")(h)
    if layout.channels(skip) != channels:
        skip = layout.conv(channels, 1, f"{name}_skip", kernel_initializer=init())(skip)
    return keras.layers.Add(name=f"{name}_add")([skip, h])


def _attention(h, num_heads, num_groups, name, init, layout):
    channels = layout.channels(h)
    a = layout.norm(channels, num_groups, f"{name}_norm")(h)
    if layout.channel_axis == 1:
        a = keras.layers.Permute((2, 3, 1), name=f"{name}_to_channels_last")(a)
    height, width = a.shape[1], a.shape[2]
    a = keras.layers.Reshape((height * width, channels), name=f"{name}_flatten")(a)
    a = keras.layers.MultiHeadAttention(num_heads, max(channels // num_heads, 1),
                                        kernel_initializer=init(), name=f"{name}_mha")(a, a)
    a = keras.layers.Reshape((height, width, channels), name=f"{name}_unflatten")(a)
    if layout.channel_axis == 1:
        a = keras.layers.Permute((3, 1, 2), name=f"{name}_to_channels_first")(a)
    return keras.layers.Add(name=f"{name}_add")([h, a])


@keras.saving.register_keras_serializable(package="keras_ambient")
class GroupNormalization(keras.layers.GroupNormalization):
    """`keras.layers.GroupNormalization`; over axis 1 in one kernel where the backend has one
    (`backend_fast_paths.group_norm`: torch), the layer's own call otherwise.

    Keras saves a model's weights under paths named after each layer's class name, so this
    class keeps Keras's name: U-Nets saved before it existed (with Keras's class) load.
    """

    def call(self, inputs):
        if self.axis == 1 and self.scale and self.center:
            out = backend_fast_paths.group_norm(inputs, self.groups, self.gamma.value, self.beta.value,
                                                self.epsilon)
            if out is not None:
                return ops.cast(out, self.compute_dtype)
        return super().call(inputs)


@keras.saving.register_keras_serializable(package="keras_ambient")
class _ScaleShift(keras.layers.Layer):
    """`h * (1 + scale) + shift` with `[scale, shift]` split along the channel `axis`."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def call(self, inputs):
        h, scale_shift = inputs
        scale, shift = keras.ops.split(scale_shift, 2, axis=self.axis)
        return h * (1.0 + scale) + shift

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


@keras.saving.register_keras_serializable(package="keras_ambient")
class UNet(keras.Model):
    """A small DDPM++-like U-Net `F(x, c_noise)` for images (channels last).

    Residual blocks with group normalisation and adaptive scale/shift from the
    noise embedding, strided-convolution down-sampling, nearest up-sampling,
    optional self-attention at chosen resolutions, zero-initialised output
    convolutions (EDM). Called as `net([x, c_noise])` or with a condition.

    Args:
        image_shape: `(height, width, channels)`; height and width must be
            divisible by `2 ** (len(channel_multipliers) - 1)`.
        base_channels: channels at the first level.
        channel_multipliers: per-level channel multipliers.
        num_res_blocks: residual blocks per level.
        attention_resolutions: resolutions (feature-map heights) with attention.
        num_heads: attention heads.
        dropout: dropout rate in residual blocks.
        embedding: `"fourier"` or `"positional"` noise embedding.
        embedding_dim: dimension of the noise embedding (default `base_channels`).
        num_classes: adds a class-label input when set.
        condition_dim: adds a vector condition input (e.g. text embedding) when set.
        num_groups: maximum number of groups of the group normalisations.
        data_format: the layout of the feature maps inside the network:
            `"channels_last"`, `"channels_first"` or `"auto"` (channels first on the
            torch backend, channels last on the others; TensorFlow always runs channels
            last). Inputs and outputs are channels last in every case and the weights
            do not depend on the layout: a saved `"auto"` network loads on any backend
            in that backend's layout, and weights move between layouts.
        seed: seed of the weight initializers (equal seeds give equal networks).

    Example:
    ```python
    net = ka.networks.UNet(image_shape=(8, 8, 1), base_channels=32,
                           channel_multipliers=(1, 2), attention_resolutions=(4,))
    out = net([keras.ops.zeros((2, 8, 8, 1)), keras.ops.zeros((2,))])
    ```

    References:
        - Ronneberger, Fischer, Brox. "U-Net: Convolutional Networks for Biomedical Image
          Segmentation". MICCAI 2015, arXiv:1505.04597.
        - Ho, Jain, Abbeel. "Denoising Diffusion Probabilistic Models". NeurIPS 2020,
          arXiv:2006.11239.
        - Karras, Aittala, Aila, Laine. "Elucidating the Design Space of Diffusion-Based
          Generative Models" (EDM). NeurIPS 2022, arXiv:2206.00364.
    """

    def __init__(self, image_shape, base_channels=64, channel_multipliers=(1, 2, 2),
                 num_res_blocks=2, attention_resolutions=(), num_heads=4, dropout=0.0,
                 embedding="positional", embedding_dim=None, num_classes=None,
                 condition_dim=None, num_groups=8, data_format="auto", seed=None, **kwargs):
        image_shape = check_int_tuple("image_shape", image_shape, length=3, minimum=1)
        channel_multipliers = check_int_tuple("channel_multipliers", channel_multipliers, minimum=1)
        factor = 2 ** (len(channel_multipliers) - 1)
        if image_shape[0] % factor or image_shape[1] % factor:
            raise ValueError(
                f"`image_shape` height and width must be divisible by {factor} "
                f"for {len(channel_multipliers)} levels. Received: image_shape={image_shape}"
            )
        base_channels = check_int("base_channels", base_channels, minimum=1)
        num_res_blocks = check_int("num_res_blocks", num_res_blocks, minimum=1)
        num_heads = check_int("num_heads", num_heads, minimum=1)
        dropout = check_scalar("dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        embedding_dim = check_int(
            "embedding_dim", embedding_dim if embedding_dim is not None else max(base_channels, 16),
            minimum=4,
        )
        attention_resolutions = check_int_tuple("attention_resolutions", attention_resolutions,
                                                minimum=1, allow_empty=True)
        resolutions = [image_shape[0] // 2 ** level for level in range(len(channel_multipliers))]
        if any(r not in resolutions for r in attention_resolutions):
            raise ValueError(
                f"`attention_resolutions` must be feature-map heights of this U-Net, {resolutions} "
                f"for image height {image_shape[0]}. Received: attention_resolutions="
                f"{attention_resolutions}"
            )
        num_groups = check_int("num_groups", num_groups, minimum=1)
        if data_format not in ("auto", "channels_last", "channels_first"):
            raise ValueError(
                "`data_format` must be 'auto', 'channels_last' or 'channels_first'. "
                f"Received: data_format={data_format!r}"
            )
        emb_width = 4 * base_channels

        x_in = keras.Input(shape=image_shape, name="x")
        noise_in = keras.Input(shape=(), name="noise_condition")
        cond_in = condition_inputs(num_classes, condition_dim)
        init = SeededInitializers(seed)
        emb = embed_noise_and_condition(
            noise_in, cond_in, embedding, embedding_dim, emb_width, num_classes, seed, init
        )

        layout = _Layout(_resolve_data_format(data_format))
        h = x_in
        if layout.channel_axis == 1:  # the denoiser's images stay channels last
            h = keras.layers.Permute((3, 1, 2), name="to_channels_first")(h)
        h = layout.conv(base_channels, 3, "input_conv", kernel_initializer=init())(h)
        skips = [h]
        for level, mult in enumerate(channel_multipliers):
            for b in range(num_res_blocks):
                h = _res_block(h, emb, base_channels * mult, num_groups, dropout, f"down{level}_block{b}", init,
                               layout)
                if layout.height(h) in attention_resolutions:
                    h = _attention(h, num_heads, num_groups, f"down{level}_attn{b}", init, layout)
                skips.append(h)
            if level < len(channel_multipliers) - 1:
                h = layout.conv(layout.channels(h), 3, f"down{level}_downsample", strides=2,
                                kernel_initializer=init())(h)
                skips.append(h)

        h = _res_block(h, emb, layout.channels(h), num_groups, dropout, "mid_block0", init, layout)
        h = _attention(h, num_heads, num_groups, "mid_attn", init, layout)
        h = _res_block(h, emb, layout.channels(h), num_groups, dropout, "mid_block1", init, layout)

        for level in reversed(range(len(channel_multipliers))):
            mult = channel_multipliers[level]
            for b in range(num_res_blocks + 1):
                h = keras.layers.Concatenate(axis=layout.channel_axis, name=f"up{level}_concat{b}")(
                    [h, skips.pop()])
                h = _res_block(h, emb, base_channels * mult, num_groups, dropout, f"up{level}_block{b}", init,
                               layout)
                if layout.height(h) in attention_resolutions:
                    h = _attention(h, num_heads, num_groups, f"up{level}_attn{b}", init, layout)
            if level > 0:
                h = keras.layers.UpSampling2D(2, data_format=layout.data_format, interpolation="nearest",
                                              name=f"up{level}_upsample")(h)
                h = layout.conv(layout.channels(h), 3, f"up{level}_upconv", kernel_initializer=init())(h)

        h = layout.norm(layout.channels(h), num_groups, "output_norm")(h)
        h = keras.layers.Activation("silu", name="output_act")(h)
        out = layout.conv(image_shape[-1], 3, "output_conv", kernel_initializer="zeros")(h)
        if layout.channel_axis == 1:
            out = keras.layers.Permute((2, 3, 1), name="to_channels_last")(out)

        inputs = [x_in, noise_in] + ([cond_in] if cond_in is not None else [])
        super().__init__(inputs=inputs, outputs=out, **kwargs)

        self.image_shape = image_shape
        self.base_channels = base_channels
        self.channel_multipliers = channel_multipliers
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.num_heads = num_heads
        self.dropout = dropout
        self.embedding = embedding
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.condition_dim = condition_dim
        self.num_groups = num_groups
        self.data_format = data_format
        self.seed = seed

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": dtype_policy_config(self.layers[-1]),  # its layers' policy
            "image_shape": self.image_shape,
            "base_channels": self.base_channels,
            "channel_multipliers": self.channel_multipliers,
            "num_res_blocks": self.num_res_blocks,
            "attention_resolutions": self.attention_resolutions,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "embedding": self.embedding,
            "embedding_dim": self.embedding_dim,
            "num_classes": self.num_classes,
            "condition_dim": self.condition_dim,
            "num_groups": self.num_groups,
            "data_format": self.data_format,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return rebuild_under_saved_policy(cls, config)  # its layers' policy
