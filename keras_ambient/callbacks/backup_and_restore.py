import json
import os

import keras

from keras_ambient.version import __version__


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that resumes mid-epoch exactly.

    Keras's callback saves the weights every `save_freq` batches but, when a
    run is restarted, replays the interrupted epoch from its first batch: the
    batches before the backup are trained on twice. This subclass records how
    many batches of the epoch were done and, on restart, passes over them
    (their data is read and dropped, no step is taken), so the resumed run
    takes the same steps as an uninterrupted one.

    With `ka.AmbientDiffusion` the backup holds everything a training step
    depends on: the weights, the EMA weights and `ema_step`, the optimizer
    state (including `iterations`) and the state of the model's training
    `SeedGenerator`; a resumed run therefore draws the same noise as an
    uninterrupted one and ends with the same weights (bit-identical on the
    same backend and machine in the tests). What it cannot restore is the
    order of the data: use `shuffle=False`, or data whose per-epoch order
    depends only on the epoch (e.g. a `keras.utils.PyDataset` that shuffles
    with `np.random.default_rng(seed + epoch)`), when exactness matters.
    Keras's own shuffling of NumPy inputs draws from the global random state,
    which a new process does not continue.

    Args:
        backup_dir: folder of the backup (`latest.weights.h5` and
            `training_metadata.json`); deleted at the end of a completed run
            when `delete_checkpoint=True`.
        save_freq: `"epoch"` or a number of batches between backups.
        double_checkpoint: also keep the previous backup, used when the
            latest one cannot be read.
        delete_checkpoint: delete the backup when training completes.

    Mid-epoch resumption needs `steps_per_execution=1` (the default).

    Example:
    ```python
    backup = ka.callbacks.BackupAndRestore("/tmp/backup", save_freq=100)
    model.fit(y, batch_size=64, epochs=50, shuffle=False, callbacks=[backup])
    # killed? run the same script again: training continues at the step
    # of the last backup.
    ```
    """

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        double_checkpoint=False,
        delete_checkpoint=True,
    ):
        if save_freq != "epoch" and (
            isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1
        ):
            raise ValueError(
                "`save_freq` must be 'epoch' or a positive number of batches between "
                f"backups. Received: save_freq={save_freq!r}"
            )
        super().__init__(
            backup_dir,
            save_freq=save_freq,
            double_checkpoint=double_checkpoint,
            delete_checkpoint=delete_checkpoint,
        )
        self._completed_batches = 0
        self._skip = 0
        self._original_train_function = None

    # ----------------------------------------------------------- restoring
    def _read_metadata(self):
        if not os.path.exists(self._training_metadata_path):
            return None
        with open(self._training_metadata_path) as f:
            return json.loads(f.read())

    def on_train_begin(self, logs=None):
        self._skip = 0
        self._completed_batches = 0
        self._current_epoch = 0
        self._last_batch_seen = 0
        self._batches_seen_since_last_saving = 0
        super().on_train_begin(logs)  # loads the weights, sets the epoch
        metadata = self._read_metadata()
        if metadata is None or not os.path.exists(self._weights_path):
            return
        self._current_epoch = int(metadata["epoch"])
        done = int(metadata.get("completed_batches", 0))
        if done <= 0:
            return
        model = self.model
        if getattr(model, "steps_per_execution", 1) != 1:
            raise ValueError(
                "Resuming in the middle of an epoch needs steps_per_execution=1. "
                f"Received: steps_per_execution={model.steps_per_execution} and a "
                f"backup taken after batch {done} of epoch {self._current_epoch + 1}"
            )
        self._skip = done
        self._last_batch_seen = done - 1
        self._completed_batches = done
        self._original_train_function = model.train_function
        model.train_function = _skipping_function(model.train_function)

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch
        if self._skip == 0:
            self._completed_batches = 0

    def on_train_batch_end(self, batch, logs=None):
        if self._skip > 0:
            # A batch done before the backup: read and dropped, no backup.
            self._skip -= 1
            self._last_batch_seen = batch
            if self._skip == 0:
                self._restore_train_function()
            return
        self._completed_batches = batch + 1
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._completed_batches = 0
        self._restore_train_function()
        self._skip = 0
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        self._restore_train_function()
        # Keras keeps the restored epoch on the model; a later fit() starts
        # from `initial_epoch` again.
        self.model._initial_epoch = None
        super().on_train_end(logs)

    def _restore_train_function(self):
        if self._original_train_function is not None:
            self.model.train_function = self._original_train_function
            self._original_train_function = None

    # -------------------------------------------------------------- saving
    def _save_model(self):
        super()._save_model()
        with open(self._training_metadata_path, "w") as f:
            f.write(
                json.dumps(
                    {
                        "epoch": self._current_epoch,
                        "batch": self._last_batch_seen,
                        "completed_batches": self._completed_batches,
                        "keras_ambient_version": __version__,
                    }
                )
            )


def _skipping_function(train_function):
    """A train function that reads one batch and takes no step."""
    backend = keras.backend.backend()
    if backend == "jax":

        def skip(state, iterator):
            next(iterator)
            return {}, state

    elif backend == "tensorflow":

        def skip(iterator):
            next(iterator)
            return {}

    else:  # torch (and numpy): the batch is already read by fit

        def skip(data):
            return {}

    return skip
