import inspect
import warnings

import keras
import numpy as np
from keras import ops

from keras_ambient import samplers as samplers_lib
from keras_ambient.callbacks.terminate_on_non_finite import TerminateOnNonFinite
from keras_ambient.layers.denoiser import Denoiser
from keras_ambient.layers.edm_denoiser import EDMDenoiser
from keras_ambient.models.loading import check_save_path
from keras_ambient.pretrained.lora import enable_lora
from keras_ambient.losses.ambient_loss import AmbientLoss
from keras_ambient.losses.consistency_loss import ConsistencyLoss
from keras_ambient.utils import backend_fast_paths, batches
from keras_ambient.utils.train_step import train_functions_by_phase, train_step_then
from keras_ambient.utils.structures import condition_length, denoiser_inputs, pad_condition, slice_condition
from keras_ambient.utils.distribute import scale_loss_for_replicas
from keras_ambient.utils.seeding import SavedSeedGenerator
from keras_ambient.utils.versioning import VERSION_KEY, check_saved_config, dtype_policy_config, saved_dtype_policy
from keras_ambient.version import __version__
from keras_ambient.utils.validation import (
    check_choice,
    check_finite_array,
    check_int,
    check_int_tuple,
    check_noise_levels,
    check_range,
    check_scalar,
)

MODES = ("full", "truncated", "from_input")
TARGETS = ("online", "ema")


def _is_array(v):
    """NumPy arrays and backend tensors (not datasets, loaders or generators)."""
    return hasattr(v, "shape") and hasattr(v, "dtype") and not hasattr(v, "element_spec")


def _is_structure(v):
    return isinstance(v, (dict, list, tuple))


def _shape_matches(shape, expected):
    """Static shape check: unknown (None) dimensions match anything."""
    shape = tuple(shape)
    return len(shape) == len(expected) and all(
        d is None or int(d) == e for d, e in zip(shape, expected))


def _bind_keras_args(method, x, y, args, kwargs):
    """`fit`/`evaluate`'s arguments as one dict (positional ones included)."""
    bound = inspect.signature(method).bind(None, x, y, *args, **kwargs)
    out = dict(bound.arguments)
    out.pop("self", None)
    out.update(out.pop("kwargs", {}))
    return out


