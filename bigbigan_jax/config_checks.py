"""Checks a run config before anything compiles; every failure is one sentence naming the fix."""

import ml_collections

from bigbigan_jax import losses, parallel
from bigbigan_jax.models import bigbigan

EVAL_FEATURES = ('avepool_feat', 'bn_crelu_feat')
AUGMENTATIONS = ('inception_crop', 'resize')


class ConfigError(ValueError):
  """A config a user can fix; main prints the message alone, without a traceback."""


def _positive(config, *fields):
  for field in fields:
    value = config
    for part in field.split('.'):
      value = value[part]
    if value <= 0:
      raise ConfigError(f'{field}={value} must be positive.')


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
    if config.loss.reduction not in losses.REDUCTIONS:
      raise ValueError(f'loss.reduction={config.loss.reduction!r} is not supported; '
                       f'use one of {losses.REDUCTIONS}.')
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _positive(config, 'num_train_steps', 'optim.d_steps', 'log_every_steps', 'image_every_steps',
            'checkpoint_every_steps', 'keep_checkpoints', 'standing_stats_batches',
            'optim.d_lr', 'optim.g_lr', 'optim.e_lr_mult')
  if config.batch_size % num_processes:
    raise ConfigError(f'batch_size={config.batch_size} must divide evenly over the '
                      f'{num_processes} processes.')
  if not 0.0 <= config.optim.ema_decay < 1.0:
    raise ConfigError(f'optim.ema_decay={config.optim.ema_decay} must be in [0, 1).')
  if config.data.augment not in AUGMENTATIONS:
    raise ConfigError(f'data.augment={config.data.augment!r} is not supported; '
                      f'use one of {AUGMENTATIONS}.')
