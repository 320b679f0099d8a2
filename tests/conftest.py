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


def pytest_collection_modifyitems(config, items):
    skip_large = pytest.mark.skip(reason="large test: pass --run-large to run it")
    skip_other = pytest.mark.skip(
        reason=f"runs under KERAS_BACKEND={SMOKE_BACKEND} only (KERAS_AMBIENT_SMOKE_BACKEND)")
    for item in items:
        if "large" in item.keywords and not config.getoption("--run-large"):
            item.add_marker(skip_large)
        if "one_backend" in item.keywords and keras.backend.backend() != SMOKE_BACKEND:
            item.add_marker(skip_other)


def pytest_report_header(config):
    return f"keras backend: {keras.backend.backend()} (keras {keras.__version__})"


@pytest.fixture(autouse=True)
def _reset_state():
    keras.config.set_dtype_policy("float32")
    np.random.seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
