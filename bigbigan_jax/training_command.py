"""What `python -m bigbigan_jax.main` does once its flags are parsed: join the multi-process run,
train, and end every stop a user can act on with one line and an exit code."""

import os
import sys
from typing import Optional

import jax
from absl import logging

from bigbigan_jax import config_checks, parallel, run_dir, train
from bigbigan_jax.evaluation import evaluator

EXIT_INTERRUPTED = 130  # The shell's code for Ctrl-C.


def run(config, workdir: Optional[str], cluster: tuple = (None, None, None)) -> None:
  """Trains `config` in `workdir`; a problem the user can fix exits with one line.

  `cluster` is (coordinator address, process count, process id) of a multi-process run, each
  None to take it from the environment.
  """
  try:
    joined = parallel.initialize_distributed(*cluster)
  except ValueError as e:
    sys.exit(f'error: {e}')
  logging.info('Process %d of %d (%s); %d local and %d global devices.', jax.process_index(),
               jax.process_count(), joined or 'single process', jax.local_device_count(),
               jax.device_count())
  workdir = workdir or os.path.join('runs', config.name)
  logging.info('Workdir: %s', workdir)
  try:
    train.train_and_evaluate(config, workdir, evaluator.periodic_evaluator(config, workdir))
  except train.Interrupted as e:
    print(e, file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)
  except KeyboardInterrupt:
    print('Interrupted before a checkpoint could be saved; rerun the same command to resume '
          'from the newest one.', file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)
  except (config_checks.ConfigError, run_dir.TrainingStopped, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
