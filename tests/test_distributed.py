"""Multi-device training on each backend, on CPU: JAX keras.distribution with 4
virtual devices, TensorFlow MirroredStrategy with 2 logical CPUs, torch DDP with 2
gloo processes (torchrun). Each runs the matching example in its own process (the
device set-up must happen before the backend is imported)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()


def _run(cmd, tmp_path, timeout=900):
    env = dict(
        os.environ, KERAS_BACKEND=BACKEND, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3"
    )
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return json.loads((tmp_path / "out" / "result.json").read_text())


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX")
def test_jax_data_and_model_parallel_match_one_device(tmp_path):
    result = _run(
        [
            sys.executable,
            ROOT / "examples" / "distributed_jax.py",
            "--smoke",
            "--cpu-devices",
            "4",
            "--model-parallel",
            "1",
            "2",
            "--check",
            "--output-dir",
            tmp_path / "out",
        ],
        tmp_path,
    )
    data_parallel, model_parallel = result["runs"]
    assert (
        data_parallel["distribution"] == "DataParallel"
        and data_parallel["devices"] == 4
    )
    assert model_parallel["distribution"] == "ModelParallel"
    for run in result["runs"]:
        assert run["steps"] == 4
        # The same global batch, weights and noise (JAX draws the global noise array
        # from the one SeedGenerator, independent of its sharding): only the order of
        # float32 reductions differs, ~1e-7 relative per step.
        assert run["max_loss_rel_diff"] < 1e-5, run
        assert run["max_weight_abs_diff"] < 1e-5, run
    assert result["samples_finite"]


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute runs on TensorFlow")
def test_tensorflow_mirrored_strategy_first_step(tmp_path):
    result = _run(
        [
            sys.executable,
            ROOT / "examples" / "distributed_tensorflow.py",
            "--smoke",
            "--cpu-devices",
            "2",
            "--check",
            "--output-dir",
            tmp_path / "out",
        ],
        tmp_path,
    )
    assert result["replicas"] == 2 and result["steps"] == 4 and result["samples_finite"]
    check = result["check"]
    a, b = check["shard_losses"]
    assert a != b  # the two replicas drew different noise
    # The reported loss is the mean of the replicas' losses (the per-replica loss is
    # divided by the number of replicas, then summed); the update is one Adam step on
    # the mean gradient. float32 round-off only.
    assert check["loss_abs_diff"] < 1e-5, check
    assert check["weight_abs_diff"] < 1e-6, check


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "torch", reason="DDP runs on torch")
def test_torch_ddp_two_gloo_processes(tmp_path):
    torchrun = shutil.which("torchrun") or str(
        pathlib.Path(sys.executable).parent / "torchrun"
    )
    result = _run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            ROOT / "examples" / "distributed_torch.py",
            "--smoke",
            "--check",
            "--output-dir",
            tmp_path / "out",
        ],
        tmp_path,
    )
    assert (
        result["world_size"] == 2 and result["steps"] == 4 and result["samples_finite"]
    )
    assert result["weights_equal"]  # DDP kept the ranks in sync
    check = result["check"]
    a, b = check["shard_losses"]
    assert a != b  # rank 1 drew its own noise
    assert check["loss_abs_diff"] < 1e-5, check
    assert check["weight_abs_diff"] < 1e-6, check
