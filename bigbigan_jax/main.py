"""Trains BigBiGAN: python -m bigbigan_jax.main --config=configs/imagenet128.py [--workdir=...]."""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file; `path.py:arg` selects a variant.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs, images); default '
                    'runs/<config name>.')
flags.mark_flags_as_required(['config'])


def _quiet_library_logs() -> None:
  """Keeps orbax's per-save INFO lines out of the training log (warnings still show)."""
  logging.get_absl_logger().addFilter(
      lambda record: record.levelno >= logging.WARNING or '/orbax/' not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  _quiet_library_logs()
  # Imported after flag parsing so that --help and flag errors stay fast.
  from bigbigan_jax import config_checks, parallel, train  # pylint: disable=g-import-not-at-top
  from bigbigan_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top

  parallel.initialize_distributed()
  workdir = FLAGS.workdir or os.path.join('runs', FLAGS.config.name)
  logging.info('Workdir: %s', workdir)
  try:
    train.train_and_evaluate(FLAGS.config, workdir,
                             evaluator.periodic_evaluator(FLAGS.config, workdir))
  except (config_checks.ConfigError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
