"""Batch formats: every input type (NumPy, tf.data, PyDataset, torch DataLoader)
with 1-, 2- and 3-element batches and dicts, also as validation data, train the
same model as the reference format (Keras must not read a 3-tuple's condition as
sample weights); sample weights; the bad-samples metric."""

import keras
import numpy as np
import pytest

import keras_ambient as ka
from tests.harness import to_numpy

N, BATCH, SIGMA_N = 32, 16, 0.2


def make_model(conditional):
    net = ka.networks.MLPDenoiser(2, hidden_units=16, num_blocks=1, embedding_dim=8, seed=0,
                                  num_classes=3 if conditional else None)
    # A 2-step consistency chain: the batch formats reach every loss term, at a
    # fraction of the default chain's compile time.
    model = ka.AmbientDiffusion(net, sigma_n=SIGMA_N, consistency_weight=0.5, seed=0,
                                consistency_loss=ka.losses.ConsistencyLoss(num_steps=2))
    # SGD, not Adam: Adam divides by sqrt(v), which turns float32 rounding differences
    # between input pipelines into visible weight differences where a gradient is ~0.
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    return model


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    y = ka.data.add_noise(ka.data.GaussianMixture.circle().sample(N, seed=seed), SIGMA_N, seed=seed + 1)
    levels = rng.uniform(0.1, 0.3, size=N).astype("float32")
    labels = np.array([0, 1, 2, 0] * (N // 4), dtype="int32")  # a quarter of labels 0
    return y, levels, labels


def batches_of(elements):
    """The list of batches (tuples of arrays) of `elements`, in order."""
    return [tuple(e[i:i + BATCH] for e in elements) for i in range(0, N, BATCH)]


def as_input(kind, elements):
    """`elements` (a tuple of arrays) as batches of `kind` yielding flat tuples."""
    if kind == "numpy":
        return elements if len(elements) > 1 else elements[0]
    if kind == "tf.data":
        tf = pytest.importorskip("tensorflow")
        ds = tf.data.Dataset.from_tensor_slices(elements if len(elements) > 1 else elements[0])
        return ds.batch(BATCH)
    if kind == "PyDataset":
        parts = batches_of(elements)

        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return len(parts)

            def __getitem__(self, i):
                return parts[i] if len(elements) > 1 else parts[i][0]

        return Batches()
    torch = pytest.importorskip("torch")
    tensors = [torch.from_numpy(np.asarray(e)) for e in elements]
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tensors), batch_size=BATCH)


_REFERENCE = {}


def reference_run(elements, conditional):
    """Fit + validation with dict batches from NumPy: the reference result
    (computed once per batch size)."""
    key = (len(elements), conditional)
    if key not in _REFERENCE:
        _REFERENCE[key] = _reference_run(elements, conditional)
    return _REFERENCE[key]


def _reference_run(elements, conditional):
    keys = ("data", "sigma_n", "condition")[:len(elements)]
    batch = dict(zip(keys, elements))
    model = make_model(conditional)
    history = model.fit(batch, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                        validation_data=(batch,))
    return [to_numpy(w) for w in model.weights], history.history


@pytest.mark.parametrize("kind", ["numpy", "tf.data", "PyDataset", "DataLoader"])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_every_input_type_and_batch_size_trains_like_the_dict_format(kind, size):
    y, levels, labels = arrays()
    elements = (y, levels, labels)[:size]
    conditional = size == 3
    ref_weights, ref = reference_run(elements, conditional)
    model = make_model(conditional)
    data = as_input(kind, elements)
    val = elements if kind == "numpy" else as_input(kind, elements)
    kwargs = dict(batch_size=BATCH) if kind == "numpy" else {}
    history = model.fit(data, epochs=1, shuffle=False, verbose=0, validation_data=val, **kwargs).history
    for key in ("loss", "ambient_loss", "val_loss", "val_ambient_loss"):
        np.testing.assert_allclose(history[key], ref[key], rtol=2e-5, atol=1e-6, err_msg=key)
    for a, b in zip(model.weights, ref_weights):
        np.testing.assert_allclose(to_numpy(a), b, rtol=1e-5, atol=1e-6)


def test_a_condition_for_an_unconditional_network_is_named():
    y, levels, labels = arrays()
    with pytest.raises(ValueError, match="takes no condition"):
        make_model(False).fit((y, levels, labels), batch_size=BATCH, verbose=0)
    with pytest.raises(ValueError, match="is conditional.*condition=None"):
        make_model(True).fit((y, levels), batch_size=BATCH, verbose=0)


