import os

import keras
import numpy as np

from keras_ambient.utils import images as images_lib
from keras_ambient import samplers as samplers_lib
from keras_ambient.utils.validation import (
    check_bool,
    check_choice,
    check_int,
    check_path,
    check_range,
)

_MODES = ("full", "truncated")


class SampleGrid(keras.callbacks.Callback):
    """Writes a fixed-seed grid of samples every `every_n_epochs` epochs.

    At the end of every `every_n_epochs`-th epoch (and, with
    `on_train_end=True`, once more after the last one) it calls
    `model.generate(num_samples, seed=seed, mode=mode, use_ema=True, ...)` and
    writes the samples to `output_dir/samples_epoch_XXXX.png` (an image grid
    for image data, a scatter plot for 2-D data). The seed is fixed, so
    successive grids show the same starting noise and the evolution of the
    model is easy to follow. When `tensorboard_writer` is given the grid is also
    logged as an image summary (this needs TensorFlow for `tf.summary`,
    whatever the Keras backend).

    Args:
        output_dir: folder of the PNG files (created if needed); `None` writes
            no PNG (TensorBoard only).
        every_n_epochs: interval in epochs.
        num_samples: samples per grid.
        seed: sampling seed (the same every time).
        mode: `"full"` (run to sigma = 0; for models trained with consistency
            or on clean data) or `"truncated"` (stop at the model's sigma_n and
            return the posterior mean).
        num_steps: levels of the sampling schedule.
        sampler: sampler name passed to `generate`.
        value_range: value range of the images (black, white).
        tensorboard_writer: `None`, a log folder (a `tf.summary` file writer is
            created in it) or an existing `tf.summary` writer.
        on_train_end: also write a grid when training ends (`samples_final.png`).
        verbose: print the path of each grid written.

    Example:
    ```python
    grid = ka.callbacks.SampleGrid("outputs/grids", every_n_epochs=5, num_samples=16)
    model.fit(y, epochs=50, callbacks=[grid])
    grid.paths  # the PNG files written
    ```
    """

    def __init__(self, output_dir, every_n_epochs=1, num_samples=16, seed=0, mode="full",
                 num_steps=18, sampler="heun", value_range=(-1.0, 1.0),
                 tensorboard_writer=None, on_train_end=False, verbose=0):
        super().__init__()
        if output_dir is None and tensorboard_writer is None:
            raise ValueError(
                "SampleGrid needs somewhere to write: give `output_dir` and/or "
                "`tensorboard_writer`. Received: output_dir=None, tensorboard_writer=None"
            )
        self.output_dir = None if output_dir is None else check_path("output_dir", output_dir)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, minimum=1)
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        self.mode = check_choice("mode", mode, _MODES)
        self.num_steps = check_int("num_steps", num_steps, minimum=1)
        samplers_lib.get_sampler(sampler)  # an unknown name or a bad callable fails here
        self.sampler = sampler
        self.value_range = check_range("value_range", value_range)
        self.on_train_end_grid = check_bool("on_train_end", on_train_end)
        self.verbose = check_int("verbose", verbose, minimum=0)
        self.paths = []
        self._tb_spec = tensorboard_writer
        self._tb_writer = None
        if tensorboard_writer is not None:
            self._tb_writer = self._make_writer(tensorboard_writer)

    @staticmethod
    def _make_writer(spec):
        if not (isinstance(spec, (str, os.PathLike)) or hasattr(spec, "as_default")):
            raise TypeError(
                "`tensorboard_writer` must be None, a log folder or a tf.summary writer. "
                f"Received: tensorboard_writer={spec!r}"
            )
        try:
            import tensorboard  # noqa: F401  (tf.summary.image needs it)
            import tensorflow as tf
        except ImportError as e:
            raise ImportError(
                "SampleGrid(tensorboard_writer=...) writes image summaries with "
                "`tf.summary`, which needs TensorFlow and TensorBoard (any Keras "
                "backend works): `pip install tensorflow-cpu tensorboard`, or pass "
                "tensorboard_writer=None and use the PNG files. "
                f"Received: tensorboard_writer={spec!r}"
            ) from e
        if isinstance(spec, (str, os.PathLike)):
            return tf.summary.create_file_writer(os.fspath(spec))
        if hasattr(spec, "as_default"):
            return spec
        raise TypeError(
            "`tensorboard_writer` must be None, a log folder or a tf.summary writer. "
            f"Received: tensorboard_writer={spec!r}"
        )

    def generate(self):
        """Samples the grid now (EMA weights, fixed seed); returns a NumPy array."""
        return self.model.generate(
            self.num_samples, num_steps=self.num_steps, sampler=self.sampler,
            mode=self.mode, seed=self.seed, use_ema=True, verbose=0,
        )

    def _write(self, tag, step):
        samples = self.generate()
        picture = images_lib.to_picture(samples, value_range=self.value_range)
        if self.output_dir is not None:
            path = os.path.join(self.output_dir, f"samples_{tag}.png")
            images_lib.write_png(path, picture)
            self.paths.append(path)
            if self.verbose:
                print(f"SampleGrid: wrote {path}")
        if self._tb_writer is not None:
            import tensorflow as tf

            with self._tb_writer.as_default():
                tf.summary.image("samples", picture[None].astype(np.float32) / 255.0, step=step)
            self._tb_writer.flush()
        return samples

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs == 0:
            self._write(f"epoch_{epoch + 1:04d}", epoch + 1)
            self._last_epoch = epoch + 1

    def on_train_end(self, logs=None):
        if self.on_train_end_grid:
            self._write("final", getattr(self, "_last_epoch", 0) + 1)

    def get_config(self):
        return {
            "output_dir": self.output_dir,
            "every_n_epochs": self.every_n_epochs,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "mode": self.mode,
            "num_steps": self.num_steps,
            "sampler": self.sampler,
            "value_range": self.value_range,
            "tensorboard_writer": self._tb_spec if isinstance(self._tb_spec, (str, type(None))) else None,
            "on_train_end": self.on_train_end_grid,
            "verbose": self.verbose,
        }
