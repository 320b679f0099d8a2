#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment, train on the built-in
# noisy digits (sigma_n = 0.2), write samples (PNG grid), metrics.json and the model.
# Usage: bash scripts/run_demo.sh [extra flags for examples/noisy_digits.py]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh jax
. .venv/bin/activate
# Independent of the user's KERAS_BACKEND and ~/.keras/keras.json: jax (the backend
# installed above) and Keras's default config in .venv/keras_home. For another
# backend: KERAS_BACKEND=torch python examples/noisy_digits.py.
export KERAS_BACKEND=jax KERAS_HOME="$PWD/.venv/keras_home" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TF_CPP_MIN_LOG_LEVEL=3
python examples/noisy_digits.py --output-dir outputs/noisy_digits "$@"
