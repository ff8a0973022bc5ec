#!/usr/bin/env bash
# The GPU throughput check (issues 11 and 17): the paper config's train step at batch 128 on one
# GPU; images/s, MFU from the model FLOPs, peak memory, a profile. benchmarks/gpu_check.py runs it.
#
# The GPU machine has JAX, flax, optax, orbax, chex, numpy and PyYAML but no ml_collections
# (which the configs need); its wheels travel with the work tree:
#   1. here, with PyPI:   bash benchmarks/gpu_check.sh fetch      # wheels for Python 3.12 -> .wheels/
#   2. device tool:       run(command="bash benchmarks/gpu_check.sh", carry=[".wheels"], timeout_s=600)
#      (optional, another call: "bash benchmarks/gpu_check.sh more" for the other attention,
#      remat with float32 residuals, and d_steps 2 with remat)
# Pure-Python wheels import straight from the .whl files on PYTHONPATH, so nothing is installed.
#
# It runs an attention preflight (cuDNN fused against dense attention in bf16 at the model's
# attention shapes; chunked attention if the fused path fails), then the benchmark runs under
# one DEADLINE (540 s), most important first, and writes to $OUT: gpu_check.log (every
# process's full output), gpu_check.json (settings, preflight, every run, skipped ones too) and
# profile/ (the first run's trace, flat). MFU = model FLOPs (XLA's count on CPU with dense
# attention, benchmarks/model_flops.json) per second over 989 TFLOP/s, the H200's nominal dense
# bf16; XLA's count of the GPU program (cuDNN/cuBLAS calls at -1 FLOP) is kept beside it.
#
# CPU dry run of the whole path (tiny config: FLOPs counted on CPU, the preflight finds no cuDNN
# and falls back to chunked attention):
#   OUT=/tmp/dry CONFIG=configs/tiny.py BATCH=8 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
# Settings (environment): OUT, CONFIG, BATCH, STEPS, WARMUP, DEADLINE, MIN_RUN_S, PEAK_TFLOPS,
# RUNS, ATTENTION, PYTHON; see benchmarks/gpu_check.py. `gpu_check.sh flops` (on CPU) counts
# the model FLOPs missing from benchmarks/model_flops.json.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
WHEELS=.wheels
PYTHON=${PYTHON:-python3}

if [[ "${1:-}" == fetch ]]; then
  mkdir -p "$WHEELS"
  exec "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 -d "$WHEELS" 'ml_collections>=1.0' 'PyYAML>=6'
fi

# shellcheck source=benchmarks/gpu_wheels.sh
source benchmarks/gpu_wheels.sh 'bash benchmarks/gpu_check.sh fetch'
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export PYTHON
exec "$PYTHON" -u benchmarks/gpu_check.py "$@"
