"""Evaluates a training run: python -m bigbigan_jax.evaluate --workdir=runs/NAME [--step=N].

Restores a checkpoint (default: the newest) with the run's config.json, runs the Evaluator
(linear probe, k-NN, FID/IS when Inception weights are given, grids) and writes the metrics to
`<workdir>/eval_<step>.json`. `--init` evaluates the run's freshly initialised state instead
(written as eval_0.json; E's BatchNorm statistics, placeholders at initialisation, are first
measured on `eval.init_bn_batches` train batches), `--raw_pixels` the raw-pixel baseline
(eval_raw_pixels.json).

`--set=KEY=VALUE` (repeatable) changes one of the run's `config.eval` settings for this
evaluation only, e.g. `--set=feature=bn_crelu_feat` or `--set=inception_weights=fid.npz`; the
file name then carries the settings (eval_4000_feature-bn_crelu_feat.json), so results of other
settings are kept.
"""

import json
import re
import sys

import jax
from absl import app, flags, logging
from etils import epath

from bigbigan_jax import config_checks, parallel, train
from bigbigan_jax.evaluation import encoder_statistics, evaluator

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run directory holding config.json and checkpoints/.')
flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate; default the newest.')
flags.DEFINE_bool('init', False, "Evaluate the run's initial state (seeded by config.seed) "
                  'instead of a checkpoint.')
flags.DEFINE_bool('raw_pixels', False, "Evaluate the raw-pixel baseline (flattened D's view) "
                  'instead of E.')
flags.DEFINE_multi_string('set', [], 'KEY=VALUE: change the config.eval setting KEY for this '
                          'evaluation (repeatable), e.g. feature=bn_crelu_feat.')
flags.mark_flags_as_required(['workdir'])


class UsageError(Exception):
  """A problem the user fixes on the command line; printed as one line."""


def _apply_eval_settings(config, settings: list[str]) -> str:
  """Applies KEY=VALUE settings to config.eval; returns the file-name suffix naming them."""
  suffix = ''
  for setting in settings:
    key, sep, value = setting.partition('=')
    if not sep or key not in config.eval:
      raise UsageError(f'--set={setting} must be KEY=VALUE with KEY one of '
                       f'{", ".join(sorted(config.eval))}.')
    kind = type(config.eval[key])
    try:
      config.eval[key] = value if kind is str else kind(value)
    except ValueError:
      raise UsageError(
          f'--set={setting}: {value!r} is not a valid {kind.__name__} for {key}.') from None
    suffix += '_' + re.sub(r'[^A-Za-z0-9._]+', '-', f'{key}-{value}').strip('-')
  return suffix


def _state(config, workdir, mesh):
  """(step, state) to evaluate, from a checkpoint or the initialisation."""
  if FLAGS.init:
    return 0, encoder_statistics.with_measured_statistics(config, mesh,
                                                          train.initial_state(config, mesh))
  manager = train.checkpoint_manager(workdir, config)
  steps = sorted(manager.all_steps())
  if not steps:
    raise UsageError(f'No checkpoints in {workdir}/checkpoints; train first or pass --init.')
  step = steps[-1] if FLAGS.step is None else FLAGS.step
  if step not in steps:
    raise UsageError(f'No checkpoint for step {step} in {workdir}/checkpoints; have {steps}.')
  logging.info('Restoring checkpoint %d from %s.', step, manager.directory)
  state = train.restore(manager, step, config, mesh)
  manager.close()
  return step, state


def _evaluate(workdir):
  """Runs the evaluation the flags ask for and writes its JSON file."""
  if FLAGS.init + FLAGS.raw_pixels + (FLAGS.step is not None) > 1:
    raise UsageError('Pass at most one of --step, --init and --raw_pixels.')
  workdir = epath.Path(workdir).absolute()  # Orbax restores from absolute paths only.
  config = train.load_config(workdir)
  suffix = _apply_eval_settings(config, FLAGS.set)
  evaluate = evaluator.Evaluator(config, workdir)
  if FLAGS.raw_pixels:
    name, metrics = 'raw_pixels', evaluate.raw_pixels()
  else:
    step, state = _state(config, workdir, evaluate.mesh)
    name, metrics = str(step), evaluate(state, step)
  path = workdir / f'eval_{name}{suffix}.json'
  if jax.process_index() == 0:
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + '\n')
  logging.info('Wrote %s: %s', path, metrics)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  try:
    parallel.initialize_distributed()
  except ValueError as e:  # Incomplete multi-process settings.
    sys.exit(f'error: {e}')
  try:
    _evaluate(FLAGS.workdir)
  except (UsageError, config_checks.ConfigError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
