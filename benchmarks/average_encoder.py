"""E with its weights averaged over several checkpoints of one run, scored with the full protocol.

  python benchmarks/average_encoder.py --workdir=runs/fm_default_long --steps=4000,6000,8000

What averaging E's weights over training gives, without training again (the train step's own
average is the EMA of optim.e_ema_decay): the mean of the trained E's parameters over
the given checkpoints, E's BatchNorm statistics measured for those weights on `--bn_batches`
train batches (as `evaluate --init` does for a fresh E), then the run's own evaluation (linear
probe, k-NN). With one step it scores that checkpoint with re-measured statistics, the control.
Writes `<workdir>/eval_average_<steps>.json`; features go to a scratch directory, deleted after.
"""

import json
import shutil
import sys
import tempfile

import jax
from absl import app, flags, logging

from bigbigan_jax import run_dir
from bigbigan_jax.evaluation import encoder_statistics, evaluator

FLAGS = flags.FLAGS


def define_flags() -> None:  # At run time only: tests import this file beside other commands.
  flags.DEFINE_string('workdir', None, 'A training run directory.', required=True)
  flags.DEFINE_list('steps', None, 'Checkpoint steps whose E weights are averaged.', required=True)
  flags.DEFINE_integer('bn_batches', 50, "Train batches (eval.batch_size each) measuring E's "
                       'BatchNorm statistics for the averaged weights.')


def average_and_evaluate(workdir: str, steps: list[int], bn_batches: int) -> tuple[str, dict]:
  """(path of the JSON written, metrics) of E averaged over `steps` of the run in `workdir`."""
  workdir = run_dir.path(workdir)
  config = run_dir.load_config(workdir)
  for step in steps:
    run_dir.chosen_step(workdir, step, 'train first')
  scratch = run_dir.path(tempfile.mkdtemp(prefix='average_encoder_'))
  try:
    evaluate = evaluator.Evaluator(config, scratch)
    states = [run_dir.read_checkpoint(workdir, step, config, evaluate.mesh) for step in steps]
    e_params = jax.tree.map(lambda *leaves: sum(leaves) / len(leaves),
                            *[state.e_params for state in states])
    e_batch_stats = encoder_statistics.measure(config, evaluate.mesh, e_params,
                                               states[-1].e_batch_stats, config.data.train_split,
                                               bn_batches)
    averaged = states[-1].replace(e_ema_params=e_params, e_ema_batch_stats=e_batch_stats)
    metrics = evaluate(averaged, steps[-1])
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  metrics['averaged_steps'] = steps
  path = workdir / f'eval_average_{"_".join(map(str, steps))}.json'
  if jax.process_index() == 0:
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + '\n')
  return str(path), metrics


def main(argv):
  del argv
  if not all(s.isdigit() for s in FLAGS.steps):
    sys.exit(f'error: --steps takes checkpoint steps such as 4000,6000,8000, not {FLAGS.steps}.')
  try:
    path, metrics = average_and_evaluate(FLAGS.workdir, [int(s) for s in FLAGS.steps],
                                         FLAGS.bn_batches)
  except (FileNotFoundError, run_dir.MissingCheckpoint) as e:
    sys.exit(f'error: {e}')
  print(f'E averaged over steps {metrics["averaged_steps"]}: probe {metrics["probe/top1"]:.2%}, '
        f'1-NN {metrics["knn/cosine_k1"]:.2%}, 25-NN {metrics["knn/cosine_k25"]:.2%}; '
        f'wrote {path}')


if __name__ == '__main__':
  define_flags()
  logging.set_verbosity(logging.WARNING)
  app.run(main)
