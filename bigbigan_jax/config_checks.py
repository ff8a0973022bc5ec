"""Checks a run config before anything compiles; every failure is one sentence naming the fix."""

import json
import math

import ml_collections

from bigbigan_jax import d_augment, e_lr_schedule, losses, parallel
from bigbigan_jax.models import bigbigan

EVAL_FEATURES = ('avepool_feat', 'bn_crelu_feat')
AUGMENTATIONS = ('inception_crop', 'resize')


class ConfigError(ValueError):
  """A config a user can fix; main prints the message alone, without a traceback."""


def _get(config, field):
  value = config
  for part in field.split('.'):
    value = value[part]
  return value


def _positive(config, *fields):
  for field in fields:
    value = _get(config, field)
    if not (math.isfinite(value) and value > 0):  # NaN fails every comparison.
      raise ConfigError(f'{field}={value} must be positive and finite.')


def _fraction(config, *fields):
  for field in fields:
    value = _get(config, field)
    if not 0.0 <= value < 1.0:
      raise ConfigError(f'{field}={value} must be in [0, 1).')


def _non_negative(config, *fields):
  for field in fields:
    value = _get(config, field)
    if not (math.isfinite(value) and value >= 0):
      raise ConfigError(f'{field}={value} must be a finite number, 0 or more.')


def validate_eval(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ConfigError for what evaluating a run needs: its models, grids and `config.eval`.

  The training batch is not checked, so a run evaluates on any device count.
  """
  try:
    bigbigan.check_model_config(config)
    parallel.check_global_batch(config.eval.batch_size, num_devices, 'eval.batch_size')
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.eval.feature not in EVAL_FEATURES:
    raise ConfigError(f'eval.feature={config.eval.feature!r} is not supported; '
                      f'use one of {EVAL_FEATURES}.')
  if config.eval.init_bn_batches < 0:
    raise ConfigError(f'eval.init_bn_batches={config.eval.init_bn_batches} must be 0 or more.')
  if int(config.num_grid_images ** 0.5) ** 2 != config.num_grid_images:
    raise ConfigError(f'num_grid_images={config.num_grid_images} must be a square number.')


def validate(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1) -> None:
  """Raises ConfigError for the first problem found."""
  validate_eval(config, num_devices)
  try:
    parallel.check_global_batch(config.batch_size, num_devices)
    losses.active_terms(config.loss.use_sx, config.loss.use_sz)
    d_augment.parse(config.loss.d_augment)
    e_lr_schedule.parse(config.optim.e_lr_schedule)
    if config.loss.reduction not in losses.REDUCTIONS:
      raise ValueError(f'loss.reduction={config.loss.reduction!r} is not supported; '
                       f'use one of {losses.REDUCTIONS}.')
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _positive(config, 'num_train_steps', 'optim.d_steps', 'log_every_steps', 'image_every_steps',
            'checkpoint_every_steps', 'keep_checkpoints', 'standing_stats_batches',
            'optim.d_lr', 'optim.g_lr', 'optim.e_lr_mult', 'optim.eps', 'model.sn_eps',
            'model.bn_eps')
  _fraction(config, 'optim.ema_decay', 'optim.e_ema_decay', 'optim.b1', 'optim.b2',
            'model.bn_momentum')
  _non_negative(config, 'optim.ortho_reg', 'optim.ema_start', 'optim.e_ema_start')
  if config.batch_size % num_processes:
    raise ConfigError(f'batch_size={config.batch_size} must divide evenly over the '
                      f'{num_processes} processes.')
  if config.data.augment not in AUGMENTATIONS:
    raise ConfigError(f'data.augment={config.data.augment!r} is not supported; '
                      f'use one of {AUGMENTATIONS}.')
  if config.data.in_memory and config.data.augment != 'resize':
    raise ConfigError(f"data.in_memory=True supports data.augment='resize', not "
                      f'{config.data.augment!r}; random crops run in the tf.data path.')


# Fields a resumed run may change freely: they change neither shapes nor what is trained.
BOOKKEEPING = ('name', 'allow_changes', 'num_train_steps', 'log_every_steps', 'image_every_steps',
               'checkpoint_every_steps', 'keep_checkpoints', 'num_grid_images',
               'standing_stats_batches', 'eval', 'data.data_dir', 'data.prefetch',
               'data.tf_threads', 'data.cache_dir')


def _leaves(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_leaves(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _covered(field: str, names) -> bool:
  return any(field == n or field.startswith(n + '.') for n in names)


def validate_resume(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError when `config` changes a field of the run's saved config that is neither
  bookkeeping nor listed in `config.allow_changes`."""
  as_json = lambda c: json.loads(c.to_json_best_effort())
  old, new = _leaves(as_json(saved)), _leaves(as_json(config))
  allowed = BOOKKEEPING + tuple(filter(None, (n.strip() for n in config.allow_changes.split(','))))
  changed = sorted(f for f in old.keys() | new.keys()
                   if old.get(f) != new.get(f) and not _covered(f, allowed))
  if changed:
    shown = ', '.join(f'{f}={old.get(f)!r} -> {new.get(f)!r}' for f in changed[:4])
    raise ConfigError(
        f'This run was trained with a different config ({shown}{", ..." if len(changed) > 4 else ""}); '
        f'resume with the saved config.json, start a new --workdir, or pass '
        f'--config.allow_changes={",".join(changed)} to change them on purpose.')
