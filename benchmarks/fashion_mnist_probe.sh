#!/usr/bin/env bash
# Linear-probe and k-NN table on the Fashion-MNIST test set (probe and neighbours: all 60k
# train images; scored: all 10k test images) for raw pixels, E at initialisation, E after the
# embedded default run (1200 steps) and E after a 4000-step run. Trains whichever run is
# missing, evaluates each row into its workdir's eval_*.json and prints a markdown table.
#
#   benchmarks/fashion_mnist_probe.sh          (from the repository root)
#
# PYTHON (default .venv/bin/python) and LONG_STEPS (default 4000) can be overridden.
set -euo pipefail

PY=${PYTHON:-.venv/bin/python}
LONG_STEPS=${LONG_STEPS:-4000}
CONFIG=configs/fashion_mnist.py
SHORT=runs/fashion_mnist
LONG=runs/fashion_mnist_long

timed() {  # timed LABEL COMMAND...: runs the command, logs its wall time to runs/benchmark_times.
  local start=$SECONDS
  "${@:2}"
  echo "$1 $((SECONDS - start))" >> runs/benchmark_times
}

mkdir -p runs
if [ ! -d "$SHORT/checkpoints/1200" ]; then
  timed train_default "$PY" -m bigbigan_jax.main --config=$CONFIG --workdir=$SHORT
fi
if [ ! -d "$LONG/checkpoints/$LONG_STEPS" ]; then
  timed train_long "$PY" -m bigbigan_jax.main --config=$CONFIG --workdir=$LONG \
    --config.num_train_steps="$LONG_STEPS"
fi
timed eval_raw_pixels "$PY" -m bigbigan_jax.evaluate --workdir=$SHORT --raw_pixels
timed eval_init "$PY" -m bigbigan_jax.evaluate --workdir=$SHORT --init
timed eval_default "$PY" -m bigbigan_jax.evaluate --workdir=$SHORT --step=1200
timed eval_long "$PY" -m bigbigan_jax.evaluate --workdir=$LONG --step="$LONG_STEPS"

"$PY" - "$SHORT" "$LONG" "$LONG_STEPS" <<'EOF'
import json, sys
short, long, long_steps = sys.argv[1:]
rows = [('Raw pixels (32x32, D view)', f'{short}/eval_raw_pixels.json'),
        ('E at initialisation', f'{short}/eval_0.json'),
        ('E after the default run (1200 steps)', f'{short}/eval_1200.json'),
        (f'E after {long_steps} steps', f'{long}/eval_{long_steps}.json')]
keys = ['probe/top1', 'probe/top5', 'knn/cosine_k1', 'knn/euclidean_k1', 'knn/cosine_k25',
        'knn/euclidean_k25']
print('| Features | ' + ' | '.join(keys) + ' |')
print('|---' * (len(keys) + 1) + '|')
for name, path in rows:
  m = json.load(open(path))
  print(f'| {name} | ' + ' | '.join(f'{100 * m[k]:.2f}' for k in keys) + ' |')
EOF
