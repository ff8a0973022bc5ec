# shellcheck shell=bash
# Sourced by gpu_check.sh and gpu_learning_run.sh (the GPU machine has no ml_collections): puts
# the repository and the carried wheels (.wheels/*.whl, from `gpu_check.sh fetch`) on PYTHONPATH
# and stops the script with one line if ml_collections still does not import. $1: the command
# that prepares the wheels.
shopt -s nullglob
path=$PWD
for wheel in "$PWD"/.wheels/*.whl; do path+=":$wheel"; done
export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}
export PYTHONUNBUFFERED=1
error=$("$PYTHON" -c 'import ml_collections' 2>&1) || {
  echo "ml_collections does not import (${error##*$'\n'}): run '$1' first and carry .wheels." >&2
  exit 1
}
