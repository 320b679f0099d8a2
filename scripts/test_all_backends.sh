#!/usr/bin/env bash
# The test suite on all three Keras backends, on a fresh machine: set up the
# environment, then run pytest once per backend. Extra arguments go to pytest
# (e.g. -m "not slow").
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh all || exit 1
. .venv/bin/activate
# KERAS_BACKEND is set per run below; KERAS_HOME keeps the user's ~/.keras/keras.json
# (floatx, image_data_format) out of the tests.
export OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=3 PYTHONDONTWRITEBYTECODE=1 KERAS_HOME="$PWD/.venv/keras_home"
status=0
for backend in jax torch tensorflow; do
  echo "=================== KERAS_BACKEND=$backend ==================="
  start=$(date +%s)
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider "$@"
  rc=$?
  echo "KERAS_BACKEND=$backend: pytest exit $rc in $(( $(date +%s) - start )) s"
  [ $rc -ne 0 ] && status=1
done
exit $status
