#!/usr/bin/env bash
# Fills a folder with the wheels benchmarks/gpu_check.sh installs offline on a GPU
# machine that has PyTorch and JAX (CUDA) but neither Keras nor TensorFlow, and no
# network: keras (the version installed here) with its dependencies, pillow,
# scikit-learn and pytest. numpy and scipy are left out (JAX brings them), which
# keeps the folder ~30 MB. The wheels are not committed (see .gitignore).
#
#   bash benchmarks/gpu_wheels.sh [DIR]          # default DIR: shared/wheels
#   GPU_PYTHON_VERSION=3.12 bash benchmarks/gpu_wheels.sh   # the GPU machine's Python
set -euo pipefail
DIR=${1:-shared/wheels}
PY=${PYTHON:-python}
PYVER=${GPU_PYTHON_VERSION:-$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
KERAS_VERSION=$($PY -c 'import keras; print(keras.__version__)' 2>/dev/null || echo 3.15.1)
mkdir -p "$DIR"
$PY -m pip download -q -d "$DIR" --only-binary=:all: --python-version "$PYVER" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any \
    "keras==$KERAS_VERSION" pillow scikit-learn "pytest>=8"
rm -f "$DIR"/numpy-*.whl "$DIR"/scipy-*.whl
echo "$(ls "$DIR" | wc -l) wheels in $DIR ($(du -sh "$DIR" | cut -f1)), for Python $PYVER:"
ls "$DIR"