def test_samples_of_weight_zero_do_not_train():
    y, levels, _ = arrays()
    other = arrays(seed=7)[0]
    weights = np.where(np.arange(N) < N // 2, 1.0, 0.0).astype("float32")
    y_b = np.concatenate([y[:N // 2], other[N // 2:]])  # differs only where the weight is 0
    a = make_model(False)
    a.fit({"data": y, "sigma_n": levels, "sample_weight": weights}, batch_size=N, shuffle=False, verbose=0)
    b = make_model(False)
    b.fit(y_b, levels, sample_weight=weights, batch_size=N, shuffle=False, verbose=0)
    for u, v in zip(a.weights, b.weights):
        np.testing.assert_allclose(to_numpy(u), to_numpy(v), rtol=1e-5, atol=1e-6)
    c = make_model(False)
    c.fit(y_b, levels, batch_size=N, shuffle=False, verbose=0)  # unweighted: the other data count
    assert any(not np.allclose(to_numpy(u), to_numpy(v), atol=1e-6) for u, v in zip(a.weights, c.weights))
    with pytest.raises(ValueError, match="class_weight"):
        make_model(False).fit(y, levels, class_weight={0: 1.0}, verbose=0)
    with pytest.raises(ValueError, match="sample_weight"):
        make_model(False).fit(y, sample_weight=np.ones(N - 1, "float32"), verbose=0)


def test_bad_samples_are_counted_skipped_or_stop_training():
    tf = pytest.importorskip("tensorflow")
    y, levels, _ = arrays()
    levels = levels.copy()
    y = y.copy()
    y[3] = np.nan          # batch 1
    levels[20] = -0.1      # batch 2: negative level
    levels[21] = 100.0     # batch 2: above sigma_max
    ds = tf.data.Dataset.from_tensor_slices((y, levels)).batch(BATCH)
    model = make_model(False)
    skip = ka.callbacks.TerminateOnNonFinite(bad_samples="skip")
    history = model.fit(ds, epochs=1, verbose=0, callbacks=[skip], validation_data=ds).history
    assert history["bad_samples"] == [3.0] and history["val_bad_samples"] == [3.0]
    assert np.isfinite(history["loss"][0]) and np.isfinite(history["val_loss"][0])
    assert all(np.all(np.isfinite(to_numpy(w))) for w in model.weights)
    with pytest.raises(ValueError, match=r"batch 1 .*bad samples.*Received: 1 bad sample"):
        make_model(False).fit(ds, epochs=1, verbose=0)
    good = tf.data.Dataset.from_tensor_slices((arrays()[0], arrays()[1])).batch(BATCH)
    with pytest.raises(ValueError, match="the validation data held bad samples"):
        make_model(False).fit(good, epochs=1, verbose=0, validation_data=ds)


def test_out_of_range_labels_in_a_dataset_are_bad_samples():
    tf = pytest.importorskip("tensorflow")
    y, levels, labels = arrays()
    labels = labels.copy()
    labels[5], labels[6] = 7, -1
    ds = tf.data.Dataset.from_tensor_slices({"data": y, "sigma_n": levels, "condition": labels}).batch(BATCH)
    model = make_model(True)
    history = model.fit(ds, epochs=1, verbose=0,
                        callbacks=[ka.callbacks.TerminateOnNonFinite(bad_samples="skip")]).history
    assert history["bad_samples"] == [2.0]
    assert all(np.all(np.isfinite(to_numpy(w))) for w in model.weights)
    with pytest.raises(ValueError, match=r"class labels in \[0, 3\).*7"):
        make_model(True).fit((y, levels, labels), batch_size=BATCH, verbose=0)


def test_the_reported_loss_stays_finite_with_bad_samples():
    # The loss is the mean over the good samples (no NaN flag that would poison
    # History, EarlyStopping or ReduceLROnPlateau).
    tf = pytest.importorskip("tensorflow")
    y, levels, _ = arrays()
    y = y.copy()
    y[0] = np.inf
    ds = tf.data.Dataset.from_tensor_slices({"data": y, "sigma_n": levels}).batch(N)
    bad = make_model(False).evaluate(ds, verbose=0, return_dict=True)
    assert bad["bad_samples"] == 1.0 and np.isfinite(bad["loss"])


def test_map_in_batches_pads_to_one_shape_and_trims():
    from keras_ambient.utils.structures import map_in_batches

    x = np.arange(10, dtype="float32")[:, None]
    seen, rows = [], []
    out = map_in_batches(lambda b: (seen.append(len(b)), 2 * b)[1], x, 4, pad=True, on_batch=rows.append)
    np.testing.assert_array_equal(out, 2 * x)
    assert seen == [4, 4, 4] and rows == [4, 4, 2]
    seen.clear()
    np.testing.assert_array_equal(map_in_batches(lambda b: (seen.append(len(b)), b)[1], x, 4), x)
    assert seen == [4, 4, 2]  # no padding unless asked
    seen.clear()
    map_in_batches(lambda b: (seen.append(len(b)), b)[1], x[:3], 4, pad=True)
    assert seen == [3]  # one batch: nothing to pad for
