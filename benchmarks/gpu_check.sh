#!/usr/bin/env bash
# The GPU throughput check (issue 11): the paper config's train step at batch 128 on one GPU,
# d_steps 1 and 2, with and without remat and float32 residuals; images/s, MFU, peak memory.
#
# The GPU machine has JAX, flax, optax, orbax, chex and numpy but no ml_collections (which the
# configs need) or its PyYAML; their wheels travel with the work tree:
#   1. here, with PyPI:   bash benchmarks/gpu_check.sh fetch      # wheels for Python 3.12 -> .wheels/
#   2. device tool:       run(command="bash benchmarks/gpu_check.sh", carry=[".wheels"], timeout_s=600)
#      (optional, same warm machine: "bash benchmarks/gpu_check.sh more" for dense attention,
#      remat with float32 residuals, and d_steps 2 with remat)
# Pure-Python wheels import straight from the .whl files on PYTHONPATH (PyYAML without its C
# speed-up), so nothing is installed there. MFU is against the H100's measured 778 TFLOP/s (bf16
# matrix product, DESIGN.md), as issue 11's target is. Results: $OUT/train_step.jsonl (one JSON
# line per run), $OUT/gpu_check.log, and a 3-step profile of the first run in $OUT/trace.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=.wheels
PYTHON=${PYTHON:-python3}

if [[ "${1:-}" == fetch ]]; then
  mkdir -p "$WHEELS"
  exec "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 -d "$WHEELS" 'ml_collections>=1.0' 'PyYAML>=6'
fi

OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD$(printf ':%s' "$PWD/$WHEELS"/*.whl)"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}
export TF_CPP_MIN_LOG_LEVEL=2
"$PYTHON" -c 'import ml_collections' || {
  echo "ml_collections is missing: run 'bash benchmarks/gpu_check.sh fetch' first and carry .wheels." >&2
  exit 1
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null | tee "$OUT/gpu_check.log"

bench() {  # bench NAME FLAGS...: one benchmark run; a failure (e.g. out of memory) is logged.
  local name=$1; shift
  echo "== $name" | tee -a "$OUT/gpu_check.log"
  timeout 200 "$PYTHON" benchmarks/train_step.py --config=configs/imagenet128.py \
    --config.batch_size=128 --steps=10 --warmup=2 --peak_tflops=778 --json="$OUT/train_step.jsonl" "$@" \
    2>&1 | grep -v '^I0000\|^W0000' | tail -6 | tee -a "$OUT/gpu_check.log"
}

# Most important first: a run cut short by the time limit still returns the earlier lines.
# Each run compiles the step once (about a minute or two); `gpu_check.sh more` runs the rest in
# a second call.
if [[ "${1:-}" != more ]]; then
  bench d1 --config.optim.d_steps=1
  bench d1_f32res --config.optim.d_steps=1 --config.float32_residuals=True
  bench d1_remat --config.optim.d_steps=1 --config.model.remat=True
  bench d2 --config.optim.d_steps=2
  bench d1_profile --config.optim.d_steps=1 --steps=3 --warmup=1 --profile="$OUT/trace"  # Cached.
else
  bench d1_dense_attention --config.optim.d_steps=1 --config.model.attention=dense
  bench d1_remat_f32res --config.optim.d_steps=1 --config.model.remat=True --config.float32_residuals=True
  bench d2_remat --config.optim.d_steps=2 --config.model.remat=True
fi
