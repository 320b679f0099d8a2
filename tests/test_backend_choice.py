"""Choosing the Keras backend on a fresh machine (no KERAS_BACKEND, no keras.json),
and the command line reading its arguments before Keras is imported."""

import io
import json
import os
import subprocess
import sys

import pytest

from keras_ambient import cli
from keras_ambient.utils import backend_choice as bc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_find_spec(*installed):
    return lambda name: object() if name in installed else None


def choose(environ, *installed, **kwargs):
    stream = io.StringIO()
    choice = bc.choose_backend(environ, find_spec=fake_find_spec(*installed), stream=stream,
                               modules={}, **kwargs)
    return choice, stream.getvalue()


# ------------------------------------------------------------------ chooser
@pytest.mark.parametrize("installed, expected", [
    (("jax", "torch", "tensorflow"), "jax"),
    (("torch", "tensorflow"), "torch"),
    (("tensorflow",), "tensorflow"),
])
def test_priority_when_nothing_is_configured(tmp_path, installed, expected):
    env = {"KERAS_HOME": str(tmp_path / "kh")}
    choice, message = choose(env, *installed)
    assert choice == expected and env["KERAS_BACKEND"] == expected
    assert f"using the installed '{expected}' backend" in message and "Keras would use" in message
    # keras.json is written with the choice, so the next run agrees (Keras would write "tensorflow").
    config = json.loads((tmp_path / "kh" / "keras.json").read_text())
    assert config["backend"] == expected
    assert choose(dict(env, KERAS_BACKEND=""), *installed) == (expected, "")


def test_configured_backend_is_kept(tmp_path):
    env = {"KERAS_HOME": str(tmp_path), "KERAS_BACKEND": "tensorflow"}
    assert choose(env, "jax", "tensorflow") == ("tensorflow", "")
    assert env["KERAS_BACKEND"] == "tensorflow"
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "torch"}))
    env = {"KERAS_HOME": str(tmp_path)}
    assert choose(env, "jax", "torch") == ("torch", "") and "KERAS_BACKEND" not in env


def test_configured_backend_not_installed(tmp_path):
    # An explicit KERAS_BACKEND is never overridden, even when it is not installed.
    env = {"KERAS_BACKEND": "tensorflow", "KERAS_HOME": str(tmp_path)}
    choice, message = choose(env, "jax")
    assert choice == "tensorflow" and env["KERAS_BACKEND"] == "tensorflow" and message == ""
    # keras.json naming a missing backend (Keras writes "tensorflow" at its first import).
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "tensorflow"}))
    env = {"KERAS_HOME": str(tmp_path)}
    choice, message = choose(env, "torch")
    assert choice == "torch" and "keras.json) is not installed" in message
    assert json.loads((tmp_path / "keras.json").read_text())["backend"] == "tensorflow"  # untouched


def test_nothing_to_do(tmp_path):
    env = {"KERAS_HOME": str(tmp_path)}
    assert choose(env) == (None, "") and env == {"KERAS_HOME": str(tmp_path)}  # no backend installed
    (tmp_path / "keras.json").write_text("{not json")
    choice, _ = choose(env, "torch")
    assert choice == "torch" and (tmp_path / "keras.json").read_text() == "{not json"
    # Once Keras is imported the choice is Keras's.
    assert bc.choose_backend({}, find_spec=fake_find_spec("jax"), modules={"keras": None}) is None
    assert bc.keras_config_path({"HOME": str(tmp_path)}) == str(tmp_path / ".keras" / "keras.json")


# ------------------------------------------------------ cli.prepare (in process)
def test_prepare_sets_backend_and_checks_it(monkeypatch, capsys):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setattr(bc, "is_installed", lambda backend, find_spec=None: True)
    args = cli.prepare(["estimate-noise", "digits", "--backend", "torch"])
    assert args.command == "estimate-noise" and os.environ["KERAS_BACKEND"] == "torch"
    monkeypatch.setattr(bc, "is_installed", lambda backend, find_spec=None: backend != "tensorflow")
    with pytest.raises(SystemExit) as e:
        cli.prepare(["train", "digits", "--backend", "tensorflow"])
    assert e.value.code == 2
    assert "'tensorflow' backend is not installed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.prepare(["--help"])
    assert e.value.code == 0


def test_module_being_run(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["-m", "--help"])
    monkeypatch.setattr(sys, "orig_argv", ["python", "-X", "importtime", "-m", "keras_ambient", "--help"])
    assert cli._module_being_run() == "keras_ambient"
    monkeypatch.setattr(sys, "orig_argv", ["python", "-mkeras_ambient.cli"])
    assert cli._module_being_run() == "keras_ambient.cli"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest"])
    assert cli._module_being_run() is None
    assert not cli.launched_from_command_line()  # Keras is imported in this process


# ------------------------------------------------------ subprocesses
def fresh_env(tmp_path):
    """A fresh machine: empty HOME (no ~/.keras/keras.json), no KERAS_BACKEND."""
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "KERAS_HOME")}
    env.update(HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")
    os.makedirs(env["HOME"], exist_ok=True)
    return env


# Runs the console script's entry point; prints the backend Keras used at exit.
LAUNCHER = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('KERAS_IMPORTED', 'keras' in sys.modules, "
    "sys.modules['keras'].backend.backend() if 'keras' in sys.modules else None))\n"
    "sys.argv = ['keras-ambient'] + sys.argv[1:]\n"
    "import keras_ambient_launcher\n"
    "sys.exit(keras_ambient_launcher.main())\n"
)


def run(args, env, timeout=600):
    return subprocess.run([sys.executable] + args, env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def imported_modules(importtime_stderr):
    return {line.split("|")[-1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:")}


def test_help_and_argument_errors_do_not_import_keras(tmp_path):
    env = fresh_env(tmp_path)
    proc = run(["-X", "importtime", "-m", "keras_ambient", "--help"], env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "estimate-noise" in proc.stdout and "keras" not in imported_modules(proc.stderr)
    proc = run(["-c", LAUNCHER, "train", "digits", "--epochs", "0"], env, timeout=120)
    assert proc.returncode == 2 and "expected a positive integer" in proc.stderr
    assert "KERAS_IMPORTED False" in proc.stdout
    proc = run(["-c", LAUNCHER, "sample", "--help"], env, timeout=120)
    assert proc.returncode == 0 and "--num" in proc.stdout and "KERAS_IMPORTED False" in proc.stdout
    assert not os.path.exists(tmp_path / "home" / ".keras")


@pytest.mark.one_backend
def test_fresh_machine_backend(tmp_path):
    """`--backend` is honoured, and without it an installed backend is chosen (jax first)."""
    installed = bc.installed_backends()
    wanted = installed[1] if len(installed) > 1 else installed[0]  # not the chooser's pick
    env = fresh_env(tmp_path)
    proc = run(["-c", LAUNCHER, "estimate-noise", "digits", "--json", "--backend", wanted], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"KERAS_IMPORTED True {wanted}" in proc.stdout
    assert "sigma_n_estimate" in proc.stdout
    env = fresh_env(tmp_path / "2")
    proc = run(["-m", "keras_ambient", "estimate-noise", "digits", "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"using the installed '{installed[0]}' backend" in proc.stderr
    keras_json = tmp_path / "2" / "home" / ".keras" / "keras.json"
    assert json.loads(keras_json.read_text())["backend"] == installed[0]
