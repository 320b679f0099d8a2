import math

import keras
import numpy as np


class TerminateOnNonFinite(keras.callbacks.Callback):
    """Stops training with a clear error on bad samples or a divergence.

    `ka.AmbientDiffusion.fit` adds it automatically. The model leaves bad
    samples (NaN/Inf data; `sigma_n` NaN, negative or `>= sigma_max`; class
    labels outside `[0, num_classes)`) out of the update and counts them in the
    `bad_samples` metric (`val_bad_samples` for validation data); the loss stays
    honest. This callback stops at the first bad sample (`bad_samples="raise"`,
    the weights are intact) or lets training go on without them
    (`bad_samples="skip"`: the count is in the logs and the `History`). A loss
    that becomes NaN/Inf is a divergence: it stops with a `FloatingPointError`
    naming the epoch, batch and training step, the last finite loss and the
    usual causes with their current values (learning rate,
    `consistency_weight`).

    The per-batch check only reads the logs Keras computes anyway, so the
    callback is `async_safe`: Keras keeps dispatching steps while it runs (the
    stop comes at most a batch later). The weights are checked at the end of
    every epoch (one `isfinite` reduction per weight, which also catches NaN in
    a weight the loss did not touch, e.g. in the EMA copy) and, with
    `weights_check_freq`, every that many batches (then the callback runs
    synchronously, and on JAX it syncs the training state to read them).

    Args:
        bad_samples: `"raise"` (default) or `"skip"`.
        weights_check_freq: batches between weight checks (`None` or 0: only
            at the end of each epoch).

    Example:
    ```python
    model.fit(dataset, epochs=10,
              callbacks=[ka.callbacks.TerminateOnNonFinite(bad_samples="skip")])
    ```
    """

    def __init__(self, bad_samples="raise", weights_check_freq=None):
        super().__init__()
        if bad_samples not in ("raise", "skip"):
            raise ValueError(
                "`bad_samples` must be 'raise' or 'skip'. "
                f"Received: bad_samples={bad_samples!r}"
            )
        if weights_check_freq is not None and (
            isinstance(weights_check_freq, bool)
            or not isinstance(weights_check_freq, (int, np.integer))
            or weights_check_freq < 0
        ):
            raise ValueError(
                "`weights_check_freq` must be a non-negative integer or None. "
                f"Received: weights_check_freq={weights_check_freq!r}"
            )
        self.bad_samples = bad_samples
        self.weights_check_freq = weights_check_freq or 0
        self._epoch = 0
        self._steps_done = 0  # batches of the earlier epochs of this `fit`
        self._epoch_batches = 0
        self._initial_step = 0
        self._last_finite = None

    @property
    def async_safe(self):
        # Read by Keras's CallbackList: without mid-epoch weight checks this
        # callback only reads `logs`, so steps may be dispatched ahead of it.
        return not self.weights_check_freq

    def on_train_begin(self, logs=None):
        self._steps_done = 0
        self._epoch_batches = 0
        self._last_finite = None
        self._initial_step = self._optimizer_iterations()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_batches = 0
        # Read here, in the main thread: the batch checks may run in Keras's
        # async worker, where touching `self.model` would sync (on JAX: read
        # donated) training state.
        self._context = self._read_context()

    # ------------------------------------------------------------ context
    def _optimizer_iterations(self):
        """The optimizer's iteration count (read at the start of `fit`: on JAX the
        variables are only synced at the end of each epoch)."""
        model = self.model
        optimizer = getattr(model, "optimizer", None) if model is not None else None
        if optimizer is not None and getattr(optimizer, "built", False):
            try:
                return int(np.asarray(keras.ops.convert_to_numpy(optimizer.iterations)))
            except Exception:  # pragma: no cover - defensive
                pass
        return 0

    def _step(self, batch):
        """The global training step of batch `batch` (0-based) of this epoch, or of
        the last batch of the epoch for `None`. Computed from the batch index Keras
        passes: in async mode the batch checks may run in a worker thread, out of
        order, so a counter of calls would lag."""
        in_epoch = self._epoch_batches if batch is None else batch + 1
        return self._initial_step + self._steps_done + in_epoch

    def _where(self, batch):
        where = f"epoch {self._epoch + 1}"
        if batch is not None:
            where += f", batch {batch + 1}"
        return where + f" (training step {self._step(batch)})"

    def _read_context(self):
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
        return lr, cw, sg_text

    def _causes(self, batch):
        context = getattr(self, "_context", None)
        lr, cw, sg_text = context if context is not None else self._read_context()
        lr_text = "the learning rate" + (f" (now {lr:.3g})" if lr is not None else "")
        cw_text = "the consistency_weight" + (
            f" (now {cw:g})" if cw is not None else ""
        )
        last = (
            ""
            if self._last_finite is None
            else f" The last finite loss was {self._last_finite[1]:.6g}, "
            f"{self._step(batch) - self._last_finite[0]} batch(es) earlier."
        )
        return (
            f"{last} Usual causes: {lr_text} is too high (lower it or add warm-up / "
            f"gradient clipping, e.g. Adam(clipnorm=1.0)), or {cw_text} is too high "
            f"(lower it{sg_text}); also check that sigma_data matches the data's "
            "scale."
        )

    # ------------------------------------------------------------- checks
    def on_train_batch_end(self, batch, logs=None):
        self._epoch_batches = max(self._epoch_batches, batch + 1)
        logs = logs or {}
        bad = logs.get("bad_samples")
        if self.bad_samples == "raise" and bad is not None and float(np.asarray(bad)) > 0:
            self._raise_for_bad_samples(batch, float(np.asarray(bad)), "the batch")
        loss = logs.get("loss")
        if loss is not None:
            loss = float(np.asarray(loss))
            if math.isfinite(loss):
                if self._last_finite is None or self._step(batch) > self._last_finite[0]:
                    self._last_finite = (self._step(batch), loss)
            else:
                self._raise_for_loss(batch, loss, logs)
        if self.weights_check_freq and (self._steps_done + batch + 1) % self.weights_check_freq == 0:
            sync = getattr(self.model, "jax_state_sync", None)
            if sync is not None:
                sync()  # JAX keeps the weights in the training state during an epoch
            self._check_weights(batch)

    def on_epoch_end(self, epoch, logs=None):
        bad = (logs or {}).get("val_bad_samples")
        if self.bad_samples == "raise" and bad is not None and float(np.asarray(bad)) > 0:
            self._raise_for_bad_samples(None, float(np.asarray(bad)), "the validation data")
        self._check_weights(None)
        self._steps_done += self._epoch_batches

    def _raise_for_bad_samples(self, batch, count, what):
        where = self._where(batch)
        raise ValueError(
            f"Training stopped at {where}: {what} held bad samples (NaN/Inf values "
            "in the data, a sigma_n that is NaN, negative or >= sigma_max, or a class "
            "label outside [0, num_classes)). They were left out of the update, so "
            "the weights are intact. Remove them from the dataset, or pass "
            "callbacks=[ka.callbacks.TerminateOnNonFinite(bad_samples='skip')] to train "
            f"without them (counted in the `bad_samples` metric). Received: {count:g} "
            "bad sample(s) this epoch"
        )

    def _raise_for_loss(self, batch, loss, logs):
        where = self._where(batch)
        parts = ", ".join(
            f"{k}={float(np.asarray(v)):.6g}"
            for k, v in logs.items()
            if k.endswith("loss") and np.ndim(v) == 0
        )
        raise FloatingPointError(
            f"Training diverged at {where}: the loss became {loss} ({parts})."
            + self._causes(batch)
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
            f"'{v.path}'{_owner(model, v)} holds NaN/Inf values." + self._causes(batch)
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
