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

# KILL_DURING_SAVE=weights|swap: SIGKILL this process during the 4th backup (after
# step 12): half-way through writing the weights file, or between the two renames
# that put the new backup in place.
kill, saves = os.environ.get("KILL_DURING_SAVE"), [0]
if kill:
    import signal
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    if kill == "weights":
        save_weights = model.save_weights
        def partial_save(path, **kw):
            save_weights(path, **kw)
            saves[0] += 1
            if saves[0] == 4:
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
                die()
        model.save_weights = partial_save
    else:
        replace = os.replace
        def replace_then_die(src, dst):
            replace(src, dst)
            if src.endswith("latest"):
                saves[0] += 1
                if saves[0] == 3:  # the first save has no latest/ to move
                    die()
        os.replace = replace_then_die

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


def _assert_same_state(resumed, reference, steps_seen):
    assert int(reference["steps"]) == 24
    assert int(resumed["steps"]) == steps_seen
    assert sorted(resumed.files) == sorted(reference.files)
    assert int(resumed["ema_step"]) == 24
    np.testing.assert_array_equal(resumed["seed_state"], reference["seed_state"])
    # Same backend, same machine, the same operations in the same order: bit-identical.
    for key in set(reference.files) - {"steps"}:
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["weights", "swap"])
def test_killed_during_a_backup_write_resumes_from_the_backup_before(tmp_path, kill):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    backup = tmp_path / "backup"
    proc = subprocess.run(
        [sys.executable, str(script), str(backup), str(tmp_path / "x.npz"), "0"],
        env=dict(_env(), KILL_DURING_SAVE=kill), capture_output=True, text=True,
        timeout=400,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    if kill == "weights":  # the half-written backup never replaced the complete one
        assert (backup / "incoming" / "latest.weights.h5").exists()
        metadata = json.loads((backup / "latest" / "training_metadata.json").read_text())
    else:  # killed between the renames: only previous/ is complete
        assert not (backup / "latest").exists()
        metadata = json.loads((backup / "previous" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 1 and metadata["completed_batches"] == 1  # after step 9

    _run(script, backup, tmp_path / "resumed.npz", 0)
    assert not backup.exists()
    _run(script, "-", tmp_path / "reference.npz", 0)
    # Epochs 2-3 seen by callbacks: 1 batch passed over, steps 10-24 trained.
    _assert_same_state(np.load(tmp_path / "resumed.npz"), np.load(tmp_path / "reference.npz"), 16)


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
    metadata = json.loads((backup / "latest" / "training_metadata.json").read_text())
    assert (
        metadata["epoch"] == 1 and metadata["completed_batches"] == 4
    )  # after step 12

    # 2. Resume in a new process (the same script: the backup is picked up).
    _run(script, backup, tmp_path / "resumed.npz", 0)
    assert not backup.exists()  # deleted once training completed

    # 3. Reference: the same training without interruption or callback.
    _run(script, "-", tmp_path / "reference.npz", 0)

    # Epochs 2-3 seen by callbacks: 4 batches passed over, steps 13-24 trained.
    _assert_same_state(np.load(tmp_path / "resumed.npz"), np.load(tmp_path / "reference.npz"), 16)


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


def _small_model(hidden_units=8):
    net = ka.networks.MLPDenoiser(2, hidden_units=hidden_units, num_blocks=1, embedding_dim=4, seed=0)
    model = ka.AmbientDiffusion(net, sigma_n=0.2, consistency_weight=0.0, seed=5)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model  # not built: the README's usage


def _noisy(n=32):
    return ka.data.add_noise(ka.data.GaussianMixture.circle().sample(n, seed=0), 0.2, seed=1)


def _backup(path, **kwargs):
    return ka.callbacks.BackupAndRestore(str(path), delete_checkpoint=False, **kwargs)


def test_a_fresh_unbuilt_model_restores_its_backup(tmp_path):
    y = _noisy()
    model = _small_model()
    model.fit(y, batch_size=8, epochs=2, verbose=0, callbacks=[_backup(tmp_path)])
    metadata = json.loads((tmp_path / "latest" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 2
    again = _small_model()  # a new process would build it the same way
    history = again.fit(y, batch_size=8, epochs=3, verbose=0, callbacks=[_backup(tmp_path)])
    assert history.epoch == [2]  # epochs 1-2 came from the backup
    assert int(to_numpy(again.optimizer.iterations)) == 12


def test_a_backup_of_another_model_is_refused_with_one_clear_message(tmp_path):
    y = _noisy()
    _small_model(8).fit(y, batch_size=8, epochs=1, verbose=0, callbacks=[_backup(tmp_path)])
    with pytest.raises(ValueError, match=r"written by a different model.*Received: backup_dir="):
        _small_model(16).fit(y, batch_size=8, epochs=1, verbose=0, callbacks=[_backup(tmp_path)])


def test_a_damaged_backup_is_reported_or_replaced_by_the_previous_one(tmp_path):
    y = _noisy()
    _small_model().fit(y, batch_size=8, epochs=2, verbose=0,
                       callbacks=[_backup(tmp_path, double_checkpoint=True)])
    assert json.loads((tmp_path / "previous" / "training_metadata.json").read_text())["epoch"] == 1
    weights = tmp_path / "latest" / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:200])  # e.g. a disk that filled up
    with pytest.raises(ValueError, match=r"cannot be read.*double_checkpoint=True.*Received: backup_dir="):
        _small_model().fit(y, batch_size=8, epochs=3, verbose=0, callbacks=[_backup(tmp_path)])
    model = _small_model()
    with pytest.warns(UserWarning, match="resumed from the previous one"):
        history = model.fit(y, batch_size=8, epochs=3, verbose=0,
                            callbacks=[_backup(tmp_path, double_checkpoint=True)])
    assert history.epoch == [1, 2]


def test_backup_dir_must_not_be_a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    with pytest.raises(ValueError, match=r"backup_dir.*must be a folder.*Received: backup_dir="):
        _small_model().fit(_noisy(), batch_size=8, epochs=1, verbose=0, callbacks=[_backup(path)])
