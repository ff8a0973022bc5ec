#!/usr/bin/env bash
# Linear-probe and k-NN table on the Fashion-MNIST test set (probe and neighbours: all 60k
# train images; scored: all 10k test images), with E's avepool and BN+CReLU features, for raw
# pixels, E at initialisation (BatchNorm statistics measured on the data, and with the
# placeholder statistics that switch normalisation off), E after the embedded default run
# (1200 steps) and E after a long run of the same config (LONG_STEPS steps). Trains whichever
# run is missing, evaluates each row whose eval_*.json is missing into its workdir and prints a
# markdown table.
#
#   benchmarks/fashion_mnist_probe.sh          (from the repository root)
#
# PYTHON (default .venv/bin/python) and LONG_STEPS (default 16000) can be overridden.
set -euo pipefail

PY=${PYTHON:-.venv/bin/python}
LONG_STEPS=${LONG_STEPS:-16000}
CONFIG=configs/fashion_mnist.py
SHORT=runs/fashion_mnist
LONG=runs/fashion_mnist_long
AVEPOOL='feature-avepool_feat'
BN_CRELU='feature-bn_crelu_feat'
PLACEHOLDERS=init_bn_batches-0

timed() {  # timed LABEL COMMAND...: runs the command, logs its wall time to runs/benchmark_times.
  local start=$SECONDS
  "${@:2}"
  echo "$1 $((SECONDS - start))" >> runs/benchmark_times
}

evaluate() {  # evaluate WORKDIR NAME [ARGS...]: writes WORKDIR/eval_NAME.json unless it exists.
  if [ ! -f "$1/eval_$2.json" ]; then
    timed "eval_$2" "$PY" -m bigbigan_jax.evaluate --workdir="$1" "${@:3}"
  fi
}

mkdir -p runs
if [ ! -d "$SHORT/checkpoints/1200" ]; then
  timed train_default "$PY" -m bigbigan_jax.main --config=$CONFIG --workdir=$SHORT
fi
if [ ! -d "$LONG/checkpoints/$LONG_STEPS" ]; then
  timed train_long "$PY" -m bigbigan_jax.main --config=$CONFIG --workdir=$LONG \
    --config.num_train_steps="$LONG_STEPS" --config.keep_checkpoints=40
fi
evaluate $SHORT raw_pixels --raw_pixels
for feature in "_$AVEPOOL" "_$BN_CRELU"; do
  set_feature=(--set="${feature#_}"); set_feature=("${set_feature[@]/feature-/feature=}")
  evaluate $SHORT "0$feature" --init "${set_feature[@]}"
  evaluate $SHORT "0_$PLACEHOLDERS$feature" --init --set=init_bn_batches=0 "${set_feature[@]}"
  evaluate $SHORT "1200$feature" --step=1200 "${set_feature[@]}"
  evaluate $LONG "$LONG_STEPS$feature" --step="$LONG_STEPS" "${set_feature[@]}"
done

"$PY" - "$SHORT" "$LONG" "$LONG_STEPS" "$AVEPOOL" "$BN_CRELU" "$PLACEHOLDERS" <<'PYTHON'
import json, sys
short, long, long_steps, avepool, bn_crelu, placeholders = sys.argv[1:]
rows = [('E at initialisation, BN statistics measured on 20 train batches', f'{short}/eval_0'),
        ('E at initialisation, placeholder BN statistics (no normalisation)',
         f'{short}/eval_0_{placeholders}'),
        ('E after the default run (1200 steps)', f'{short}/eval_1200'),
        (f'E after {long_steps} steps of the same config', f'{long}/eval_{long_steps}')]
cells = lambda m: [f'{100 * m[k]:.2f}' for k in ('probe/top1', 'knn/cosine_k1', 'knn/cosine_k25')]
print('| Features | avepool: probe top-1 | 1-NN cos | 25-NN cos '
      '| BN+CReLU: probe top-1 | 1-NN cos | 25-NN cos |')
print('|---' * 7 + '|')
pixels = cells(json.load(open(f'{short}/eval_raw_pixels.json')))
print('| Raw pixels (32x32, D view) | ' + ' | '.join(pixels) + ' | | | |')
for name, stem in rows:
  pooled = cells(json.load(open(f'{stem}_{avepool}.json')))
  crelu = cells(json.load(open(f'{stem}_{bn_crelu}.json')))
  print(f'| {name} | ' + ' | '.join(pooled + crelu) + ' |')
PYTHON
