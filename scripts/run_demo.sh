#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment, train on the built-in
# noisy digits (sigma_n = 0.2), write samples (PNG grid), metrics.json and the model.
# Usage: bash scripts/run_demo.sh [extra flags for examples/noisy_digits.py]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh jax
. .venv/bin/activate
export KERAS_BACKEND="${KERAS_BACKEND:-jax}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TF_CPP_MIN_LOG_LEVEL=3
python examples/noisy_digits.py --output-dir outputs/noisy_digits "$@"
