#!/usr/bin/env bash
# The test suite on all three Keras backends, on a fresh machine: set up the
# environment, then run pytest once per backend. Extra arguments go to pytest
# (e.g. -m "not slow").
#
# The three runs are independent processes (KERAS_BACKEND is fixed per process),
# so they run side by side, one thread each (OMP_NUM_THREADS=1), each with its
# own pytest temp folder; their logs are printed one after the other when all
# have finished. KA_TEST_SEQUENTIAL=1 runs them one after the other instead.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh all || exit 1
. .venv/bin/activate
# KERAS_BACKEND is set per run below; KERAS_HOME keeps the user's ~/.keras/keras.json
# (floatx, image_data_format) out of the tests.
export OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=3 PYTHONDONTWRITEBYTECODE=1 KERAS_HOME="$PWD/.venv/keras_home"
logs="$(mktemp -d)"
run_backend() {
  local backend=$1; shift
  local start rc
  start=$(date +%s)
  # JAX (XLA compiles) is the longest run: the other two yield the CPU to it.
  local nice_level=0
  [ "$backend" != "jax" ] && nice_level=5
  KERAS_BACKEND=$backend nice -n "$nice_level" python -m pytest -q -p no:cacheprovider \
    --basetemp="$logs/tmp_$backend" "$@" > "$logs/$backend.log" 2>&1
  rc=$?
  echo "KERAS_BACKEND=$backend: pytest exit $rc in $(( $(date +%s) - start )) s" >> "$logs/$backend.log"
  echo "$rc" > "$logs/$backend.rc"
}
backends=(jax torch tensorflow)
start=$(date +%s)
if [ "${KA_TEST_SEQUENTIAL:-0}" = "1" ]; then
  for b in "${backends[@]}"; do run_backend "$b" "$@"; done
else
  for b in "${backends[@]}"; do run_backend "$b" "$@" & done
  wait
fi
status=0
for b in "${backends[@]}"; do
  echo "=================== KERAS_BACKEND=$b ==================="
  cat "$logs/$b.log"
  [ "$(cat "$logs/$b.rc" 2>/dev/null || echo 1)" -ne 0 ] && status=1
done
echo "all backends: $(( $(date +%s) - start )) s; exit $status"
rm -rf "$logs"
exit $status
