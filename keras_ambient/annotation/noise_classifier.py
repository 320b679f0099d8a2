import math

import keras
import numpy as np
from keras import ops

from keras_ambient.networks.conditioning import SeededInitializers, embed_noise_and_condition
from keras_ambient.networks.unet import _Layout, _res_block
from keras_ambient.utils.seeding import SavedSeedGenerator
from keras_ambient.utils import backend_fast_paths
from keras_ambient.utils.structures import map_in_batches
from keras_ambient.utils.validation import (
    check_finite_array,
    check_int,
    check_int_tuple,
    check_scalar,
)
from keras_ambient.utils.versioning import dtype_policy_config, rebuild_under_saved_policy


@keras.saving.register_keras_serializable(package="keras_ambient")
class NoiseClassifier(keras.Model):
    """A noise-conditional classifier `c(x_sigma, sigma)`: clean or corrupted?

    The tool of Ambient Diffusion Omni (docs/method.md §9): a corrupted image
    (blurred, compressed, out of distribution) and a clean one become
    indistinguishable once enough Gaussian noise is added. The classifier is
    trained on clean images (label 1) and corrupted ones (label 0), each noised
    at a level drawn log-uniformly from `[sigma_min, sigma_max]` afresh at every
    step, and outputs the logit of "clean" for an image noised at `sigma`.
    Classes should be balanced (`train_noise_classifier` weights them), so that
    where the two distributions agree the probability is 1/2.
    `annotate_noise_levels` then reads, per corrupted sample, the lowest level
    from which the classifier is fooled.

    The network is a small convolutional encoder (the U-Net's residual blocks
    with the noise embedding as adaptive scale/shift, then global pooling);
    it is preconditioned like EDM's denoiser: the input is scaled by
    `1 / sqrt(sigma^2 + sigma_data^2)`, `c_noise = ln(sigma) / 4`, and the logit
    by `sigma_data / sqrt(sigma^2 + sigma_data^2)`, so that it shrinks towards 0
    (probability 1/2) as the noise drowns every difference, as the Bayes
    classifier's does.

    Calling it: `classifier([x_sigma, sigma])` returns logits `(n,)` (`sigma` a
    scalar or one level per sample); `clean_probability(x, sigma)` noises and
    averages for you. Trained with `fit(images, labels)` (`labels` 1 = clean,
    0 = corrupted): the loss draws the levels and the noise itself, so inside
    `fit`/`evaluate` the model is called on the images alone and returns them.

    Args:
        image_shape: `(height, width, channels)` of the images.
        channels: channels of the encoder's levels (each level halves the
            resolution while it is above 2x2).
        embedding_dim: size of the noise embedding.
        sigma_min, sigma_max: range of the training noise levels.
        sigma_data: standard deviation of the clean data (0.5 for images in
            [-1, 1]).
        seed: seed of the initializers and of the training noise.

    Example:
    ```python
    clf = ka.annotation.NoiseClassifier(image_shape=(8, 8, 1), seed=0)
    clf.compile(optimizer="adam")
    clf.fit(np.concatenate([clean, blurred]),
            np.r_[np.ones(len(clean)), np.zeros(len(blurred))], epochs=20)
    p = clf.clean_probability(blurred, sigma=0.5, seed=0)  # ~0.5 if fooled
    ```

    References:
        - Daras, Rodriguez-Munoz, Klivans, Torralba, Daskalakis. "Ambient
          Diffusion Omni: Training Good Models with Bad Data". 2025,
          arXiv:2506.10038.
        - docs/method.md §9 (in this repository).
    """

    def __init__(self, image_shape, channels=(16, 32), embedding_dim=32, sigma_min=0.01,
                 sigma_max=5.0, sigma_data=0.5, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = check_int_tuple("image_shape", image_shape, length=3, minimum=1)
        self.channels = check_int_tuple("channels", channels, minimum=1)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, minimum=4)
        if self.embedding_dim % 2:
            raise ValueError(f"`embedding_dim` must be even. Received: embedding_dim={embedding_dim}")
        self.sigma_min = check_scalar("sigma_min", sigma_min, minimum=0, min_inclusive=False)
        self.sigma_max = check_scalar("sigma_max", sigma_max, minimum=self.sigma_min,
                                      min_inclusive=False)
        self.sigma_data = check_scalar("sigma_data", sigma_data, minimum=0, min_inclusive=False)
        self.seed = check_int("seed", seed, minimum=0, allow_none=True)
        self.network = self._build_network()
        self.seed_generator = SavedSeedGenerator(self.seed, name="classifier_noise_seed")

    def _build_network(self):
        init = SeededInitializers(self.seed)
        x_in = keras.Input(shape=self.image_shape, name="x")
        noise_in = keras.Input(shape=(), name="noise_condition")
        width = 2 * self.channels[-1]
        emb = embed_noise_and_condition(noise_in, None, "positional", self.embedding_dim, width,
                                        None, self.seed, init)
        h = keras.layers.Conv2D(self.channels[0], 3, padding="same", kernel_initializer=init(),
                                name="input_conv")(x_in)
        layout = _Layout("channels_last")
        for level, ch in enumerate(self.channels):
            h = _res_block(h, emb, ch, 8, 0.0, f"level{level}", init, layout)
            if h.shape[1] > 2 and h.shape[2] > 2 and level < len(self.channels) - 1:
                h = keras.layers.AveragePooling2D(2, name=f"level{level}_pool")(h)
        h = keras.layers.GroupNormalization(math.gcd(h.shape[-1], 8), epsilon=1e-6, name="out_norm")(h)
        h = keras.layers.Activation("silu", name="out_act")(h)
        h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
        h = keras.layers.Dense(width, activation="silu", kernel_initializer=init(), name="head_dense")(h)
        logit = keras.layers.Dense(1, kernel_initializer="zeros", name="logit")(h)
        logit = keras.layers.Reshape((), name="flatten_logit")(logit)
        return keras.Model([x_in, noise_in], logit, name="classifier_network")

    def _logits(self, x_sigma, sigma, network_call=None):
        """`c_out * F(c_in x_sigma, c_noise)`: the one place of the preconditioning.

        `network_call(x, c_noise)` defaults to the network's own call (training,
        `model([x, sigma])`); sampling-style inference passes a compiled one.
        """
        x_sigma = ops.cast(x_sigma, "float32")
        sigma = ops.broadcast_to(ops.reshape(ops.cast(sigma, "float32"), (-1,)), (ops.shape(x_sigma)[0],))
        scale = ops.sqrt(sigma**2 + self.sigma_data**2)
        c_in = ops.reshape(1.0 / scale, (-1, 1, 1, 1))
        c_out = self.sigma_data / scale
        call = network_call or (lambda x, c_noise: self.network([x, c_noise]))
        return c_out * call(x_sigma * c_in, ops.log(sigma) / 4.0)

    def call(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)) and len(inputs) == 2:
            return self._logits(*inputs)
        # Inside fit/evaluate Keras calls the model on the images alone; the
        # loss draws levels and noise and calls the network itself.
        return inputs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        x = ops.cast(x, "float32")
        batch = ops.shape(x)[0]
        u = keras.random.uniform((batch,), seed=self.seed_generator)
        log_lo, log_hi = math.log(self.sigma_min), math.log(self.sigma_max)
        sigma = ops.exp(log_lo + u * (log_hi - log_lo))
        noise = keras.random.normal(ops.shape(x), seed=self.seed_generator)
        x_sigma = x + ops.reshape(sigma, (-1, 1, 1, 1)) * noise
        logits = self._logits(x_sigma, sigma)
        labels = ops.cast(ops.reshape(y, (-1,)), "float32")
        per_sample = keras.losses.binary_crossentropy(labels[:, None], logits[:, None], from_logits=True)
        if sample_weight is not None:
            w = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
            return ops.sum(per_sample * w) / ops.maximum(ops.sum(w), 1e-12)
        return ops.mean(per_sample)

    def fit(self, x=None, y=None, *args, **kwargs):
        """Keras's `fit` on images `x` with labels `y` (1 = clean, 0 = corrupted).

        NumPy inputs are checked first: image shape, finite values, labels in {0, 1}.
        """
        if x is not None and hasattr(x, "shape") and not hasattr(x, "element_spec"):
            self._check_images("x", x)
            check_finite_array("x", np.asarray(x))
            labels = np.asarray(y) if y is not None else None
            if labels is None or labels.shape != (len(x),) or not np.all(np.isin(labels, (0, 1))):
                raise ValueError(
                    "`y` must hold one label per image, 1 (clean) or 0 (corrupted). Received: "
                    f"y with shape {None if labels is None else labels.shape} for {len(x)} images"
                    + ("" if labels is None or labels.size == 0 else
                       f" and values {np.unique(labels)[:5].tolist()}")
                )
        return super().fit(x, y, *args, **kwargs)

    def _check_images(self, name, x):
        shape = tuple(np.shape(x))
        if len(shape) != 4 or tuple(shape[1:]) != self.image_shape:
            raise ValueError(
                f"`{name}` must be images of shape (n,) + {self.image_shape} (the classifier's "
                f"image_shape). Received: {name} with shape {shape}"
            )

    def clean_probability(self, x, sigma, num_draws=1, seed=None, batch_size=256):
        """P(clean | x + sigma z), averaged over `num_draws` noise draws per image.

        Args:
            x: images `(n,) + image_shape` (not yet noised).
            sigma: noise level (`> 0`), a scalar or one per image.
            num_draws: noise draws averaged per image.
            seed: seed of the NumPy noise (the same on every backend).
            batch_size: images per network call.

        Returns:
            A float64 array `(n,)` of probabilities.
        """
        self._check_images("x", x)
        x = np.asarray(x, dtype="float32")
        check_finite_array("x", x)
        num_draws = check_int("num_draws", num_draws, minimum=1)
        sigma = np.broadcast_to(np.asarray(sigma, dtype="float32"), (len(x),))
        if not np.all(np.isfinite(sigma) & (sigma > 0)):
            raise ValueError(f"`sigma` must be > 0. Received: sigma with values {np.unique(sigma)[:5]}")
        rng = np.random.default_rng(seed)
        total = np.zeros(len(x))
        for _ in range(num_draws):
            noisy = x + sigma.reshape(-1, 1, 1, 1) * rng.standard_normal(x.shape, dtype="float32")
            total += sigmoid(self._logits_numpy(noisy, sigma, batch_size))
        return total / num_draws

    def _logits_numpy(self, x_sigma, sigma, batch_size):
        # The network compiled per backend, as `generate` calls a denoiser.
        network_call = backend_fast_paths.inference_call(self.network)
        x_sigma = np.asarray(x_sigma, dtype="float32")
        sigma = np.asarray(sigma, dtype="float32")

        def run(index):
            return self._logits(x_sigma[index], sigma[index], network_call)

        return np.asarray(map_in_batches(run, np.arange(len(x_sigma)), batch_size, pad=True),
                          dtype="float64")

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": dtype_policy_config(self.layers[-1]),  # its layers' policy
            "image_shape": self.image_shape,
            "channels": self.channels,
            "embedding_dim": self.embedding_dim,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "sigma_data": self.sigma_data,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return rebuild_under_saved_policy(cls, config)  # its layers' policy


def sigmoid(z):
    """The logistic function in NumPy (float64, no overflow warnings)."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))
