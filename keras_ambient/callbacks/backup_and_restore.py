import hashlib
import json
import os
import shutil
import warnings

import keras

from keras_ambient.utils.validation import check_bool, check_path

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
        backup_dir: folder of the backup (`latest/` holding
            `latest.weights.h5` and `training_metadata.json`, and `previous/`
            with `double_checkpoint`); deleted at the end of a completed run
            when `delete_checkpoint=True`. Each backup is written whole into
            `incoming/` and then renamed into place, so a process killed at
            any moment, also during a write, leaves a complete backup.
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
            check_path("backup_dir", backup_dir),
            save_freq=save_freq,
            double_checkpoint=check_bool("double_checkpoint", double_checkpoint),
            delete_checkpoint=check_bool("delete_checkpoint", delete_checkpoint),
        )
        self._completed_batches = 0
        self._skip = 0
        self._original_train_function = None

    # ------------------------------------------------------------- layout
    # backup_dir/latest/{latest.weights.h5, training_metadata.json}: one backup,
    # written whole into backup_dir/incoming/ and then renamed into place, so a
    # process killed at any moment (SIGKILL during the write included) leaves a
    # complete backup: `latest/`, or `previous/` while the two are swapped.
    # Keras's own callback writes the weights and the metadata in place, one
    # after the other; a kill between the two pairs new weights with old
    # metadata.
    def _dir(self, name):
        return os.path.join(self.backup_dir, name)

    def _recover(self):
        """Brings the folder back to a complete `latest/` after a kill."""
        incoming, latest, previous = (self._dir(n) for n in ("incoming", "latest", "previous"))
        if os.path.isdir(incoming):
            shutil.rmtree(incoming)  # a write that did not finish
        if not os.path.isdir(latest) and os.path.isdir(previous):
            os.replace(previous, latest)  # killed between the two renames
        self._point_to(latest)

    def _point_to(self, folder):
        # The two paths Keras's callback reads and writes.
        self._weights_path = os.path.join(folder, "latest.weights.h5")
        self._training_metadata_path = os.path.join(folder, "training_metadata.json")

    # ----------------------------------------------------------- restoring
    def on_train_begin(self, logs=None):
        self._skip = 0
        self._completed_batches = 0
        self._current_epoch = 0
        self._last_batch_seen = 0
        self._batches_seen_since_last_saving = 0
        if os.path.exists(self.backup_dir) and not os.path.isdir(self.backup_dir):
            raise ValueError(
                "`backup_dir` must be a folder (or not exist yet). Received: "
                f"backup_dir={self.backup_dir!r}, a regular file"
            )
        self._recover()
        metadata = self._restore()
        if metadata is None:
            return
        self._current_epoch = int(metadata["epoch"])
        # The only way to tell Keras's fit() at which epoch to go on; Keras's
        # own BackupAndRestore sets it the same way (keras 3.10-3.15).
        self.model._initial_epoch = self._current_epoch
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

    def _restore(self):
        """Loads `latest/` (or, with `double_checkpoint`, `previous/` if `latest/`
        cannot be read) into the model; returns its metadata or None."""
        candidates = [self._dir("latest")]
        if self.double_checkpoint:
            candidates.append(self._dir("previous"))
        candidates = [c for c in candidates if os.path.isdir(c)]
        if not candidates:
            return None
        model = self.model
        if not model.built:
            build = getattr(model, "_build_before_keras", None)
            if build is not None:
                build()  # ka.AmbientDiffusion knows its data shape
            if not model.built:
                raise ValueError(
                    "Restoring a backup needs a built model: call `model.build(...)` "
                    f"before fit(). Received: an unbuilt {type(model).__name__} and "
                    f"the backup in {self.backup_dir!r}"
                )
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # its state is in the backup
        signature = _signature(model)
        errors = []
        for folder in candidates:
            metadata = _read_json(os.path.join(folder, "training_metadata.json"))
            if metadata is None:
                errors.append(f"{folder}: no readable training_metadata.json")
                continue
            if metadata.get("model_signature", signature) != signature:
                raise ValueError(
                    f"The backup in {self.backup_dir!r} was written by a different model "
                    f"(its weights have other shapes: {metadata.get('num_weights')} "
                    f"weights against this model's {len(model.weights)}), so it cannot be "
                    "restored. Use a new `backup_dir` for this model, or delete the folder "
                    "to start from scratch. Received: "
                    f"backup_dir={self.backup_dir!r}"
                )
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.load_weights(os.path.join(folder, "latest.weights.h5"))
            except Exception as e:  # a damaged file: h5py's OSError, Keras's ValueError
                errors.append(f"{folder}: {type(e).__name__}: {str(e)[:200]}")
                continue
            if folder != candidates[0]:
                warnings.warn(
                    f"The latest backup could not be read ({errors[0]}); resumed from "
                    "the previous one.",
                    stacklevel=2,
                )
            return metadata
        raise ValueError(
            f"The backup in {self.backup_dir!r} cannot be read: "
            + "; ".join(errors)
            + ". Delete the folder to start from scratch"
            + ("" if self.double_checkpoint else ", or use double_checkpoint=True to keep a second backup")
            + f". Received: backup_dir={self.backup_dir!r}"
        )

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
        if self.delete_checkpoint and os.path.isdir(self.backup_dir):
            shutil.rmtree(self.backup_dir)

    def _restore_train_function(self):
        if self._original_train_function is not None:
            self.model.train_function = self._original_train_function
            self._original_train_function = None

    # -------------------------------------------------------------- saving
    def _save_model(self):
        incoming, latest, previous = (self._dir(n) for n in ("incoming", "latest", "previous"))
        if os.path.isdir(incoming):
            shutil.rmtree(incoming)
        os.makedirs(incoming)
        self._write(incoming)
        # Two renames: a kill between them leaves `previous/` complete, which
        # `_recover` renames back.
        if os.path.isdir(latest):
            if os.path.isdir(previous):
                shutil.rmtree(previous)
            os.replace(latest, previous)
        os.replace(incoming, latest)
        if not self.double_checkpoint and os.path.isdir(previous):
            shutil.rmtree(previous)
        self._point_to(latest)

    def _write(self, folder):
        weights = os.path.join(folder, "latest.weights.h5")
        self.model.save_weights(weights, overwrite=True)
        metadata = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "completed_batches": self._completed_batches,
            "model_signature": _signature(self.model),
            "num_weights": len(self.model.weights),
            "keras_ambient_version": __version__,
        }
        with open(os.path.join(folder, "training_metadata.json"), "w") as f:
            f.write(json.dumps(metadata))
            f.flush()
            os.fsync(f.fileno())
        with open(weights, "rb") as f:
            os.fsync(f.fileno())


def _read_json(path):
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _signature(model):
    """A digest of the weights' shapes and dtypes, in order: which model wrote a
    backup. Not their names, which Keras numbers per process (`dense_3`); the
    weights file is matched by position too."""
    text = ";".join(f"{tuple(v.shape)}:{v.dtype}" for v in model.weights)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
