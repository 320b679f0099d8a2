import math

import keras
import numpy as np


class TerminateOnNonFinite(keras.callbacks.Callback):
    """Stops training with a clear error as soon as the loss or a weight is NaN/Inf.

    `ka.AmbientDiffusion.fit` adds it automatically. The model excludes
    non-finite samples from the update and flags the batch by making the
    reported `loss` NaN while `ambient_loss` stays finite, so the error can say
    whether the data or the optimisation is at fault. The messages name the
    epoch, the batch and the training step (the optimizer's iteration count),
    the last finite loss, and, for a divergence, the usual causes with their
    current values (learning rate, `consistency_weight`).

    The loss is checked after every batch (free: Keras computes it anyway). The
    weights are checked every `weights_check_freq` batches and at the end of
    every epoch: one `isfinite` reduction per weight, which also catches a
    divergence whose loss stayed finite (e.g. a NaN in a weight the loss of
    that step did not touch, or in the EMA copy).

    Args:
        weights_check_freq: batches between weight checks (`None` or 0: only
            at the end of each epoch).

    Example:
    ```python
    model.fit(dataset, epochs=10, callbacks=[ka.callbacks.TerminateOnNonFinite()])
    ```
    """

    def __init__(self, weights_check_freq=100):
        super().__init__()
        if weights_check_freq is not None and (
            isinstance(weights_check_freq, bool)
            or not isinstance(weights_check_freq, (int, np.integer))
            or weights_check_freq < 0
        ):
            raise ValueError(
                "`weights_check_freq` must be a non-negative integer or None. "
                f"Received: weights_check_freq={weights_check_freq!r}"
            )
        self.weights_check_freq = weights_check_freq or 0
        self._epoch = 0
        self._batches = 0
        self._last_finite = None

    def on_train_begin(self, logs=None):
        self._batches = 0
        self._last_finite = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    # ------------------------------------------------------------ context
    def _step(self):
        """The optimizer's iteration count (the global training step)."""
        model = self.model
        optimizer = getattr(model, "optimizer", None) if model is not None else None
        if optimizer is not None and getattr(optimizer, "built", False):
            try:
                return int(np.asarray(keras.ops.convert_to_numpy(optimizer.iterations)))
            except Exception:  # pragma: no cover - defensive
                pass
        return self._batches

    def _where(self, batch):
        where = f"epoch {self._epoch + 1}"
        if batch is not None:
            where += f", batch {batch + 1}"
        return where + f" (training step {self._step()})"

    def _causes(self):
        model = self.model
        lr = cw = None
        optimizer = getattr(model, "optimizer", None) if model is not None else None
        if optimizer is not None:
            try:
                lr = float(
                    np.asarray(keras.ops.convert_to_numpy(optimizer.learning_rate))
                )
            except Exception:  # pragma: no cover - schedules without a value
                lr = None
        sg_text = ""
        if model is not None:
            cw = getattr(model, "consistency_weight", None)
            cons = getattr(model, "consistency_loss", None)
            if (
                cons is not None
                and getattr(cons, "stop_gradient_target", True) is False
            ):
                sg_text = " or use ConsistencyLoss(stop_gradient_target=True)"
        lr_text = "the learning rate" + (f" (now {lr:.3g})" if lr is not None else "")
        cw_text = "the consistency_weight" + (
            f" (now {cw:g})" if cw is not None else ""
        )
        last = (
            ""
            if self._last_finite is None
            else f" The last finite loss was {self._last_finite[1]:.6g}, "
            f"{self._batches - self._last_finite[0]} batch(es) earlier."
        )
        return (
            f"{last} Usual causes: {lr_text} is too high (lower it or add warm-up / "
            f"gradient clipping, e.g. Adam(clipnorm=1.0)), or {cw_text} is too high "
            f"(lower it{sg_text}); also check that sigma_data matches the data's "
            "scale."
        )

    # ------------------------------------------------------------- checks
    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        logs = logs or {}
        loss = logs.get("loss")
        if loss is not None:
            loss = float(np.asarray(loss))
            if math.isfinite(loss):
                self._last_finite = (self._batches, loss)
            else:
                self._raise_for_loss(batch, loss, logs)
        if self.weights_check_freq and self._batches % self.weights_check_freq == 0:
            self._check_weights(batch)

    def on_epoch_end(self, epoch, logs=None):
        self._check_weights(None)

    def _raise_for_loss(self, batch, loss, logs):
        ambient = logs.get("ambient_loss")
        ambient = None if ambient is None else float(np.asarray(ambient))
        where = self._where(batch)
        if ambient is not None and math.isfinite(ambient):
            raise ValueError(
                f"Training stopped at {where}: the batch held NaN/Inf values in the "
                "data or in its sigma_n. Those samples were left out of the update, "
                "so the weights are intact; remove them from the dataset (numpy "
                "inputs are checked before training, datasets cannot be). "
                f"Received: a batch with non-finite values (loss={loss})"
            )
        parts = ", ".join(
            f"{k}={float(np.asarray(v)):.6g}"
            for k, v in logs.items()
            if k.endswith("loss") and np.ndim(v) == 0
        )
        raise FloatingPointError(
            f"Training diverged at {where}: the loss became {loss} ({parts})."
            + self._causes()
        )

    def _check_weights(self, batch):
        model = self.model
        if model is None:
            return
        weights = [v for v in model.weights if "float" in str(v.dtype)]  # not ema_step
        if not weights:
            return
        # One reduction per weight, one host transfer for all of them.
        finite = keras.ops.stack([keras.ops.all(keras.ops.isfinite(v)) for v in weights])
        finite = np.asarray(keras.ops.convert_to_numpy(finite))
        if finite.all():
            return
        v = weights[int(np.argmin(finite))]  # the first non-finite weight
        when = "at the end of" if batch is None else "during"
        raise FloatingPointError(
            f"Training diverged {when} {self._where(batch)}: the weight "
            f"'{v.path}'{_owner(model, v)} holds NaN/Inf values." + self._causes()
        )


def _owner(model, variable):
    """`" of 'ema_denoiser'"`: the top-level sub-layer holding `variable`."""
    try:
        layers = model._flatten_layers(include_self=False, recursive=False)
    except Exception:  # pragma: no cover - not a Keras layer
        return ""
    for layer in layers:
        if any(w is variable for w in layer.weights):
            return f" of '{layer.name}'"
    return ""
