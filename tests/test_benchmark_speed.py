"""benchmarks/speed.py's `-bare` yardstick computes the library's loss."""

import keras
import numpy as np

import keras_ambient as ka
from tests.harness import load_benchmark


def test_bare_model_computes_the_ambient_diffusion_loss():
    # The `*-bare` workers time Keras's own fit with this model: it must train the
    # same loss as `AmbientDiffusion` with the consistency loss off (same network
    # weights, same seed, so the same draws), only without what the model adds.
    speed = load_benchmark("speed")
    y = ka.data.add_noise(ka.data.GaussianMixture.circle().sample(64, seed=0), 0.2, seed=1)
    net = ka.networks.MLPDenoiser(2, hidden_units=16, num_blocks=1, embedding_dim=8, seed=0)
    bare = speed.bare_model(net, sigma_n=0.2, sigma_data=0.5, seed=3)
    model = ka.AmbientDiffusion(ka.networks.MLPDenoiser(2, hidden_units=16, num_blocks=1,
                                                        embedding_dim=8, seed=1),
                                sigma_n=0.2, sigma_data=0.5, consistency_weight=0.0, seed=3)
    model.build()
    model.network.set_weights(net.get_weights())
    x = keras.ops.convert_to_tensor(y)
    want = [float(keras.ops.convert_to_numpy(model.compute_loss(x=x))) for _ in range(2)]
    got = [float(keras.ops.convert_to_numpy(bare.compute_loss(x=x))) for _ in range(2)]
    assert want[0] != want[1]  # new draws each call: the comparison covers the stream
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Keras's fit trains exactly the network's weights (no EMA copy, no other state).
    assert [id(w) for w in bare.trainable_weights] == [id(w) for w in net.trainable_weights]
    before = [np.array(w) for w in net.get_weights()]
    bare.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = bare.fit(y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][-1])
    assert all(not np.allclose(a, b) for a, b in zip(before, net.get_weights()) if a.ndim == 2)
