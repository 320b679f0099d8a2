#!/usr/bin/env bash
# GPU check of keras_ambient (docs/performance.md, "GPU check"): on a machine with one
# NVIDIA GPU, PyTorch and JAX (CUDA) preinstalled, Keras and TensorFlow not installed
# and no network, within ~8 minutes:
#   1. installs keras, pillow, scikit-learn and pytest from a folder of wheels
#      (GPU_WHEELS, default shared/wheels; fill it beforehand with
#      benchmarks/gpu_wheels.sh on a machine with the package index);
#   2. runs a fast subset of the tests on JAX and torch (-m "not slow" and a -k
#      selection: sampling, generate/denoise, the fast paths, the torch reference);
#   3. prints the training throughput table (32x32 U-Net, batch 128, float32 and
#      mixed_bfloat16, with and without consistency: with the library's default of
#      the consistency loss on one step in three, the mean step) and the sampling table
#      (Heun 18/40, 128 images) of the Keras backends against plain PyTorch on the
#      same GPU, in the format of benchmarks/speed.py and sampling_speed.py.
# Every stage has a time limit, taken from what is left of GPU_CHECK_BUDGET (470 s;
# smoke mode: limits and budget x GPU_CHECK_SCALE, default 4).
#
#   bash benchmarks/gpu_check.sh                     # on the GPU machine
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh   # tiny sizes, CPU, installed env
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${GPU_WHEELS:-shared/wheels}
SMOKE=${GPU_CHECK_SMOKE:-0}
# Smoke mode (CPU, tiny sizes): compilation on a shared CPU is slow, so every limit x4.
SCALE=${GPU_CHECK_SCALE:-$(( SMOKE ? 4 : 1 ))}
BUDGET=${GPU_CHECK_BUDGET:-$(( 470 * SCALE ))}
PY=${PYTHON:-python}
START=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TF_CPP_MIN_LOG_LEVEL=3
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX and torch share the GPU in one run
log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*"; }
# Seconds for a stage: at most $1, and what is left of the budget minus $2 (reserved).
limit() {
  local want=$(( $1 * SCALE )) left=$(( BUDGET - ($(date +%s) - START) - ${2:-0} * SCALE ))
  (( left < want )) && echo $(( left > 10 ? left : 10 )) || echo "$want"
}
run() { local t=$1; shift; log "(limit ${t}s) $*"; timeout --kill-after=10 "$t" "$@"; local rc=$?; (( rc == 124 )) && log "TIMED OUT after ${t}s: $*"; return $rc; }

if (( SMOKE )); then
  NETS=digits8; BASE=8; BATCH=8; STEPS=3; N=4
  TESTS=(tests/test_backend_fast_paths.py tests/test_torch_reference.py)
  K="generic_path or mlp_reference"
else
  NETS=img32; BASE=32; BATCH=128; STEPS=20; N=128
  TESTS=(tests/test_backend_fast_paths.py tests/test_torch_reference.py tests/test_samplers.py tests/test_model.py)
  K="fast or reference or heun or euler or ancestral or truncated or generate or denoise or ema"
fi

# 1. Install (skipped when Keras is already importable).
if ! $PY -c "import keras" 2>/dev/null; then
  run "$(limit 120)" $PY -m pip install -q --no-index --find-links "$WHEELS" keras pillow scikit-learn "pytest>=8" \
    || { log "installation from $WHEELS failed"; exit 1; }
elif [[ -d "$WHEELS" ]]; then
  log "keras installed already; checking that $WHEELS resolves offline (dry run)"
  run "$(limit 60)" $PY -m pip install -q --dry-run --no-index --find-links "$WHEELS" keras pillow scikit-learn "pytest>=8"
fi
$PY - <<'PYEOF'
import importlib
for name in ("keras", "jax", "torch"):
    try:
        m = importlib.import_module(name)
        print(f"  {name} {m.__version__}")
    except Exception as e:  # noqa: BLE001
        print(f"  {name}: not importable ({e})")
try:
    import torch
    print("  torch cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    import jax
    print("  jax devices:", jax.devices())
except Exception as e:  # noqa: BLE001
    print("  device query failed:", e)
PYEOF

# 2. Fast tests, per backend.
for b in jax torch; do
  KERAS_BACKEND=$b run "$(limit 75 330)" $PY -m pytest -q -x -p no:cacheprovider -m "not slow" -k "$K" "${TESTS[@]}" 2>&1 | tail -4
done

# 3. Throughput tables (one repeat on a dedicated GPU; per-worker limits inside).
for policy in float32 mixed_bfloat16; do
  t=$(limit 110 100)
  run "$t" $PY benchmarks/speed.py --backends jax,torch --sections train,consistency --nets $NETS \
      --cons-nets $NETS --no-cheap --base-channels $BASE --batch $BATCH --steps $STEPS \
      --dtype-policy $policy --repeats 1 --timeout $(( t / 2 )) 2>&1 | grep -v "^WARNING\|^I0000\|^E0000\|^W0000"
done
for policy in float32 mixed_bfloat16; do
  t=$(limit 45)
  run "$t" $PY benchmarks/sampling_speed.py --backends jax,torch --nets $NETS --n $N \
      --base-channels $BASE --repeats 1 --no-old --dtype-policy $policy --timeout $(( t / 2 )) \
      2>&1 | grep -v "^WARNING\|^I0000\|^E0000\|^W0000"
done
log "done"
