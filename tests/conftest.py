import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--run-large", action="store_true", default=False,
                     help="run tests marked `large` (big models, downloads)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-large"):
        return
    skip = pytest.mark.skip(reason="large test: pass --run-large to run it")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"keras backend: {keras.backend.backend()} (keras {keras.__version__})"


@pytest.fixture(autouse=True)
def _reset_state():
    keras.config.set_dtype_policy("float32")
    np.random.seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
