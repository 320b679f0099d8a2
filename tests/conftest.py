import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--run-large", action="store_true", default=False,
                     help="run tests marked `large` (big models, downloads)")


# Guides, examples and end-to-end CLI runs exercise the same library code on every
# backend; they run under one backend (torch: no XLA compile for one-shot runs).
SMOKE_BACKEND = os.environ.get("KERAS_AMBIENT_SMOKE_BACKEND", "torch")


# Slow tests (training to convergence, killed processes, tests that themselves spawn
# every backend) run under one backend each, spread so the three runs of
# scripts/test_all_backends.sh take about as long; KERAS_AMBIENT_SLOW_EVERYWHERE=1 runs
# them under every backend. Tests tied to one backend (skipif) and `one_backend`
# tests keep their own rule.
SLOW_HOME = {
    "test_distributed.py": None,       # each test is for one backend already
    "test_exactness.py": "jax",
    "test_pretrained.py": "tensorflow",
    "test_model.py": "tensorflow",     # cross-backend loading: spawns the other two
    "test_resume.py": "torch",         # SIGKILL + bit-identical resume
    "test_networks.py": "torch",
    "test_annotation.py": "jax",       # the classifier against the Bayes classifier
}
SLOW_HOME_OVERRIDES = {
    "test_keras_cv_path_trains_epsilon_prediction_on_the_vp_schedule": "jax",
    # torch saves its optimizer under a torch-only class: the case the test must cover.
    "test_saved_model_loads_in_the_other_backends": "torch",
}
SLOW_EVERYWHERE = os.environ.get("KERAS_AMBIENT_SLOW_EVERYWHERE", "0") == "1"


def _slow_home(item):
    name = item.originalname if hasattr(item, "originalname") else item.name
    if name in SLOW_HOME_OVERRIDES:
        return SLOW_HOME_OVERRIDES[name]
    return SLOW_HOME.get(os.path.basename(str(item.fspath)), "jax")


def pytest_collection_modifyitems(config, items):
    skip_large = pytest.mark.skip(reason="large test: pass --run-large to run it")
    skip_other = pytest.mark.skip(
        reason=f"runs under KERAS_BACKEND={SMOKE_BACKEND} only (KERAS_AMBIENT_SMOKE_BACKEND)")
    backend = keras.backend.backend()
    for item in items:
        if "large" in item.keywords and not config.getoption("--run-large"):
            item.add_marker(skip_large)
        if "one_backend" in item.keywords:
            if backend != SMOKE_BACKEND:
                item.add_marker(skip_other)
            continue
        if "slow" in item.keywords and not SLOW_EVERYWHERE:
            home = _slow_home(item)
            if home is not None and home != backend:
                item.add_marker(pytest.mark.skip(
                    reason=f"slow test: runs under KERAS_BACKEND={home} "
                           "(KERAS_AMBIENT_SLOW_EVERYWHERE=1 runs it everywhere)"))


def pytest_report_header(config):
    return f"keras backend: {keras.backend.backend()} (keras {keras.__version__})"


@pytest.fixture(autouse=True)
def _reset_state():
    keras.config.set_dtype_policy("float32")
    np.random.seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    # Without the full `gc.collect()` of `free_memory=True`: on TensorFlow, whose many
    # live Python objects make each collection slow, it took a third of the suite's
    # time (test_model.py: 81 of 265 s); Python's own generational collections still
    # free the cycles a test leaves.
    keras.backend.clear_session(free_memory=False)
