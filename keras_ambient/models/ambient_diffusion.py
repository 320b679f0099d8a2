import warnings

import keras
import numpy as np
from keras import ops

from keras_ambient import samplers as samplers_lib
from keras_ambient.callbacks.terminate_on_non_finite import TerminateOnNonFinite
from keras_ambient.layers.denoiser import Denoiser
from keras_ambient.layers.edm_denoiser import EDMDenoiser
from keras_ambient.pretrained.lora import enable_lora
from keras_ambient.losses.ambient_loss import AmbientLoss
from keras_ambient.losses.consistency_loss import ConsistencyLoss
from keras_ambient.utils.structures import condition_length, pad_condition, slice_condition
from keras_ambient.utils.distribute import scale_loss_for_replicas
from keras_ambient.utils.seeding import SavedSeedGenerator
from keras_ambient.utils.versioning import VERSION_KEY, check_saved_config
from keras_ambient.version import __version__
from keras_ambient.utils.validation import (
    check_choice,
    check_finite_array,
    check_int,
    check_noise_levels,
    check_scalar,
)

MODES = ("full", "truncated", "from_input")
TARGETS = ("online", "ema")
_DATA_KEYS = ("data", "sigma_n", "condition")


def _is_array(v):
    """NumPy arrays and backend tensors (not datasets, loaders or generators)."""
    return hasattr(v, "shape") and hasattr(v, "dtype") and not hasattr(v, "element_spec")


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

    Data. `fit` accepts NumPy arrays, `tf.data`, `keras.utils.PyDataset` and
    torch `DataLoader` inputs, whose batches are either
    - `y` (every sample at the model's `sigma_n`),
    - `(y, sigma_n)` or `(y, sigma_n, condition)` tuples / `fit(y, sigma_n)`
      (per-sample levels; `0` marks a clean sample), or
    - a dict with keys `"data"`, `"sigma_n"` (optional), `"condition"` (optional).
    Each sample is trained only at `sigma_t > its own sigma_n`.
    Logged: `loss` (total), `ambient_loss`, `consistency_loss`. With
    `validation_data`, `val_ambient_loss` is M3 on held-out noisy data: an
    unbiased estimate (up to a constant) of the clean denoising error, the
    right criterion for early stopping.

    Calling the model (`model(y)`) returns the data unchanged so that `fit`
    stays cheap; use `denoise`, `generate` or the `denoiser` sub-model.

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
            Steps are counted by `ema_step` (`reset_ema` restarts it).
        ema_decay: decay of the weight EMA (`None` disables it). A warm-up
            `min(ema_decay, (1 + step) / (10 + step))` makes early averages
            follow the weights (EMA = weights at step 0).
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
    model.compile(optimizer=keras.optimizers.Adam(2e-4))
    model.fit(y, batch_size=64, epochs=20)
    samples = model.generate(64, seed=0)                      # to sigma = 0
    smooth = model.generate(64, seed=0, mode="truncated")     # D(x; sigma_n)
    x0_hat = model.denoise(y[:8], 0.2)                        # E[x0 | x_0.2]
    model.save("ambient.keras")
    model = keras.models.load_model("ambient.keras")
    ```
    """

    def __init__(self, network, sigma_n=0.0, sigma_data=0.5, consistency_weight=30.0,
                 ambient_loss=None, consistency_loss=None, ema_decay=0.999,
                 sigma_min=0.002, sigma_max=80.0, data_shape=None, seed=None,
                 lora_rank=None, lora_alpha=None, consistency_target="online",
                 consistency_start_step=0, **kwargs):
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
            clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(network))
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

        raw = self.denoiser.network
        if data_shape is None and getattr(raw, "inputs", None) and len(raw.inputs) and not isinstance(raw.inputs, dict):
            data_shape = tuple(raw.inputs[0].shape[1:])
            if any(d is None for d in data_shape):
                data_shape = None
        self.data_shape = None if data_shape is None else tuple(int(d) for d in data_shape)
        if raw.built and self.ema_denoiser is not None:
            self.reset_ema()

        self.ambient_loss_tracker = keras.metrics.Mean(name="ambient_loss")
        self.consistency_loss_tracker = keras.metrics.Mean(name="consistency_loss")

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

    def call(self, inputs, training=None):
        data, _, _ = self._unpack(inputs, None)
        return data

    # ------------------------------------------------------------- training
    def _unpack(self, x, y):
        sigma_n = condition = None
        if isinstance(x, dict):
            unknown = set(x) - set(_DATA_KEYS)
            if unknown or "data" not in x:
                raise ValueError(
                    f"A dict batch must have the key 'data' and optionally 'sigma_n', "
                    f"'condition'. Received: keys {sorted(x)}"
                )
            data, sigma_n, condition = x["data"], x.get("sigma_n"), x.get("condition")
        elif isinstance(x, (list, tuple)):
            if not 1 <= len(x) <= 3:
                raise ValueError(
                    "A tuple batch must be (data,), (data, sigma_n) or "
                    f"(data, sigma_n, condition). Received: a tuple of {len(x)} elements"
                )
            data = x[0]
            sigma_n = x[1] if len(x) > 1 else None
            condition = x[2] if len(x) > 2 else None
        else:
            data = x
        if y is not None:
            if sigma_n is not None:
                raise ValueError(
                    "Per-sample sigma_n was given twice: in the inputs and as `y`. "
                    "Received: both"
                )
            sigma_n = y
        return data, sigma_n, condition

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

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        data, sigma_n, condition = self._unpack(x, y)
        data = ops.cast(data, "float32")
        sigma_n = self._batch_sigma_n(data, sigma_n)

        # Samples with NaN/Inf (in data or sigma_n) are excluded from the update;
        # the reported loss becomes NaN so TerminateOnNonFinite stops training.
        axes = tuple(range(1, len(data.shape)))
        finite = ops.all(ops.isfinite(data), axis=axes) & ops.isfinite(sigma_n) & (sigma_n >= 0)
        data = ops.where(ops.reshape(finite, (-1,) + (1,) * len(axes)), data, 0.0)
        sigma_n = ops.where(finite, sigma_n, 0.0)
        weight = ops.cast(finite, "float32")
        if sample_weight is not None:
            weight = weight * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        norm = ops.maximum(ops.sum(weight), 1e-12)

        amb = self.ambient_loss(self.denoiser, data, sigma_n, condition=condition,
                                seed=self.seed_generator, training=training)
        ambient = ops.sum(ops.where(weight > 0, amb.loss, 0.0) * weight) / norm
        total = ambient
        self.ambient_loss_tracker.update_state(ambient)
        if self.consistency_weight > 0:
            teacher = self.ema_denoiser if self.consistency_target == "ema" else None
            cons = self.consistency_loss(self.denoiser, data, sigma_n, ambient_output=amb,
                                         condition=condition, seed=self.seed_generator,
                                         training=training, target_denoiser=teacher)
            # The loss covers the first k samples of the batch (its sub-batch).
            k = ops.shape(cons)[0]
            weight_c = weight[:k]
            consistency = (ops.sum(ops.where(weight_c > 0, cons, 0.0) * weight_c)
                           / ops.maximum(ops.sum(weight_c), 1e-12))
            lam = self.consistency_weight
            if self.consistency_start_step > 0 and training:
                # `ema_step` counts training steps (a model variable, so it is part of
                # the jitted state on every backend; the optimizer's is not on JAX).
                started = ops.greater_equal(ops.convert_to_tensor(self.ema_step), self.consistency_start_step)
                lam = lam * ops.cast(started, "float32")
            total = total + lam * consistency
            self.consistency_loss_tracker.update_state(consistency)
        flag = ops.where(ops.all(finite), 0.0, float("nan"))
        total = total + ops.stop_gradient(flag)
        if training:
            self._update_ema()
        return scale_loss_for_replicas(total)  # / replicas under tf.distribute

    def _update_ema(self):
        if self.ema_denoiser is None:
            self.ema_step.assign_add(1)  # counts training steps (consistency_start_step)
            return
        step = ops.cast(self.ema_step, "float32")
        decay = ops.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))
        decay = ops.where(step == 0, 0.0, decay)
        for src, dst in zip(self.denoiser.weights, self.ema_denoiser.weights):
            if self.lora_rank is not None and not src.trainable:
                continue  # frozen pretrained weights: copied once by reset_ema
            value = ops.stop_gradient(ops.cast(src, dst.dtype))
            if src.trainable:
                dst.assign(decay * dst + (1.0 - decay) * value)
            else:
                dst.assign(value)
        self.ema_step.assign_add(1)

    def fit(self, x=None, y=None, *args, **kwargs):
        """Trains with Keras's `fit` (see the class docstring for data formats).

        NumPy inputs are checked for NaN/Inf, for sigma_n values outside
        `[0, sigma_max)` and for per-sample sigma_n arrays whose length differs
        from the data. A `TerminateOnNonFinite` callback is added.
        """
        self._check_numpy_inputs(x, y)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if not any(isinstance(c, TerminateOnNonFinite) for c in callbacks):
            callbacks.append(TerminateOnNonFinite())
        return super().fit(x, y, *args, callbacks=callbacks, **kwargs)

    def _check_numpy_inputs(self, x, y):
        if not (_is_array(x) or isinstance(x, (dict, tuple, list))):
            return  # datasets and generators are checked batch by batch
        data, sigma_n, _ = self._unpack(x, y)
        if not _is_array(data):
            return
        data = np.asarray(data)
        check_finite_array("x", data)
        if self.data_shape is not None and tuple(data.shape[1:]) != self.data_shape:
            raise ValueError(
                f"The data must have samples of shape {self.data_shape} (the network's "
                f"input). Received: x with shape {data.shape}"
            )
        if sigma_n is not None and _is_array(sigma_n):
            check_noise_levels("sigma_n", np.asarray(sigma_n), sigma_max=self.sigma_max, length=len(data))

    # ------------------------------------------------------------- sampling
    def _denoiser_for(self, use_ema):
        if use_ema and self.ema_denoiser is not None:
            return self.ema_denoiser
        return self.denoiser

    def _denoise_fn(self, use_ema, condition, pad_to=None):
        """`fn(x, sigma) -> D(x; sigma)` compiled by Keras's predict machinery.

        With `pad_to`, smaller batches are zero-padded to that size for the
        network call, so a partial last batch reuses the compiled function
        (JAX compiles once per input shape).
        """
        net = self._denoiser_for(use_ema)
        if not self.built:
            self.build()

        def denoise_fn(x, sigma):
            x = ops.convert_to_numpy(x)
            n = x.shape[0]
            sig = np.full((n,), sigma, dtype="float32") if np.ndim(sigma) == 0 else np.asarray(sigma, "float32")
            cond = condition
            pad = 0 if pad_to is None else max(pad_to - n, 0)
            if pad:
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                sig = np.concatenate([sig, np.ones((pad,), "float32")])
                cond = pad_condition(cond, pad)
            inputs = [x, sig] + ([cond] if cond is not None else [])
            out = net.predict_on_batch(inputs)
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
        sigma = check_noise_levels("sigma", sigma, length=len(x))
        sigma = np.broadcast_to(sigma, (len(x),)).astype("float32")
        batch_size = check_int("batch_size", batch_size, minimum=1)
        pad_to = batch_size if len(x) > batch_size else None
        outs = []
        for i in range(0, len(x), batch_size):
            cond = slice_condition(condition, i, i + batch_size)
            fn = self._denoise_fn(use_ema, cond, pad_to=pad_to)
            outs.append(np.asarray(fn(x[i:i + batch_size], sigma[i:i + batch_size])))
        return np.concatenate(outs, axis=0) if outs else x.copy()

    def generate(self, num_samples=None, *, num_steps=18, sampler="heun", mode="full",
                 sigma_n=None, x_start=None, sigma_start=None, add_noise=True,
                 condition=None, seed=None, batch_size=256, use_ema=True,
                 sigma_min=None, sigma_max=None, rho=7.0, verbose=0, **sampler_kwargs):
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
        if condition is not None and condition_length(condition) != num_samples:
            raise ValueError(
                f"`condition` must have one entry per sample ({num_samples}). "
                f"Received: condition with {condition_length(condition)} entries"
            )

        seed_gen = seed if isinstance(seed, keras.random.SeedGenerator) else keras.random.SeedGenerator(seed)
        pad_to = batch_size if num_samples > batch_size else None
        outs = []
        for i in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - i)
            cond = slice_condition(condition, i, i + n)
            denoise_fn = self._denoise_fn(use_ema, cond, pad_to=pad_to)
            if mode == "from_input":
                x = ops.convert_to_tensor(x_start[i:i + n])
                if add_noise:
                    x = x + sigma_start * keras.random.normal(ops.shape(x), seed=seed_gen)
            else:
                x = float(sigmas[0]) * keras.random.normal((n,) + self.data_shape, seed=seed_gen)
            if sigmas is not None:
                kwargs = dict(sampler_kwargs)
                if sample_fn in (samplers_lib.sample_heun, samplers_lib.sample_euler_ancestral) or "seed" in kwargs:
                    kwargs.setdefault("seed", seed_gen)
                x = sample_fn(denoise_fn, x, sigmas, verbose=verbose, **kwargs)
            if final_level is not None:
                x = denoise_fn(x, final_level)
            outs.append(np.asarray(ops.convert_to_numpy(x), dtype="float32"))
        return np.concatenate(outs, axis=0)

    # ---------------------------------------------------------- serialization
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
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
            VERSION_KEY: __version__,
        }

    @classmethod
    def from_config(cls, config):
        config = check_saved_config(cls, config)  # version stamp, unknown keys
        for key in ("network", "ambient_loss", "consistency_loss"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _scalar(name, value):
    if np.ndim(value) != 0:
        raise ValueError(
            f"`{name}` of the model must be a scalar; give per-sample levels in the "
            f"data instead (fit((y, sigma_n)) or fit(y, sigma_n)). Received: {name} with shape {np.shape(value)}"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"`{name}` must be a number. Received: {name}={value!r}")
    return value
