"""Evaluates a training run: python -m bigbigan_jax.evaluate --workdir=runs/NAME [--step=N].

Restores a checkpoint (default: the newest) with the run's config.json, runs the Evaluator
(linear probe, k-NN, FID/IS when Inception weights are given, grids) and writes the metrics to
`<workdir>/eval_<step>.json`. `--init` evaluates the run's freshly initialised state instead
(written as eval_0.json; E's BatchNorm statistics, placeholders at initialisation, are first
measured on `eval.init_bn_batches` train batches), `--raw_pixels` the raw-pixel baseline
(eval_raw_pixels.json). The E evaluated is the EMA the train step keeps (optim.e_ema_decay;
E itself at decay 0); `--live_encoder` evaluates E itself (eval_<step>_live_encoder.json).

`--set=KEY=VALUE` (repeatable) changes one of the run's `config.eval` settings for this
evaluation only, e.g. `--set=feature=bn_crelu_feat` or `--set=inception_weights=fid.npz`; the
file name then carries the settings (eval_4000_feature-bn_crelu_feat.json), so results of other
settings are kept.
"""

import sys

from absl import app, flags

from bigbigan_jax import config_checks, parallel, run_log
from bigbigan_jax.evaluation import run_evaluation

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run directory holding config.json and checkpoints/.')
flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate; default the newest.')
flags.DEFINE_bool('init', False, "Evaluate the run's initial state (seeded by config.seed) "
                  'instead of a checkpoint.')
flags.DEFINE_bool('raw_pixels', False, "Evaluate the raw-pixel baseline (flattened D's view) "
                  'instead of E.')
flags.DEFINE_bool('live_encoder', False, "Evaluate the checkpoint's E itself instead of its EMA "
                  '(optim.e_ema_decay); written as eval_<step>_live_encoder.json.')
flags.DEFINE_multi_string('set', [], 'KEY=VALUE: change the config.eval setting KEY for this '
                          'evaluation (repeatable), e.g. feature=bn_crelu_feat.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  run_log.quiet_library_logs(FLAGS.verbosity)
  try:
    parallel.initialize_distributed()
  except ValueError as e:  # Incomplete multi-process settings.
    sys.exit(f'error: {e}')
  try:
    run_evaluation.evaluate_run(FLAGS.workdir, step=FLAGS.step, init=FLAGS.init,
                                raw_pixels=FLAGS.raw_pixels, live_encoder=FLAGS.live_encoder,
                                settings=FLAGS.set)
  except (run_evaluation.UsageError, config_checks.ConfigError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
