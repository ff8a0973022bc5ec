"""What `python -m bigbigan_jax.main` does once its flags are parsed: join the multi-process run,
train, and end every stop a user can act on with one line and an exit code."""

import os
import sys
from typing import Optional

import jax
from absl import logging

from bigbigan_jax import config_checks, parallel, run_dir, stop_requests, train
from bigbigan_jax.evaluation import evaluator

EXIT_INTERRUPTED = 130  # The shell's code for Ctrl-C: stopped by the user, do not restart.
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: saved after SIGTERM, please restart (launch/ uses this too).


def run(config, workdir: Optional[str], cluster: tuple = (None, None, None)) -> None:
  """Trains `config` in `workdir`; a problem the user can fix exits with one line.

  `cluster` is (coordinator address, process count, process id) of a multi-process run, each
  None to take it from the environment.
  """
  stop_requests.STOP.install()
  try:
    _run(config, workdir, cluster)
  finally:
    stop_requests.STOP.uninstall()


def _run(config, workdir: Optional[str], cluster: tuple) -> None:
  try:
    joined = parallel.initialize_distributed(*cluster)
  except ValueError as e:
    sys.exit(f'error: {e}')
  stop_requests.STOP.install()  # jax.distributed's preemption notifier took SIGTERM.
  logging.info('Process %d of %d (%s); %d local and %d global devices.', jax.process_index(),
               jax.process_count(), joined or 'single process', jax.local_device_count(),
               jax.device_count())
  workdir = workdir or os.path.join('runs', config.name)
  logging.info('Workdir: %s', workdir)
  try:
    train.train_and_evaluate(config, workdir, evaluator.periodic_evaluator(config, workdir))
  except train.Stopped as e:
    print(e, file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED if isinstance(e, train.Interrupted) else EXIT_PREEMPTED)
  except KeyboardInterrupt:
    print('Interrupted before a checkpoint could be saved; rerun the same command to resume '
          'from the newest one.', file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)
  except (config_checks.ConfigError, run_dir.TrainingStopped, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
