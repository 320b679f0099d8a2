import keras
import numpy as np

from keras_ambient.memorization.features import _batched_apply
from keras_ambient.utils.validation import check_int


class KerasFeatureExtractor:
    """Features from any Keras model (e.g. a classifier trunk or an encoder).

    Runs `model.predict_on_batch` over batches, optionally after a
    `preprocess` function, picks one output when the model returns several,
    and flattens it to `(n, d)`.

    Args:
        model: a `keras.Model` (or layer) mapping images to features.
        batch_size: images per call.
        preprocess: optional `f(images) -> model inputs` (NumPy or tensor),
            e.g. a resize or a value-range change.
        output: key or index of the output to use when the model returns a
            dict or a list (default: the only output).
        input_key: if set, the model is called on `{input_key: images}`
            (keras-hub backbones take `{"images": ...}`).

    Example:
    ```python
    encoder = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(32)])
    f = ka.memorization.KerasFeatureExtractor(encoder)
    report = ka.memorization.measure_similarity(samples, x_train, feature_extractor=f)
    ```

    References:
        - Somepalli, Singla, Goldblum, Geiping, Goldstein. "Diffusion Art or Digital
          Forgery? Investigating Data Replication in Diffusion Models". CVPR 2023,
          arXiv:2212.03860.
    """

    def __init__(self, model, batch_size=256, preprocess=None, output=None, input_key=None):
        if not isinstance(model, (keras.Model, keras.layers.Layer)):
            raise TypeError(
                f"`model` must be a keras.Model or keras.layers.Layer. Received: model of type {type(model).__name__}"
            )
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"`preprocess` must be callable or None. Received: preprocess={preprocess!r}")
        self.model = model
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.preprocess = preprocess
        if output is not None and (isinstance(output, bool) or not isinstance(output, (str, int))):
            raise TypeError(
                "`output` must be None, an output's name or its index. "
                f"Received: output={output!r} of type {type(output).__name__}"
            )
        if input_key is not None and not isinstance(input_key, str):
            raise TypeError(
                "`input_key` must be None or the name of the model's image input. "
                f"Received: input_key={input_key!r} of type {type(input_key).__name__}"
            )
        self.output = output
        self.input_key = input_key

    def _run(self, batch):
        if self.preprocess is not None:
            batch = self.preprocess(batch)
        inputs = {self.input_key: batch} if self.input_key is not None else batch
        if isinstance(self.model, keras.Model):
            out = self.model.predict_on_batch(inputs)
        else:
            out = self.model(inputs, training=False)
        if isinstance(out, dict):
            if self.output is None:
                if len(out) != 1:
                    raise ValueError(
                        f"The model returns several outputs {sorted(out)}: pass `output`. Received: output=None"
                    )
                out = next(iter(out.values()))
            else:
                out = out[self.output]
        elif isinstance(out, (list, tuple)):
            if self.output is None:
                if len(out) != 1:
                    raise ValueError(
                        f"The model returns {len(out)} outputs: pass `output`. Received: output=None"
                    )
                out = out[0]
            else:
                out = out[self.output]
        out = np.asarray(keras.ops.convert_to_numpy(out), dtype="float32")
        return out.reshape(out.shape[0], -1)

    def __call__(self, images):
        images = np.asarray(images, dtype="float32")
        return _batched_apply(self._run, images, self.batch_size)

    def get_config(self):
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "preprocess": self.preprocess,
            "output": self.output,
            "input_key": self.input_key,
        }