@keras.saving.register_keras_serializable(package="keras_ambient")
class AmbientDiffusion(keras.Model):
    """A diffusion model of the CLEAN distribution trained on noisy data.

    Wraps a network `F` in EDM's preconditioned denoiser `D(x; sigma)` (M2) and
    trains it with Keras's own `fit` on samples `y = x0 + sigma_n z`, using the
    ambient loss (M1, M3: exact `E[x0 | x_t]` for every `sigma_t > sigma_n`)
    plus `consistency_weight` times the consistency loss (M4, M5: extends `D`
    below `sigma_n`, so sampling can run to 0). It keeps an exponential moving
    average of the weights (with warm-up), saved with the model and used by
    `generate` and `denoise` by default.

    Data. `fit` and `evaluate` accept NumPy arrays, `tf.data`,
    `keras.utils.PyDataset` and torch `DataLoader` inputs, and
    `validation_data`, whose batches are either
    - `y` (every sample at the model's `sigma_n`),
    - a dict with the key `"data"` and optionally `"sigma_n"` (per-sample
      levels; `0` marks a clean sample), `"condition"` and `"sample_weight"`:
      the format to use for datasets, or
    - a tuple `(y, sigma_n)` or `(y, sigma_n, condition)` / `fit(y, sigma_n)`
      (`sigma_n` may be a scalar). A dataset's 3-tuple means the same: it is
      not unpacked as Keras's `(x, y, sample_weight)` (utils/batches.py).
    Each sample is trained only at `sigma_t > its own sigma_n`. NumPy inputs
    are checked before training; bad samples of datasets are left out of the
    update and counted (see `TerminateOnNonFinite`).
    Logged: `loss` (total), `ambient_loss`, `consistency_loss`, `bad_samples`.
    With `validation_data`, `val_ambient_loss` is M3 on held-out noisy data: an
    unbiased estimate (up to a constant) of the clean denoising error, the
    right criterion for early stopping. The EMA is updated after each
    optimizer step.

    Calling the model (`model(y)`, `model.predict(y)`) returns `D(y; sigma_n)`
    (EMA weights), the posterior mean `E[x0 | y]` of noisy data at its level;
    `denoise` does the same for any level, `generate` samples.

    Args:
        network: the raw network `F([x, c_noise(, condition)])`, e.g.
            `ka.networks.UNet` or `ka.networks.MLPDenoiser`; any Keras model
            whose output has the shape of `x`. It is wrapped in EDM's
            `ka.layers.EDMDenoiser`. To fine-tune a pretrained model in its own
            parameterization (docs/method.md §6), pass a prebuilt denoiser instead:
            `ka.layers.VPDenoiser` (DDPM epsilon/v, Stable Diffusion 1.x-XL) or
            `ka.layers.FlowDenoiser` (rectified flow, Stable Diffusion 3); see
            `ka.pretrained`.
        sigma_n: noise level of the training data (scalar, `>= 0`); batches may
            override it per sample. Also the default end level of
            `generate(mode="truncated")`.
        sigma_data: standard deviation of the clean data (0.5 for images in
            [-1, 1]; about `x.std()` for other data).
        consistency_weight: lambda of `L = L_ambient + lambda L_cons`; 0 turns
            the consistency loss off (cheaper steps; then sample with
            `mode="truncated"`). Chosen by measurement (docs/consistency.md):
            the consistency term is small next to the EDM-weighted ambient
            loss, so it needs a large weight.
        ambient_loss: an `ka.losses.AmbientLoss` (default: EDM log-normal levels
            truncated above each sample's `sigma_n`, `weighting="unbiased"`,
            this `sigma_data`).
        consistency_loss: an `ka.losses.ConsistencyLoss` (its defaults: start
            at the data, an Euler–Maruyama chain of 7 EDM-spaced steps, a
            quarter of each batch; see docs/consistency.md).
        consistency_target: which weights compute the consistency target
            `D(x_t; t)` and drive its reverse chain: `"online"` (the weights
            being trained) or `"ema"` (the EMA copy, a slower-moving teacher;
            needs `ema_decay`). Gradients flow through the online `D(x_s; s)`
            calls either way.
        consistency_start_step: training steps of ambient-only training
            before the consistency loss is switched on (the consistency
            target `D(y; sigma_n)` is learned by the ambient loss first).
            Steps are counted by `ema_step` (`reset_ema` restarts it). These
            steps run without the consistency loss's reverse chains, so they
            cost what a step of `consistency_weight=0` costs.
        consistency_interval: run the consistency loss on one training step
            in every `consistency_interval`, with its weight multiplied by
            `consistency_interval` (lazy regularization, as StyleGAN2's R1
            term), so the expected update is unchanged; the other steps are
            ambient-only and cost what a step without consistency costs. With
            `steps_per_execution > 1`, one call of that many steps in every
            `consistency_interval` runs it; 1 runs it on every step. The
            default, 3, is chosen by measurement (docs/consistency.md §2):
            per unit of training time it trains as well as every step.
            Applies to `fit` and `train_on_batch`; a custom training loop
            that calls `compute_loss` itself gets the loss on every step with
            weight `consistency_weight`. Models saved before keras_ambient
            0.3.0 load with 1, as they were trained.
        ema_decay: decay of the weight EMA (`None` disables it). A warm-up
            `min(ema_decay, (1 + step) / (10 + step))` makes early averages
            follow the weights (EMA = weights at step 0). Trainable weights are
            averaged, the others copied; which is which is read when a `fit` or
            `train_on_batch` call starts (a callback that changes `trainable`
            takes effect at the next call).
        sigma_min, sigma_max: ends of the sampling schedule.
        data_shape: shape of one sample; inferred from functional networks.
        seed: seed of the model's `SeedGenerator` (training noise).
        lora_rank: if set, LoRA adapters of this rank are added to every
            `Dense`/`EinsumDense` layer of the network (and its EMA copy) and
            all other weights are frozen (`ka.pretrained.enable_lora`); the
            EMA then averages only the adapters. Saving merges the adapters
            into the kernels (Keras); call
            `ka.pretrained.reinitialize_lora(model.network)` before fine-tuning
            a loaded model further.
        lora_alpha: LoRA scale numerator (default: `lora_rank`).

    Example:
    ```python
    import keras, keras_ambient as ka
    x = ka.data.load_digits("train")
    y = ka.data.add_noise(x, sigma=0.2, seed=0)
    model = ka.AmbientDiffusion(
        network=ka.networks.UNet(image_shape=(8, 8, 1), base_channels=32,
                                 channel_multipliers=(1, 2)),
        sigma_n=0.2, consistency_weight=30.0, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        2e-3, decay_steps=20 * len(y) // 64, alpha=0.05)))
    model.fit(y, batch_size=64, epochs=20)
    samples = model.generate(64, seed=0)                      # to sigma = 0
    smooth = model.generate(64, seed=0, mode="truncated")     # D(x; sigma_n)
    x0_hat = model.denoise(y[:8], 0.2)                        # E[x0 | x_0.2]
    model.save("ambient.keras")
    model = ka.models.load_model("ambient.keras")
    ```

    References:
        - Daras, Dimakis, Daskalakis. "Consistent Diffusion Meets Tweedie:
          Training Exact Ambient Diffusion Models with Noisy Data". ICML 2024,
          arXiv:2404.10177.
        - Karras, Aittala, Aila, Laine. "Elucidating the Design Space of
          Diffusion-Based Generative Models" (EDM). NeurIPS 2022,
          arXiv:2206.00364.
        - Karras, Laine, Aittala, Hellsten, Lehtinen, Aila. "Analyzing and
          Improving the Image Quality of StyleGAN". CVPR 2020, arXiv:1912.04958
          (lazy regularization: `consistency_interval`).
        - docs/method.md (M1-M5, in this repository).
    """

    def __init__(self, network, sigma_n=0.0, sigma_data=0.5, consistency_weight=30.0,
                 ambient_loss=None, consistency_loss=None, ema_decay=0.999,
                 sigma_min=0.002, sigma_max=80.0, data_shape=None, seed=None,
                 lora_rank=None, lora_alpha=None, consistency_target="online",
                 consistency_start_step=0, consistency_interval=3, **kwargs):
        super().__init__(**kwargs)
        self.sigma_min = check_scalar("sigma_min", sigma_min, minimum=0, min_inclusive=False)
        self.sigma_max = check_scalar("sigma_max", sigma_max, minimum=self.sigma_min, min_inclusive=False)
        self.sigma_n = float(check_noise_levels("sigma_n", _scalar("sigma_n", sigma_n), sigma_max=self.sigma_max))
        self.sigma_data = check_scalar("sigma_data", sigma_data, minimum=0, min_inclusive=False)
        self.consistency_weight = check_scalar("consistency_weight", consistency_weight, minimum=0.0)
        self.ema_decay = check_scalar("ema_decay", ema_decay, minimum=0.0, maximum=1.0,
                                      max_inclusive=False, allow_none=True)
        if ambient_loss is None:
            ambient_loss = AmbientLoss(sigma_data=self.sigma_data)
        if not isinstance(ambient_loss, AmbientLoss):
            raise TypeError(f"`ambient_loss` must be a ka.losses.AmbientLoss. Received: ambient_loss={ambient_loss!r}")
        if consistency_loss is None:
            consistency_loss = ConsistencyLoss(sigma_min=self.sigma_min)
        if not isinstance(consistency_loss, ConsistencyLoss):
            raise TypeError(
                f"`consistency_loss` must be a ka.losses.ConsistencyLoss. Received: consistency_loss={consistency_loss!r}"
            )
        if abs(ambient_loss.sigma_data - self.sigma_data) > 1e-6 * self.sigma_data:
            warnings.warn(
                f"ambient_loss.sigma_data={ambient_loss.sigma_data} differs from the model's "
                f"sigma_data={self.sigma_data}; the loss weighting uses the former. Pass "
                "AmbientLoss(sigma_data=...) with the same value unless this is intended.",
                stacklevel=2,
            )
        self.consistency_target = check_choice("consistency_target", consistency_target, TARGETS)
        if self.consistency_target == "ema" and self.ema_decay is None:
            raise ValueError(
                "consistency_target='ema' needs the EMA network: set `ema_decay`. "
                "Received: consistency_target='ema', ema_decay=None"
            )
        self.consistency_start_step = check_int("consistency_start_step", consistency_start_step,
                                                minimum=0)
        self.consistency_interval = check_int("consistency_interval", consistency_interval, minimum=1)
        # Which train function is running (`make_train_function`): None (every step
        # runs the consistency loss), True (this step does), False (this step does not).
        self._consistency_phase = None
        self._steps_started = None
        self._ema_pairs = None  # `_update_ema`'s (source, EMA) weight pairs, per fit call
        self.ambient_loss = ambient_loss
        self.consistency_loss = consistency_loss
        self.seed = seed
        # Saved with the weights, so resumed training continues the noise stream.
        self.seed_generator = SavedSeedGenerator(seed, name="training_seed")

        # A raw network F is wrapped in EDM's preconditioning (M2); a prebuilt
        # ka.layers.Denoiser (VPDenoiser, FlowDenoiser: docs/method.md §6) is used as is.
        self._custom_denoiser = isinstance(network, Denoiser)
        if self._custom_denoiser:
            self.denoiser = network
        else:
            self.denoiser = EDMDenoiser(network, sigma_data=self.sigma_data, name="denoiser")
        self.ema_denoiser = None
        if self.ema_decay is not None:
            clone = _copy_network(network)
            if not self._custom_denoiser:
                clone = EDMDenoiser(clone, sigma_data=self.sigma_data, name="ema_denoiser")
            self.ema_denoiser = clone
            self.ema_denoiser.trainable = False
        self.ema_step = keras.Variable(0, dtype="int32", trainable=False, name="ema_step")

        # LoRA (docs/method.md §6 fine-tuning): adapters on the Dense/EinsumDense layers
        # of the network and of its EMA copy; everything else is frozen.
        self.lora_rank = check_int("lora_rank", lora_rank, minimum=1, allow_none=True)
        self.lora_alpha = check_scalar("lora_alpha", lora_alpha, minimum=0, min_inclusive=False,
                                       allow_none=True)
        if self.lora_rank is not None:
            for den in (self.denoiser, self.ema_denoiser):
                if den is not None:
                    enable_lora(den.network, self.lora_rank, lora_alpha=self.lora_alpha,
                                allow_enabled=True)

        if data_shape is not None:
            data_shape = check_int_tuple("data_shape", data_shape, minimum=1)
        raw = self.denoiser.network
        if getattr(raw, "inputs", None) and len(raw.inputs) and not isinstance(raw.inputs, dict):
            inferred = tuple(raw.inputs[0].shape[1:])
            if any(d is None for d in inferred):
                inferred = None
            if data_shape is None:
                data_shape = inferred
            elif inferred is not None and tuple(int(d) for d in data_shape) != tuple(int(d) for d in inferred):
                raise ValueError(
                    f"`data_shape` contradicts the network, whose input `x` has shape "
                    f"{inferred}. Received: data_shape={tuple(data_shape)}"
                )
        self.data_shape = None if data_shape is None else tuple(int(d) for d in data_shape)
        if raw.built and self.ema_denoiser is not None:
            self.reset_ema()

        self.ambient_loss_tracker = keras.metrics.Mean(name="ambient_loss")
        self.consistency_loss_tracker = keras.metrics.Mean(name="consistency_loss")
        self.bad_samples_tracker = keras.metrics.Sum(name="bad_samples")

    # ------------------------------------------------------------------ build
    @property
    def network(self):
        """The raw network `F` being trained."""
        return self.denoiser.network

    def build(self, input_shape=None):
        if self.data_shape is None:
            shape = input_shape
            if isinstance(shape, dict):
                shape = shape.get("data", shape.get("input_shape"))
            while isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
                shape = shape[0]
            if shape is None:
                raise ValueError(
                    "Cannot infer the data shape: pass `data_shape` to AmbientDiffusion. "
                    f"Received: input_shape={input_shape}"
                )
            self.data_shape = tuple(int(d) for d in shape[1:])
        for den in (self.denoiser, self.ema_denoiser):
            if den is not None and not den.network.built:
                den([ops.zeros((1,) + self.data_shape), ops.ones((1,))])
            if den is not None:
                den.built = True
        self.built = True

    def reset_ema(self):
        """Copies the current weights into the EMA weights (e.g. after loading
        pretrained weights into `model.network`)."""
        if self.ema_denoiser is None:
            return
        src, dst = self.denoiser.weights, self.ema_denoiser.weights
        if len(src) != len(dst):
            raise ValueError(
                "The EMA copy of the network has a different number of weights "
                f"({len(dst)}) than the network ({len(src)}); is the network's "
                "get_config complete?"
            )
        for s, d in zip(src, dst):
            # A host copy: on JAX, assigning the array itself would make two
            # variables share one buffer, which jit's buffer donation rejects.
            d.assign(ops.convert_to_numpy(s))
        self.ema_step.assign(0)
        self._ema_pairs = None

    def call(self, inputs, training=None):
        """`model(y)` / `model.predict(y)`: `D(y; sigma_n)`, the posterior mean
        `E[x0 | y]` of noisy data at its own level (EMA weights when they exist).

        `inputs` is a batch in any of `fit`'s formats (per-sample `sigma_n` and a
        condition are used when given). Inside `fit` (`training=True`) Keras
        calls the model before the loss; the losses call the denoiser
        themselves, so the call returns its input there at no cost.
        """
        data, sigma_n, condition, _ = batches.unpack(inputs)
        if training:
            return data
        data = ops.cast(data, "float32")
        self._check_batch_shape(data)  # validation batches and predict reach the network here
        denoiser = self._denoiser_for(use_ema=True)
        return denoiser(denoiser_inputs(data, self._batch_sigma_n(data, sigma_n), condition), training=False)

    # ------------------------------------------------------------- training
    def train_step(self, *args):
        # Keras unpacks a flat 3-tuple as (x, y, sample_weight): rewrap it first
        # (utils/batches.py). The EMA is updated after the optimizer step.
        args = args[:-1] + (batches.as_keras_batch(args[-1]),)
        return train_step_then(self, super().train_step, args, self._update_ema)

    def test_step(self, *args):
        args = args[:-1] + (batches.as_keras_batch(args[-1]),)
        return super().test_step(*args)

    def make_train_function(self, force=False):
        """Keras's train function; two of them when some steps skip the consistency loss.

        With `consistency_start_step` or `consistency_interval > 1`, steps
        without the consistency loss run a train function compiled without its
        reverse chains (so they cost what an ambient-only step costs) and the
        others one compiled with them; a Python step count picks the function
        of each call.
        """
        if self.train_function is not None and not force:
            return self.train_function
        self._consistency_phase = None
        if not self._has_phases():
            super().make_train_function(force=True)
            return self.train_function
        functions = train_functions_by_phase(self, super().make_train_function, (True, False))

        def train_function(*args):
            if self._steps_started is None:  # `train_on_batch` (`fit` reads it in _ReadStepCount)
                self._read_step_count()
            self._consistency_phase = self._runs_consistency(self._steps_started)
            try:
                logs = functions[self._consistency_phase](*args)
            finally:
                self._consistency_phase = None
            # Only a call that ran counts (not one that ends a dataset with StopIteration);
            # a short last call of `steps_per_execution` is set right by the next epoch's read.
            self._steps_started += self.steps_per_execution
            return logs

        self.train_function = train_function
        return train_function

    def _has_phases(self):
        """Whether some training steps skip the consistency loss (two train functions)."""
        return self.consistency_weight != 0 and (self.consistency_interval > 1
                                                 or self.consistency_start_step > 0)

    def _read_step_count(self):
        self._steps_started = int(ops.convert_to_numpy(self.ema_step))

    def _runs_consistency(self, step):
        """Whether the call whose first step is `step` (counted from 0) runs the consistency loss."""
        per_call = self.steps_per_execution
        if step + per_call <= self.consistency_start_step:
            return False  # all of the call's steps come before the start
        calls = max(step - self.consistency_start_step, 0) // per_call
        return calls % self.consistency_interval == 0

    def _batch_sigma_n(self, data, sigma_n):
        batch = ops.shape(data)[0]
        if sigma_n is None:
            return ops.full((batch,), self.sigma_n, dtype="float32")
        sigma_n = ops.cast(sigma_n, "float32")
        if len(sigma_n.shape) == 0:
            return ops.broadcast_to(sigma_n, (batch,))
        sigma_n = ops.reshape(sigma_n, (-1,))
        if sigma_n.shape[0] is not None and data.shape[0] is not None and sigma_n.shape[0] != data.shape[0]:
            raise ValueError(
                f"A per-sample sigma_n must have one value per sample. Received: "
                f"sigma_n with {sigma_n.shape[0]} values for a batch of {data.shape[0]}"
            )
        return sigma_n

    def _check_batch_shape(self, data):
        if self.data_shape is not None and not _shape_matches(data.shape[1:], self.data_shape):
            raise ValueError(
                f"The data must have samples of shape {self.data_shape} (the network's "
                f"input). Received: a batch of shape {tuple(data.shape)}"
            )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        data, sigma_n, condition, batch_weight = batches.unpack(x, y, sample_weight)
        data = ops.cast(data, "float32")
        self._check_batch_shape(data)
        self._check_condition_given(condition)
        sigma_n = self._batch_sigma_n(data, sigma_n)

        # Bad samples (NaN/Inf data; sigma_n NaN, negative or >= sigma_max; a class
        # label outside [0, num_classes)) are left out of the update and counted
        # in the `bad_samples` metric; TerminateOnNonFinite stops on it.
        axes = tuple(range(1, len(data.shape)))
        good = (ops.all(ops.isfinite(data), axis=axes) & ops.isfinite(sigma_n)
                & (sigma_n >= 0) & (sigma_n < self.sigma_max))
        condition, good = self._mask_labels(condition, good)
        data = ops.where(ops.reshape(good, (-1,) + (1,) * len(axes)), data, 0.0)
        sigma_n = ops.where(good, sigma_n, 0.0)
        weight = ops.cast(good, "float32")
        if batch_weight is not None:
            weight = weight * ops.reshape(ops.cast(batch_weight, "float32"), (-1,))
        norm = ops.maximum(ops.sum(weight), 1e-12)

        amb, cons = self._loss_terms(data, sigma_n, condition, training)
        ambient = ops.sum(ops.where(weight > 0, amb.loss, 0.0) * weight) / norm
        total = ambient
        self.ambient_loss_tracker.update_state(ambient)
        if cons is not None:
            # The loss covers the first k samples of the batch (its sub-batch).
            k = ops.shape(cons)[0]
            weight_c = weight[:k]
            consistency = (ops.sum(ops.where(weight_c > 0, cons, 0.0) * weight_c)
                           / ops.maximum(ops.sum(weight_c), 1e-12))
            lam = self.consistency_weight
            if training and self._consistency_phase:
                lam = lam * self.consistency_interval  # lazy: one step in `consistency_interval`
            if self.consistency_start_step > 0 and training:
                # `ema_step` counts training steps (a model variable, so it is part of
                # the jitted state on every backend; the optimizer's is not on JAX).
                started = ops.greater_equal(ops.convert_to_tensor(self.ema_step), self.consistency_start_step)
                lam = lam * ops.cast(started, "float32")
            total = total + lam * consistency
            self.consistency_loss_tracker.update_state(consistency)
        self.bad_samples_tracker.update_state(ops.sum(1.0 - ops.cast(good, "float32")))
        return scale_loss_for_replicas(total)  # / replicas under tf.distribute

    def _loss_terms(self, data, sigma_n, condition, training, seed=None):
        """Per-sample ambient loss (an `AmbientLossOutput`) and consistency loss (or None).

        With the consistency loss started at the data (its default), its
        reverse chains run first (no gradient) and the network is then called
        once on `[x_t; x_s]`: the ambient loss's `D(x_t; sigma_t)` and the
        consistency loss's `D(x_s; s)` in one evaluation with gradient, the
        same function as two calls at the cost of one call's per-call overhead
        (Keras's layer machinery on torch). The random draws come in the same
        order as with separate calls.
        """
        seed = self.seed_generator if seed is None else seed
        teacher = self.ema_denoiser if self.consistency_target == "ema" else None
        skip = self.consistency_weight == 0 or (training and self._consistency_phase is False)
        if skip or self.consistency_loss.start == "ambient":
            amb = self.ambient_loss(self.denoiser, data, sigma_n, condition=condition, seed=seed,
                                    training=training)
            if skip:
                return amb, None
            return amb, self.consistency_loss(self.denoiser, data, sigma_n, ambient_output=amb,
                                              condition=condition, seed=seed, training=training,
                                              target_denoiser=teacher)
        x_t, sigma_t = self.ambient_loss.noised_inputs(data, sigma_n, seed=seed, denoiser=self.denoiser)
        chain = self.consistency_loss.reverse_chain(self.denoiser, data, sigma_n, condition=condition,
                                                    seed=seed, training=training,
                                                    target_denoiser=teacher)
        x = ops.concatenate([x_t, chain.x_s], axis=0)
        sigma = ops.concatenate([sigma_t, chain.s], axis=0)
        if condition is not None:
            condition = keras.tree.map_structure(lambda a, b: ops.concatenate([a, b], axis=0),
                                                 condition, chain.condition)
        # Compiled where the backend allows it (utils/backend_fast_paths.py; torch: a
        # checked trace with gradients in training), as the ambient loss alone is.
        call = backend_fast_paths.training_function(self.denoiser, _call_denoiser, owner=self,
                                                    training=training)
        (denoised,) = call(x, sigma, condition=condition)
        batch = ops.shape(x_t)[0]
        amb = self.ambient_loss.loss_from_denoised(denoised[:batch], data, sigma_n, x_t, sigma_t)
        return amb, self.consistency_loss.loss_from_denoised(denoised[batch:], chain)

    def _update_ema(self):
        """One EMA step; `train_step` runs it after the optimizer step."""
        if self.ema_denoiser is None:
            self.ema_step.assign_add(1)  # counts training steps (consistency_start_step)
            return
        step = ops.cast(self.ema_step, "float32")
        decay = ops.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))
        decay = ops.where(step == 0, 0.0, decay)
        averaged, copied, fused_update = self._ema_weight_pairs()
        # One fused update where the backend has it (utils/backend_fast_paths.py).
        if fused_update is None or not fused_update(decay):
            for src, dst in averaged:
                value = ops.stop_gradient(ops.cast(src, dst.dtype))
                dst.assign(decay * dst + (1.0 - decay) * value)
        for src, dst in copied:
            dst.assign(ops.stop_gradient(ops.cast(src, dst.dtype)))
        self.ema_step.assign_add(1)

    def _ema_weight_pairs(self):
        """`(averaged, copied, fused_update)`: lists of `(weight, EMA weight)` pairs (trainable
        weights are averaged, the others copied) and the backend's fused update of the
        averaged ones (`backend_fast_paths.ema_updater`, or None). Collected once per `fit` /
        `train_on_batch` call (on torch the recursive `weights` walk and the variables'
        `value` reads cost more than the fused update), so `trainable` flags are read when
        a call starts."""
        if self._ema_pairs is None:
            averaged, copied = [], []
            for src, dst in zip(self.denoiser.weights, self.ema_denoiser.weights):
                if self.lora_rank is not None and not src.trainable:
                    continue  # frozen pretrained weights: copied once by reset_ema
                (averaged if src.trainable else copied).append((src, dst))
            # Not tracked as the model's state (Keras would take the lists for new variables).
            fused_update = backend_fast_paths.ema_updater([d for _, d in averaged],
                                                          [s for s, _ in averaged])
            object.__setattr__(self, "_ema_pairs", (averaged, copied, fused_update))
        return self._ema_pairs

    # ---------------------------------------------------------- input checks
    def _num_classes(self):
        """`num_classes` of a built-in class-conditional network, else None."""
        return getattr(self.network, "num_classes", None)

    def _takes_condition(self):
        """True / False when the network's inputs say so, None when unknown."""
        num_classes = self._num_classes()
        if num_classes is not None or getattr(self.network, "condition_dim", None) is not None:
            return True
        inputs = getattr(self.network, "inputs", None)
        if isinstance(inputs, (list, tuple)) and len(inputs) in (2, 3) and not self._custom_denoiser:
            return len(inputs) == 3
        if hasattr(self.network, "num_classes"):  # built-in network without a condition
            return False
        return None

    def _check_condition_given(self, condition):
        takes = self._takes_condition()
        if takes is True and condition is None:
            raise ValueError(
                "The network is conditional: give a `condition` (class labels or "
                "condition vectors), e.g. a dict batch {'data': y, 'sigma_n': s, "
                "'condition': labels}. Received: condition=None"
            )
        if takes is False and condition is not None:
            raise ValueError(
                "The network takes no condition (build it with `num_classes` or "
                "`condition_dim` for a conditional model). Received: a condition "
                f"of type {type(condition).__name__}"
            )

    def _mask_labels(self, condition, good):
        """Class labels outside `[0, num_classes)` mark their samples bad (and are
        replaced by 0, so no backend gathers out of range)."""
        num_classes = self._num_classes()
        if num_classes is None or condition is None or not hasattr(condition, "shape"):
            return condition, good
        if "int" not in str(getattr(condition, "dtype", "")):
            return condition, good
        labels = ops.reshape(condition, (-1,))
        valid = (labels >= 0) & (labels < num_classes)
        return ops.reshape(ops.where(valid, labels, 0), ops.shape(condition)), good & valid

    def _check_labels(self, condition, name="condition"):
        """NumPy check of class labels against the network's `num_classes`."""
        num_classes = self._num_classes()
        if num_classes is None or condition is None or not _is_array(condition):
            return
        labels = np.asarray(condition)
        if labels.size and (not np.issubdtype(labels.dtype, np.integer)
                            or labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)] if np.issubdtype(labels.dtype, np.number) else labels
            raise ValueError(
                f"`{name}` must hold integer class labels in [0, {num_classes}) (the "
                f"network's num_classes). Received: {name} of dtype {labels.dtype} with "
                f"values such as {np.unique(bad)[:5].tolist()}"
            )

    def _check_sample_condition(self, condition, num_samples):
        """The condition of `generate` / `denoise`: given iff the network takes one,
        one entry per sample, labels in range."""
        self._check_condition_given(condition)
        if condition is None:
            return
        if condition_length(condition) != num_samples:
            raise ValueError(
                f"`condition` must have one entry per sample ({num_samples}). "
                f"Received: condition with {condition_length(condition)} entries"
            )
        self._check_labels(condition)

    def _standardize_inputs(self, x, y, name="x"):
        """Checks NumPy-like `fit`/`evaluate` inputs (datasets are checked batch by
        batch in `compute_loss`) and returns `(x, y)` with a scalar or list
        `sigma_n` turned into one level per sample."""
        if not (_is_array(x) or isinstance(x, (dict, tuple, list))):
            return x, y
        if isinstance(x, list) and x and not _is_structure(x[0]) and not _is_array(x[0]):
            raise TypeError(
                f"`{name}` must be an array (or a tuple / dict batch of arrays). Received: "
                f"a Python list of {len(x)} {type(x[0]).__name__}; pass np.asarray({name})"
            )
        data, sigma_n, condition, weight = batches.unpack(x, y)
        if isinstance(data, list):
            raise TypeError(
                f"The data of `{name}` must be an array. Received: a Python list of "
                f"{len(data)} elements; pass np.asarray(...)"
            )
        if not _is_array(data):
            return x, y
        data = np.asarray(data)
        if data.ndim < 2 or data.shape[0] == 0:
            raise ValueError(
                f"`{name}` must hold at least one sample of shape {self.data_shape or '(...)'}. "
                f"Received: {name} with shape {data.shape}"
            )
        if not np.issubdtype(data.dtype, np.floating):
            raise TypeError(
                f"`{name}` must be floating-point data on the scale of sigma_data "
                f"(images: x / 127.5 - 1 for [-1, 1], the scale sigma_data=0.5 is "
                f"meant for). Received: {name} of dtype {data.dtype}"
            )
        check_finite_array(name, data)
        if self.data_shape is not None and tuple(data.shape[1:]) != self.data_shape:
            raise ValueError(
                f"The data must have samples of shape {self.data_shape} (the network's "
                f"input). Received: {name} with shape {data.shape}"
            )
        new_sigma = None
        if sigma_n is not None and not hasattr(sigma_n, "element_spec"):
            if isinstance(sigma_n, bool) or not (_is_array(sigma_n) or isinstance(sigma_n, (list, tuple, int, float))):
                raise TypeError(
                    f"Per-sample `sigma_n` must be a number or an array of numbers. "
                    f"Received: sigma_n of type {type(sigma_n).__name__}"
                )
            levels = np.asarray(sigma_n, dtype="float32")
            if levels.ndim == 0:
                levels = np.full((len(data),), float(levels), dtype="float32")
            check_noise_levels("sigma_n", levels, sigma_max=self.sigma_max, length=len(data))
            new_sigma = levels
        self._check_condition_given(condition)
        self._check_labels(condition)
        if weight is not None and _is_array(weight):
            weight = np.asarray(weight)
            if weight.shape != (len(data),) or not np.all(np.isfinite(weight)) or np.any(weight < 0):
                raise ValueError(
                    f"`sample_weight` must hold one finite, non-negative weight per sample "
                    f"({len(data)}). Received: sample_weight with shape {weight.shape}"
                )
        self._check_scale(data, self.sigma_n if new_sigma is None else new_sigma, name)
        if new_sigma is None or (_is_array(sigma_n) and not isinstance(sigma_n, (list, tuple))):
            return x, y
        # Rebuild the batch with the array of levels (a scalar / list sigma_n given).
        if y is not None:
            return x, new_sigma
        batch = {"data": data, "sigma_n": new_sigma}
        if condition is not None:
            batch["condition"] = condition
        if weight is not None:
            batch["sample_weight"] = weight
        return batch, None

    def _check_scale(self, data, sigma_n, name):
        """Refuses data far off the scale of `sigma_data`, warns when it is off."""
        noise_var = float(np.mean(np.square(np.asarray(sigma_n, "float64"))))
        clean_std = float(np.sqrt(max(np.var(data, dtype="float64") - noise_var, 0.0)))
        ratio = clean_std / self.sigma_data
        advice = (f"Scale the data (images: x / 127.5 - 1 for [-1, 1]) or set sigma_data to "
                  f"the clean data's std, e.g. sigma_data=ka.utils.suggest_sigma_data(y, sigma_n) "
                  f"(here ~{max(clean_std, 1e-6):.3g})")
        if ratio > 10.0:
            raise ValueError(
                f"`{name}` is far off the scale the model expects: its clean std is about "
                f"{clean_std:.3g} but sigma_data={self.sigma_data} (and sigma_n is on the "
                f"same scale). {advice}. Received: {name} with values in "
                f"[{float(data.min()):.3g}, {float(data.max()):.3g}]"
            )
        if ratio > 3.0 or (0 < ratio < 1.0 / 3.0):
            warnings.warn(
                f"The clean std of `{name}` is about {clean_std:.3g}, {ratio:.2g}x "
                f"sigma_data={self.sigma_data}. {advice}.",
                stacklevel=3,
            )

    # ------------------------------------------------------------- fit / evaluate
    def fit(self, x=None, y=None, *args, **kwargs):
        """Trains with Keras's `fit` (see the class docstring for data formats).

        NumPy inputs and NumPy `validation_data` are checked before training
        (NaN/Inf, dtype and scale against `sigma_data`, shapes, `sigma_n` in
        `[0, sigma_max)`, class labels, the condition); dataset batches are
        checked in the step (bad samples are left out and counted in the
        `bad_samples` metric). `sample_weight` is supported, `class_weight` is
        not (the targets are noise levels). A `TerminateOnNonFinite` callback
        is added unless one is given.
        """
        kw = _bind_keras_args(keras.Model.fit, x, y, args, kwargs)
        if kw.get("class_weight") is not None:
            raise ValueError(
                "`class_weight` is not supported: AmbientDiffusion's targets are noise "
                "levels, not classes; give `sample_weight` (or a dict batch key "
                f"'sample_weight'). Received: class_weight={kw['class_weight']!r}"
            )
        kw.pop("class_weight", None)
        self._ema_pairs = None
        x, y = batches.fold_sample_weight(kw.pop("x"), kw.pop("y"), kw.pop("sample_weight", None))
        x, y = self._standardize_inputs(x, y, "x")
        val = kw.get("validation_data")
        if isinstance(val, (list, tuple)) and val and all(_is_array(v) or v is None for v in val):
            if not 1 <= len(val) <= 3:
                raise ValueError(
                    "`validation_data` must be (data,), (data, sigma_n) or (data, sigma_n, "
                    f"condition), a dict batch or a dataset. Received: a tuple of {len(val)} elements"
                )
            kw["validation_data"] = (self._standardize_inputs(tuple(val), None, "validation_data")[0],)
        elif _is_array(val) or isinstance(val, dict):
            kw["validation_data"] = (self._standardize_inputs(val, None, "validation_data")[0],)
        self._build_before_keras()
        callbacks = list(kw.pop("callbacks", None) or [])
        if not any(isinstance(c, TerminateOnNonFinite) for c in callbacks):
            callbacks.append(TerminateOnNonFinite())
        if self._has_phases():
            callbacks.append(_ReadStepCount())
        return super().fit(x, y, callbacks=callbacks, **kw)

    def compile_from_config(self, config):
        """Keras's `compile_from_config`, reading a torch-only optimizer class as the public one.

        On torch, Keras saves the optimizer under its torch-only class (module
        `keras.src.backend.torch.optimizers...`), which fails to train on JAX or
        TensorFlow; such an entry, also one nested in a wrapper's config (the
        inner optimizer of a `LossScaleOptimizer`, which `mixed_float16`
        compiles), is read as the public `keras.optimizers` class of the same
        name, which each backend maps to its own implementation, so a model
        saved on one backend goes on training on another.
        """
        if "optimizer" in config:
            config = dict(config, optimizer=_public_optimizer_classes(config["optimizer"]))
        return super().compile_from_config(config)

    def train_on_batch(self, *args, **kwargs):
        self._steps_started = None  # one step: the count is read from `ema_step` again
        self._ema_pairs = None
        return super().train_on_batch(*args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """Keras's `evaluate`, with `fit`'s data formats and checks."""
        kw = _bind_keras_args(keras.Model.evaluate, x, y, args, kwargs)
        x, y = batches.fold_sample_weight(kw.pop("x"), kw.pop("y"), kw.pop("sample_weight", None))
        x, y = self._standardize_inputs(x, y, "x")
        self._build_before_keras()
        return super().evaluate(x, y, **kw)

    def _build_before_keras(self):
        # Keras builds an unbuilt model by calling it on its first batch as Keras
        # unpacks it, before `train_step` could rewrap a (data, sigma_n, condition)
        # tuple; with a known data shape the model is built here instead.
        if not self.built and self.data_shape is not None:
            self.build()

    # ------------------------------------------------------------- sampling
    def _denoiser_for(self, use_ema):
        if use_ema and self.ema_denoiser is not None:
            return self.ema_denoiser
        return self.denoiser

    def _denoise_fn(self, use_ema, condition, pad_to=None):
        """`fn(x, sigma) -> D(x; sigma)` on backend tensors, compiled per backend.

        The network is called through `utils.backend_fast_paths.inference_call`
        (JAX: `jax.jit`; TensorFlow: `tf.function`; torch: a checked
        `torch.jit.trace`; otherwise the eager call), with no NumPy round trip
        between sampler steps. With `pad_to`, smaller batches are zero-padded
        to that size for the network call, so a partial last batch reuses the
        compiled function (compilation is per input shape).
        """
        net = self._denoiser_for(use_ema)
        if not self.built:
            self.build()
        call = backend_fast_paths.inference_call(net)
        padded = {}  # pad -> the condition as backend tensors

        def condition_for(pad):
            if condition is None:
                return None
            if pad not in padded:
                padded[pad] = keras.tree.map_structure(ops.convert_to_tensor,
                                                       pad_condition(condition, pad))
            return padded[pad]

        def denoise_fn(x, sigma):
            x = ops.convert_to_tensor(x, dtype="float32")
            n = int(ops.shape(x)[0])
            if np.ndim(sigma) == 0:
                sig = ops.full((n,), sigma, dtype="float32")
            else:
                sig = ops.reshape(ops.convert_to_tensor(sigma, dtype="float32"), (-1,))
            pad = 0 if pad_to is None else max(pad_to - n, 0)
            if pad:
                x = ops.concatenate([x, ops.zeros((pad,) + tuple(x.shape[1:]), "float32")])
                sig = ops.concatenate([sig, ops.ones((pad,), "float32")])
            out = call(x, sig, condition_for(pad))
            return out[:n] if pad else out

        return denoise_fn

    def denoise(self, x, sigma, condition=None, use_ema=True, batch_size=256):
        """The MMSE estimate `D(x; sigma) = E[x0 | x_sigma = x]` (one network call).

        Args:
            x: noisy inputs `(n, *data_shape)`.
            sigma: their noise level, a scalar or one per sample.
            condition: class labels / condition vectors, if the network takes them.
            use_ema: use the EMA weights (default) or the raw weights.
            batch_size: evaluation batch size.

        Returns:
            A float32 NumPy array like `x`.

        Example:
        ```python
        x0_hat = model.denoise(y_test, 0.2)
        ```
        """
        x = np.asarray(x, dtype="float32")
        if not self.built:
            self.build()
        if self.data_shape is not None and tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"`x` must have samples of shape {self.data_shape}. Received: x with shape {x.shape}"
            )
        check_finite_array("x", x)
        self._check_sample_condition(condition, len(x))
        sigma = check_noise_levels("sigma", sigma, length=len(x))
        sigma = np.broadcast_to(sigma, (len(x),)).astype("float32")
        batch_size = check_int("batch_size", batch_size, minimum=1)
        pad_to = batch_size if len(x) > batch_size else None
        outs = []
        for i in range(0, len(x), batch_size):
            cond = slice_condition(condition, i, i + batch_size)
            fn = self._denoise_fn(use_ema, cond, pad_to=pad_to)
            outs.append(np.asarray(ops.convert_to_numpy(fn(x[i:i + batch_size], sigma[i:i + batch_size])),
                                   dtype="float32"))
        return np.concatenate(outs, axis=0) if outs else x.copy()

    def generate(self, num_samples=None, *, num_steps=18, sampler="heun", mode="full",
                 sigma_n=None, x_start=None, sigma_start=None, add_noise=True,
                 condition=None, seed=None, batch_size=256, use_ema=True,
                 sigma_min=None, sigma_max=None, rho=7.0, verbose=0, clip_denoised=None,
                 **sampler_kwargs):
        """Samples with the reverse process (docs/method.md §5).

        Modes:
        - `"full"`: from `sigma_max` to 0; correct for a model trained with
          consistency (or on clean data).
        - `"truncated"`: down to `sigma_n`, then returns `D(x; sigma_n)`: the
          posterior mean `E[x0 | x_{sigma_n}]` (no residual noise, slightly
          smooth). Correct for a model trained with the ambient loss alone.
        - `"from_input"`: starts at level `sigma_start` from
          `x_start + sigma_start z` (or from `x_start` itself when
          `add_noise=False`) and runs to 0: denoising, posterior sampling,
          the memorization attack.

        Args:
            num_samples: number of samples (inferred from `x_start` in
                `"from_input"` mode).
            num_steps: levels of the EDM schedule (rho = `rho`).
            sampler: `"heun"` (EDM, 2nd order), `"euler"`, `"euler_ancestral"`
                (stochastic, repeated M5) or a function with the same signature.
            mode: `"full"`, `"truncated"` or `"from_input"`.
            sigma_n: end level of `"truncated"` (default: the model's).
            x_start, sigma_start, add_noise: the input of `"from_input"`.
            condition: class labels / condition vectors, one per sample.
            seed: int (or `SeedGenerator`): the same seed gives the same
                samples on the same backend.
            batch_size: samples per sampler run.
            use_ema: sample with the EMA weights (default).
            clip_denoised: `None` (default) or a `(low, high)` range, e.g.
                `(-1, 1)` for images in [-1, 1]: every denoiser output
                `D(x; sigma)` the sampler uses (and the final `D(x; sigma_n)`
                of `"truncated"`) is clipped to it, like diffusers'
                `clip_sample`. Clean data never leave their range, so an
                estimate of `E[x0 | x]` outside it is an error of `D`; clipping
                keeps that error out of the trajectory.
            sigma_min, sigma_max: schedule ends (default: the model's).
            rho: schedule curvature.
            verbose: show a progress bar.
            **sampler_kwargs: forwarded to the sampler (e.g. `s_churn`).

        Returns:
            A float32 NumPy array `(num_samples, *data_shape)`.

        Example:
        ```python
        x = model.generate(64, seed=0)
        x = model.generate(64, seed=0, mode="truncated")
        x = model.generate(x_start=x_train[:8], sigma_start=2.0, mode="from_input", seed=0)
        ```
        """
        check_choice("mode", mode, MODES)
        sample_fn = samplers_lib.get_sampler(sampler)
        if not self.built:
            self.build()
        if self.data_shape is None:
            raise ValueError("The model has no data shape yet: pass `data_shape` or fit it first.")
        sigma_min = self.sigma_min if sigma_min is None else sigma_min
        sigma_max = self.sigma_max if sigma_max is None else sigma_max
        num_steps = check_int("num_steps", num_steps, minimum=1)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        final_level = None

        if mode == "from_input":
            if x_start is None or sigma_start is None:
                raise ValueError(
                    "mode='from_input' needs `x_start` and `sigma_start`. Received: "
                    f"x_start={'None' if x_start is None else 'array'}, sigma_start={sigma_start}"
                )
            x_start = np.asarray(x_start, dtype="float32")
            if tuple(x_start.shape[1:]) != self.data_shape:
                raise ValueError(
                    f"`x_start` must have samples of shape {self.data_shape}. "
                    f"Received: x_start with shape {x_start.shape}"
                )
            check_finite_array("x_start", x_start)
            sigma_start = check_scalar("sigma_start", sigma_start, minimum=0, min_inclusive=False)
            if num_samples is not None and num_samples != len(x_start):
                raise ValueError(
                    f"`num_samples` must equal len(x_start)={len(x_start)}. Received: num_samples={num_samples}"
                )
            num_samples = len(x_start)
            if sigma_start > sigma_min:
                sigmas = samplers_lib.edm_sigmas(num_steps, sigma_min, sigma_start, rho)
            else:
                sigmas, final_level = None, sigma_start
        else:
            if num_samples is None:
                raise ValueError("`num_samples` is required. Received: num_samples=None")
            if mode == "truncated":
                if num_steps < 2:
                    raise ValueError(
                        "mode='truncated' needs num_steps >= 2 (levels from sigma_max down to "
                        f"sigma_n, then D(x; sigma_n)). Received: num_steps={num_steps}"
                    )
                level = self.sigma_n if sigma_n is None else sigma_n
                level = check_scalar("sigma_n", level, minimum=0.0)
                if level <= 0:
                    raise ValueError(
                        "mode='truncated' stops at sigma_n, which must be > 0 (use "
                        f"mode='full' for a model of clean data). Received: sigma_n={level}"
                    )
                if level >= sigma_max:
                    raise ValueError(f"`sigma_n` must be below sigma_max={sigma_max}. Received: sigma_n={level}")
                sigmas = samplers_lib.edm_sigmas(num_steps, level, sigma_max, rho, append_zero=False)
                final_level = level
            else:
                sigmas = samplers_lib.edm_sigmas(num_steps, sigma_min, sigma_max, rho)
        num_samples = check_int("num_samples", num_samples, minimum=1)
        self._check_sample_condition(condition, num_samples)
        clip_range = _check_clip_range(clip_denoised)

        seed_gen = seed if isinstance(seed, keras.random.SeedGenerator) else keras.random.SeedGenerator(seed)
        pad_to = batch_size if num_samples > batch_size else None
        outs = []
        for i in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - i)
            cond = slice_condition(condition, i, i + n)
            denoise_fn = self._denoise_fn(use_ema, cond, pad_to=pad_to)
            if clip_range is not None:
                denoise_fn = _clipped(denoise_fn, *clip_range)
            if mode == "from_input":
                x = ops.convert_to_tensor(x_start[i:i + n])
                if add_noise:
                    x = x + sigma_start * keras.random.normal(ops.shape(x), seed=seed_gen)
            else:
                x = float(sigmas[0]) * keras.random.normal((n,) + self.data_shape, seed=seed_gen)
            if sigmas is not None:
                x = samplers_lib.run_sampler(sample_fn, denoise_fn, x, sigmas, seed=seed_gen,
                                             verbose=verbose, **sampler_kwargs)
            if final_level is not None:
                x = denoise_fn(x, final_level)
            outs.append(np.asarray(ops.convert_to_numpy(x), dtype="float32"))
        return np.concatenate(outs, axis=0)

    # ---------------------------------------------------------- serialization
    def save(self, filepath, overwrite=True, **kwargs):
        """Saves the whole model to a native `.keras` file (legacy `.h5` is refused).

        Load it back with `keras_ambient.models.load_model` (or `keras.models.load_model`).
        """
        return super().save(check_save_path(filepath), overwrite=overwrite, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": dtype_policy_config(self),
            "network": keras.saving.serialize_keras_object(
                self.denoiser if self._custom_denoiser else self.network
            ),
            "sigma_n": self.sigma_n,
            "sigma_data": self.sigma_data,
            "consistency_weight": self.consistency_weight,
            "ambient_loss": keras.saving.serialize_keras_object(self.ambient_loss),
            "consistency_loss": keras.saving.serialize_keras_object(self.consistency_loss),
            "ema_decay": self.ema_decay,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "data_shape": self.data_shape,
            "seed": self.seed,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "consistency_target": self.consistency_target,
            "consistency_start_step": self.consistency_start_step,
            "consistency_interval": self.consistency_interval,
            VERSION_KEY: __version__,
        }

    @classmethod
    def from_config(cls, config):
        config = check_saved_config(cls, config)  # version stamp, unknown keys
        # Files from before 0.3.0 have no `consistency_interval`: they trained with the
        # consistency loss on every step, and go on so.
        config.setdefault("consistency_interval", 1)
        # Built under its saved dtype policy (files without one: the global policy), as
        # the user built it: the EMA copy and the wrapper too, and `compile_from_config`
        # wraps the optimizer in a LossScaleOptimizer again under mixed_float16.
        with saved_dtype_policy(config.pop("dtype", None)):
            for key in ("network", "ambient_loss", "consistency_loss"):
                if isinstance(config.get(key), dict):
                    config[key] = keras.saving.deserialize_keras_object(config[key])
            return cls(**config)


