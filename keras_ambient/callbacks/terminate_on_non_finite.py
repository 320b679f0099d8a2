import math

import keras
import numpy as np


class TerminateOnNonFinite(keras.callbacks.Callback):
    """Stops training with a clear error as soon as the loss is NaN or Inf.

    `ka.AmbientDiffusion.fit` adds it automatically. The model excludes
    non-finite samples from the update and flags the batch by making the
    reported `loss` NaN while `ambient_loss` stays finite, so the error can say
    whether the data or the optimisation is at fault.

    Example:
    ```python
    model.fit(dataset, epochs=10, callbacks=[ka.callbacks.TerminateOnNonFinite()])
    ```
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is None:
            return
        loss = float(np.asarray(loss))
        if math.isfinite(loss):
            return
        ambient = logs.get("ambient_loss")
        ambient = None if ambient is None else float(np.asarray(ambient))
        where = f"epoch {self._epoch + 1}, batch {batch + 1}"
        if ambient is not None and math.isfinite(ambient):
            raise ValueError(
                f"Training stopped at {where}: the batch held NaN/Inf values in the "
                "data or in its sigma_n. Those samples were left out of the update, "
                "so the weights are intact; remove them from the dataset (numpy "
                "inputs are checked before training, datasets cannot be). "
                f"Received: a batch with non-finite values (loss={loss})"
            )
        raise FloatingPointError(
            f"Training diverged at {where}: the loss became {loss}. Lower the "
            "learning rate or the consistency_weight, or use "
            "ConsistencyLoss(stop_gradient_target=True)."
        )
