"""benchmarks/scaling.py: its report and figure on made-up records, and a smoke run.

`benchmarks` is not a package (it holds scripts), so the module is imported by
path. Nothing here depends on the Keras backend of the test run (the smoke run
starts its own worker processes), so the tests run under one backend only.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.harness import load_benchmark

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "scaling.py")


def _scaling():
    return load_benchmark("scaling")


def _records(backends=("jax", "plain"), sizes=(8, 32), batches=(16, 64, 256)):
    """Step times t(B) = a + b*B with known a and b, two repeats."""
    out = []
    for i, w in enumerate(backends):
        for s in sizes:
            a, b = 0.02 * (i + 1), 1e-4 * (s / 8) ** 2
            for rep in range(2):
                for batch in batches:
                    sps = 1.0 / (a + b * batch)
                    out.append(dict(backend=w, size=s, batch=batch, repeat=rep, params=1000 * s,
                                    steps_per_s=sps, images_per_s=sps * batch))
    return out


@pytest.mark.one_backend
def test_overhead_fit_recovers_the_fixed_and_per_image_costs():
    sc = _scaling()
    batches = [16, 32, 64, 128, 256]
    a, b = sc.overhead_fit(batches, [1.0 / (0.05 + 0.002 * B) for B in batches])
    np.testing.assert_allclose([a, b], [0.05, 0.002], rtol=1e-6)
    assert sc.overhead_fit([16], [10.0]) is None


@pytest.mark.one_backend
def test_report_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    sc = _scaling()
    records = _records()
    text = sc.report(records, ["jax", "plain"], [8, 32], [16, 64, 256])
    assert "steps/s, jax" in text and "images/s, plain torch" in text
    assert "| 32x32x3 | 256 |" in text  # side-by-side rows
    # a/b of jax at 8x8: 0.02 / 1e-4 = 200 images
    assert "| jax | 8x8x1 | 20.0 | 0.10 | 200 |" in text  # then the log-log slope
    path = sc.plot(records, ["jax", "plain"], [8, 32], [16, 64, 256], str(tmp_path / "s.png"))
    assert os.path.getsize(path) > 10_000


@pytest.mark.slow
@pytest.mark.one_backend
def test_smoke_run(tmp_path):
    """Two workers (no compilation: Keras on torch, plain PyTorch), one tiny cell."""
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    cmd = [sys.executable, _PATH, "--quick", "--backends", "torch,plain", "--batch-sizes", "16",
           "--target-s", "0.2", "--json", str(tmp_path / "s.json"), "--plot",
           str(tmp_path / "s.png")]
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((tmp_path / "s.json").read_text())["records"]
    assert {r["backend"] for r in records} == {"torch", "plain"}
    assert all(r.get("steps_per_s", 0) > 0 for r in records), records
    assert "images/s side by side" in proc.stdout
    assert (tmp_path / "s.png").stat().st_size > 10_000