class _ReadStepCount(keras.callbacks.Callback):
    """Reads `ema_step` into the step count that picks the train function
    (`make_train_function`) at the first step of each epoch: after callbacks
    such as BackupAndRestore have restored the weights in `on_train_begin`,
    and before JAX's trainer takes the variables' values into its state for
    the epoch (Keras 3.15; it writes them back at the epoch's end)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model._steps_started = None

    def on_train_batch_begin(self, batch, logs=None):
        if self.model._steps_started is None:
            self.model._read_step_count()


def _public_optimizer_classes(entry):
    """A serialized optimizer with every backend-only optimizer class (module
    `keras.src.backend...`, at any depth) named by its public `keras.optimizers` class."""
    if isinstance(entry, (list, tuple)):
        return type(entry)(_public_optimizer_classes(e) for e in entry)
    if not isinstance(entry, dict):
        return entry
    entry = {k: _public_optimizer_classes(v) for k, v in entry.items()}
    if (str(entry.get("module", "")).startswith("keras.src.backend.")
            and hasattr(keras.optimizers, str(entry.get("class_name")))):
        entry["module"] = "keras.optimizers"
    return entry


def _check_clip_range(clip_denoised):
    """`None` or a `(low, high)` pair of finite numbers with `low < high`."""
    if clip_denoised is None:
        return None
    return check_range("clip_denoised", clip_denoised,
                       hint=", or None; e.g. (-1, 1) for images in [-1, 1]")


def _clipped(denoise_fn, low, high):
    """`denoise_fn` with its output clipped to `[low, high]`."""

    def fn(x, sigma):
        return ops.clip(denoise_fn(x, sigma), low, high)

    return fn


def _copy_network(network):
    """A fresh copy of `network` (for the EMA weights), rebuilt from its config."""
    try:
        return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(network))
    except Exception as e:
        raise ValueError(
            "The EMA copy of the network could not be made: AmbientDiffusion rebuilds the "
            "network from its config (as saving and loading do), which needs every custom "
            "layer or model class registered with @keras.saving.register_keras_serializable() "
            "and a `get_config` returning all of its `__init__` arguments; `Lambda` layers "
            "do not reload safely (write a small layer instead). Or pass `ema_decay=None` "
            f"to train without an EMA. Received: network {network.name!r} of type "
            f"{type(network).__name__} ({type(e).__name__}: {e})"
        ) from e


def _scalar(name, value):
    if np.ndim(value) != 0:
        raise ValueError(
            f"`{name}` of the model must be a scalar; give per-sample levels in the "
            f"data instead (fit((y, sigma_n)) or fit(y, sigma_n)). Received: {name} with shape {np.shape(value)}"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"`{name}` must be a number. Received: {name}={value!r}")
    return value


def _call_denoiser(denoiser, x, sigma, condition=None, training=True):
    """`(D([x, sigma(, condition)]),)`: the shared call, as a pure function for tracing."""
    return (denoiser(denoiser_inputs(x, sigma, condition), training=training),)
