"""Trains BigBiGAN: python -m bigbigan_jax.main --config=configs/imagenet128.py [--workdir=...]."""

import re
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file; `path.py:arg` selects a variant.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs, images); default '
                    'runs/<config name>.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 in a multi-process run '
                    'outside Cloud TPU, SLURM or Open MPI (or $JAX_COORDINATOR_ADDRESS).')
flags.DEFINE_integer('num_processes', None, 'Processes in that run (or $JAX_NUM_PROCESSES).')
flags.DEFINE_integer('process_id', None, "This process's index in it (or $JAX_PROCESS_ID).")
flags.mark_flags_as_required(['config'])


def _config_flag_problem(argv: list[str], error: BaseException) -> str:
  """One sentence for a --config flag that cannot be used."""
  while error.args and isinstance(error.args[0], BaseException):  # ml_collections nests them.
    error = error.args[0]
  text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
  if 'Failed loading config file' in text:
    path = re.search(r'Attempted \[.*?\]:\s*(\S+)', text)
    reason = re.search(r'\[Errno \d+\] ([^:\n]+)', text)
    return (f'cannot load the config file {path.group(1) if path else ""} '
            f'({reason.group(1) if reason else text.splitlines()[-1]}).')
  unknown = re.search(r"'([^'\\]+)'.*Did you mean \"([^\"]+)\"", text, re.S)
  if unknown:
    used = next((a.split('=')[0] for a in argv if unknown.group(1) in a), unknown.group(1))
    return f'{used} is not a config field; did you mean {unknown.group(2)}?'
  if isinstance(error, (KeyError, AttributeError)):
    used = next((a.split('=')[0] for a in argv if a.startswith('--config.')), '--config')
    return f'{used} names no config field ({text.strip()}); see bigbigan_jax/default_config.py.'
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  return f'{lines[0].rstrip(":")}: {lines[-1]}' if len(lines) > 1 else text


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad --config reported in one line instead of a traceback."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.name  # Loads the config file, which config_flags defers. pylint: disable=pointless-statement
  except (flags.Error, OSError, AttributeError, KeyError, ValueError, TypeError) as e:
    sys.exit(f'error: {_config_flag_problem(argv, e)}')
  return rest


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  # Imported after flag parsing so that --help and flag errors stay fast; the logs quietened
  # before TensorFlow is imported.
  from bigbigan_jax import run_log  # pylint: disable=g-import-not-at-top
  run_log.quiet_library_logs(FLAGS.verbosity)
  from bigbigan_jax import training_command  # pylint: disable=g-import-not-at-top
  training_command.run(FLAGS.config, FLAGS.workdir,
                       (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
