"""The embedded default trained on one GPU for a fixed time, then its curve scored (issue 20).

  bash benchmarks/gpu_learning_run.sh prepare   # here: wheels -> .wheels, data -> .gpu_data
  device tool: run(command="bash benchmarks/gpu_learning_run.sh",
                   carry=[".wheels", ".gpu_data"], timeout_s=600)

1. Trains `configs/fashion_mnist.py` (the in-memory path, reading the carried .npz caches) with
   a checkpoint every EVERY steps, and sends SIGTERM after TRAIN_S seconds: the run saves the
   step it stopped at and exits.
2. Scores the checkpoints in one process until DEADLINE (seconds from the start): the last
   first, then the first, then the midpoints between scored ones, so an early deadline still
   leaves a curve. Each row: the full protocol of `evaluate` (EMA of E, BN+CReLU; probe, 1-NN,
   25-NN) and the garment metrics (FD, KID, reconstruction class agreement). Raw pixels last.

Files in $OUT: gpu_learning_run.json (settings, steps/s, rows), train.log, and the last
step's sample and reconstruction grids. The dry run on CPU (a few steps, a small probe):
  OUT=/tmp/glr TRAIN_S=300 EVERY=10 STEPS=30 EVAL_SET=num_train_examples=2000 \
      GARMENT_SAMPLES=500 DEADLINE=1500 PYTHON=.venv/bin/python bash benchmarks/gpu_learning_run.sh
Settings (environment): OUT, TRAIN_S (300), EVERY (2000), STEPS (the most the run may take,
200000), DEADLINE (540), EVAL_SET (comma-separated `evaluate --set` values), GARMENT_SAMPLES
(10000), DATA (.gpu_data), WORKDIR (/tmp/gpu_learning_run).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

START = time.time()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.environ.get('OUT', '/tmp/gpu_learning_run_out')
TRAIN_S = int(os.environ.get('TRAIN_S', 300))
EVERY = int(os.environ.get('EVERY', 2000))
STEPS = int(os.environ.get('STEPS', 200_000))
DEADLINE = int(os.environ.get('DEADLINE', 540))
EVAL_SET = [s for s in os.environ.get('EVAL_SET', '').split(',') if s]
GARMENT_SAMPLES = int(os.environ.get('GARMENT_SAMPLES', 10_000))
DATA = os.path.abspath(os.environ.get('DATA', os.path.join(ROOT, '.gpu_data')))
WORKDIR = os.environ.get('WORKDIR', '/tmp/gpu_learning_run')
EVAL_ROW_S = 60  # An evaluation is not started with less time than this left.


def log(message: str) -> None:
  print(f'[{time.time() - START:6.0f} s] {message}', flush=True)


def train() -> dict:
  """Trains for TRAIN_S seconds; returns what the run's log says of its speed."""
  shutil.rmtree(WORKDIR, ignore_errors=True)
  command = [sys.executable, '-m', 'bigbigan_jax.main',
             f'--config={ROOT}/configs/fashion_mnist.py:steps={STEPS}', f'--workdir={WORKDIR}',
             f'--config.data.cache_dir={DATA}', f'--config.checkpoint_every_steps={EVERY}',
             '--config.keep_checkpoints=1000', f'--config.image_every_steps={EVERY}',
             f'--config.log_every_steps={max(EVERY // 10, 50)}']
  log('training: ' + ' '.join(command[1:]))
  with open(os.path.join(OUT, 'train.log'), 'w') as train_log:
    process = subprocess.Popen(command, cwd=ROOT, stdout=train_log, stderr=subprocess.STDOUT)
    try:
      process.wait(timeout=TRAIN_S)
    except subprocess.TimeoutExpired:
      process.send_signal(signal.SIGTERM)  # The run saves the step it is at and exits.
      process.wait()
  text = open(os.path.join(OUT, 'train.log')).read()
  speeds = [float(s) for s in re.findall(r'steps_per_sec=([0-9.]+)', text)]
  log(f'training ended with code {process.returncode}; steps/s reported: {speeds[-3:]}')
  return {'returncode': process.returncode, 'steps_per_sec': speeds}


def scoring_order(steps: list[int]) -> list[int]:
  """The last step, the first, then midpoints between steps already chosen."""
  if len(steps) < 3:
    return steps[::-1]
  order, spans = [steps[-1], steps[0]], [(0, len(steps) - 1)]
  while spans:
    low, high = spans.pop(0)
    if high - low > 1:
      middle = (low + high) // 2
      order.append(steps[middle])
      spans += [(low, middle), (middle, high)]
  return order


def score(steps: list[int]) -> list[dict]:
  from bigbigan_jax.evaluation import garment_metrics, run_evaluation  # After training: its GPU.
  rows = []
  for step in scoring_order(steps) + ['raw_pixels']:
    if time.time() - START > DEADLINE - EVAL_ROW_S:
      log(f'deadline: not scored: {step}')
      continue
    begin = time.time()
    if step == 'raw_pixels':
      _, metrics = run_evaluation.evaluate_run(WORKDIR, raw_pixels=True, settings=EVAL_SET)
    else:
      _, metrics = run_evaluation.evaluate_run(WORKDIR, step=step, settings=EVAL_SET)
      metrics.update(garment_metrics.run_metrics(WORKDIR, step=step,
                                                 num_samples=GARMENT_SAMPLES)[1])
    row = {'step': step, 'seconds': round(time.time() - begin, 1)}
    row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    rows.append(row)
    log(f"{step}: probe {row['probe/top1']:.2%}, 1-NN {row['knn/cosine_k1']:.2%}"
        + (f", FD {row['garment/fd']:.1f}, G(E(x)) keeps x's class "
           f"{row['garment/recon_agreement']:.1%}" if 'garment/fd' in row else '')
        + f' ({row["seconds"]:.0f} s)')
    write(rows=rows)
  return rows


def write(**parts) -> None:
  path = os.path.join(OUT, 'gpu_learning_run.json')
  results = json.load(open(path)) if os.path.exists(path) else {}
  results.update(parts)
  with open(path, 'w') as f:
    json.dump(results, f, indent=1, sort_keys=True)


def main() -> None:
  os.makedirs(OUT, exist_ok=True)
  for split in ('train', 'test'):
    if not os.path.exists(os.path.join(DATA, f'fashion_mnist_local-{split}.npz')):
      sys.exit(f'error: {DATA} lacks fashion_mnist_local-{split}.npz: run '
               "'bash benchmarks/gpu_learning_run.sh prepare' here and carry .gpu_data.")
  write(settings={'train_s': TRAIN_S, 'every': EVERY, 'eval_set': EVAL_SET,
                  'garment_samples': GARMENT_SAMPLES})
  write(training=train())
  # This process takes the GPU only now, once training has given it back.
  import jax  # pylint: disable=g-import-not-at-top
  write(device=jax.devices()[0].device_kind)
  checkpoints = os.path.join(WORKDIR, 'checkpoints')
  steps = sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit())
  log(f'checkpoints: {steps}')
  score(steps)
  images = os.path.join(WORKDIR, 'images')
  for name in sorted(os.listdir(images)) if os.path.isdir(images) else []:
    if name.endswith(f'_{steps[-1]:07d}.png'):
      shutil.copy(os.path.join(images, name), OUT)
  log('done')


if __name__ == '__main__':
  main()
