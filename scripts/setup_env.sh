#!/usr/bin/env bash
# Creates (or reuses) the virtual environment .venv and installs keras_ambient
# with a pinned CPU stack that was measured to install and work together.
# Usage: bash scripts/setup_env.sh [jax|torch|tensorflow|all]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
WHICH="${1:-all}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
COMMON=("keras==3.15.1" "numpy>=2,<2.5" "scikit-learn==1.9.1" "matplotlib==3.11.2" "pillow" "pytest==9.2.0"
        "scikit-image==0.26.0" "PyWavelets==1.9.0")  # skimage: noise-estimation comparison and tests
# torch==2.13.0 is the CPU wheel (an unpinned torch pulls a multi-GB CUDA build);
# GPU users install their own torch/jax/tensorflow instead.
# CHECK_BACKEND: a backend installed here, for the import check at the end (without
# KERAS_BACKEND and ~/.keras/keras.json, Keras would try TensorFlow).
case "$WHICH" in
  jax) BACKENDS=("jax[cpu]==0.10.2"); CHECK_BACKEND=jax ;;
  torch) BACKENDS=("torch==2.13.0"); CHECK_BACKEND=torch ;;
  tensorflow) BACKENDS=("tensorflow-cpu==2.21.0"); CHECK_BACKEND=tensorflow ;;
  all) BACKENDS=("jax[cpu]==0.10.2" "torch==2.13.0" "tensorflow-cpu==2.21.0"); CHECK_BACKEND=jax ;;
  *) echo "usage: $0 [jax|torch|tensorflow|all]" >&2; exit 2 ;;
esac
python -m pip install -q --no-compile "${COMMON[@]}" "${BACKENDS[@]}" 2>&1 | grep -v "^WARNING: Location" || true
# Installs that pip resolves come first, then the packages installed without their
# declared dependencies (pip's resolver would otherwise report those as conflicts).
# keras-hub's dependencies except tensorflow-text (which would pull full TensorFlow);
# kagglehub 1.0.2 is the newest whose kagglesdk pin agrees with keras-hub 0.32.0's
# (kagglesdk==0.1.28; kagglehub 1.0.3 needs >= 0.1.38).
python -m pip install -q --no-compile "kagglehub==1.0.2" "kagglesdk==0.1.28" sentencepiece tokenizers regex 2>&1 | grep -v "^WARNING: Location" || true
if [ "$WHICH" = all ]; then
  python -m pip install -q --no-compile "tensorflow-datasets" "dm-tree" 2>&1 | grep -v "^WARNING: Location" || true
fi
# keras-hub (DINOv2 features for memorization) without its tensorflow-text dependency.
python -m pip install -q --no-compile --no-deps "keras-hub==0.32.0" 2>&1 | grep -v "^WARNING: Location" || true
# keras-cv (Stable Diffusion 1.x path; no longer developed) for the test that compares
# its timestep embedding with ours; it declares keras-core, so install it without deps.
if [ "$WHICH" = all ]; then
  python -m pip install -q --no-compile --no-deps "keras-cv==0.9.0" 2>&1 | grep -v "^WARNING: Location" || true
fi
python -m pip install -q --no-deps -e . > .venv/install_editable.log 2>&1 || { cat .venv/install_editable.log; exit 1; }
KERAS_BACKEND=$CHECK_BACKEND python -c "import keras_ambient, keras; print('keras_ambient', keras_ambient.__version__, 'keras', keras.__version__, 'backend', keras.backend.backend())"
