"""Training killed mid-epoch (SIGKILL) and resumed with ka.callbacks.BackupAndRestore
ends in exactly the state of an uninterrupted run: weights, EMA, ema_step, optimizer
state and iterations, and the training SeedGenerator's state."""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_ambient as ka
from tests.harness import to_numpy

# 64 samples / batch 8 = 8 batches per epoch, 3 epochs = 24 steps; a backup every
# 3 steps. The first run blocks after step 14 (epoch 2, batch 6) and is killed:
# its last backup is after step 12 (epoch 2, batch 4), in the middle of an epoch.
SCRIPT = r"""
import json, os, sys, time
import numpy as np, keras, keras_ambient as ka

backup_dir, out, block_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
keras.utils.set_random_seed(0)  # the Dense initializers draw from the global seed
x = ka.data.GaussianMixture.circle().sample(64, seed=0)
y = ka.data.add_noise(x, 0.2, seed=1)
net = ka.networks.MLPDenoiser(2, hidden_units=16, num_blocks=1, embedding_dim=8, seed=0)
model = ka.AmbientDiffusion(net, sigma_n=0.2, consistency_weight=0.5, ema_decay=0.9, seed=3)
model.compile(optimizer=keras.optimizers.Adam(1e-3))
model.build((None, 2))

class Block(keras.callbacks.Callback):
    step = 0
    def on_train_batch_end(self, batch, logs=None):
        Block.step += 1
        if Block.step == block_after:
            print("BLOCKED", flush=True)
            time.sleep(3600)

callbacks = [Block()]
if backup_dir != "-":
    callbacks.insert(0, ka.callbacks.BackupAndRestore(backup_dir, save_freq=3))
model.fit(y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)
c = keras.ops.convert_to_numpy
np.savez(out, steps=Block.step,
         **{f"w{i}": c(v) for i, v in enumerate(model.weights)},
         **{f"o{i}": c(v) for i, v in enumerate(model.optimizer.variables)},
         seed_state=c(model.seed_generator.state), ema_step=c(model.ema_step))
print("DONE", flush=True)
"""


def _env():
    return dict(
        os.environ,
        KERAS_BACKEND=keras.backend.backend(),
        OMP_NUM_THREADS="1",
        TF_CPP_MIN_LOG_LEVEL="3",
    )


def _run(script, *args, timeout=400):
    proc = subprocess.run(
        [sys.executable, script] + [str(a) for a in args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DONE" in proc.stdout
    return proc


@pytest.mark.slow
def test_killed_mid_epoch_training_resumes_exactly(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    backup = tmp_path / "backup"

    # 1. Start a run with backups and SIGKILL it after step 14.
    proc = subprocess.Popen(
        [sys.executable, str(script), str(backup), str(tmp_path / "x.npz"), "14"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:
            if "BLOCKED" in line:
                break
        else:
            raise AssertionError(proc.stderr.read()[-3000:])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    metadata = json.loads((backup / "training_metadata.json").read_text())
    assert (
        metadata["epoch"] == 1 and metadata["completed_batches"] == 4
    )  # after step 12

    # 2. Resume in a new process (the same script: the backup is picked up).
    _run(script, backup, tmp_path / "resumed.npz", 0)
    assert not backup.exists()  # deleted once training completed

    # 3. Reference: the same training without interruption or callback.
    _run(script, "-", tmp_path / "reference.npz", 0)

    resumed = np.load(tmp_path / "resumed.npz")
    reference = np.load(tmp_path / "reference.npz")
    assert int(reference["steps"]) == 24
    # Epochs 2-3 seen by callbacks: 4 batches passed over, steps 13-24 trained.
    assert int(resumed["steps"]) == 16
    assert sorted(resumed.files) == sorted(reference.files)
    assert int(resumed["ema_step"]) == 24
    np.testing.assert_array_equal(resumed["seed_state"], reference["seed_state"])
    # Same backend, same machine, the same operations in the same order: bit-identical.
    for key in set(reference.files) - {"steps"}:
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)


def test_seed_state_ema_step_and_optimizer_are_in_the_weights_file(tmp_path):
    def make():
        net = ka.networks.MLPDenoiser(
            2, hidden_units=8, num_blocks=1, embedding_dim=4, seed=0
        )
        model = ka.AmbientDiffusion(net, sigma_n=0.2, consistency_weight=0.0, seed=5)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.build((None, 2))
        return model

    y = ka.data.add_noise(
        ka.data.GaussianMixture.circle().sample(32, seed=0), 0.2, seed=1
    )
    model = make()
    model.fit(y, batch_size=8, epochs=1, verbose=0)
    state = to_numpy(model.seed_generator.state)
    assert state[1] > 0  # the stream advanced during training
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    fresh = make()
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(path)
    np.testing.assert_array_equal(to_numpy(fresh.seed_generator.state), state)
    assert (
        int(to_numpy(fresh.ema_step)) == 4
        and int(to_numpy(fresh.optimizer.iterations)) == 4
    )
    # ... and in .keras files.
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    np.testing.assert_array_equal(to_numpy(loaded.seed_generator.state), state)


@pytest.mark.parametrize("save_freq", [0, -5, 2.5, True, "batch"])
def test_backup_frequency_must_be_positive(tmp_path, save_freq):
    with pytest.raises(ValueError, match=r"save_freq.*Received: save_freq="):
        ka.callbacks.BackupAndRestore(str(tmp_path), save_freq=save_freq)
