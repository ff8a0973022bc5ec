"""E's BatchNorm population statistics, measured on data.

A freshly initialised E holds placeholder running averages (mean 0, variance 1) that no data
has touched. In inference mode they switch its normalisation off, so the network evaluated is
not the one training starts from (which normalises with batch statistics). `measure` replaces
every running average by the statistics of whole batches of a split.
"""

import copy
import functools
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding

from bigbigan_jax import config_checks, data, image_views, parallel
from bigbigan_jax.models import bigbigan

Moments = dict[tuple[str, ...], np.ndarray]  # Flattened batch_stats: (..., 'mean'|'var') keys.


def with_measured_statistics(config: ml_collections.ConfigDict, mesh: Mesh, state: Any) -> Any:
  """`state` with the evaluated E's BN statistics (e_ema_batch_stats) measured on
  `eval.init_bn_batches` train batches (0: as is)."""
  if not config.eval.init_bn_batches:
    return state
  return state.replace(e_ema_batch_stats=measure(
      config, mesh, state.e_ema_params, state.e_ema_batch_stats, config.data.train_split,
      config.eval.init_bn_batches))


def measure(config: ml_collections.ConfigDict, mesh: Mesh, e_params: Any, e_batch_stats: Any,
            split: str, num_batches: int) -> Any:
  """E's batch_stats measured over the first `num_batches` eval batches of `split`."""
  batch_size = config.eval.batch_size
  batches = data.eval_batches(config, split, batch_size,
                              num_examples=num_batches * batch_size)
  needed = ({'image': b['image'], 'mask': b['mask']} for b in batches)  # Not the labels.
  stats = measure_batches(config, mesh, e_params, e_batch_stats, needed)
  if stats is None:
    raise config_checks.ConfigError(
        f'Split {split!r} has no full batch of eval.batch_size={batch_size} examples to measure '
        "E's BatchNorm statistics on.")
  return stats


def measure_batches(config: ml_collections.ConfigDict, mesh: Mesh, e_params: Any,
                    e_batch_stats: Any, batches: Iterable[dict[str, np.ndarray]]) -> Any:
  """E's batch_stats pooled over this process's eval batches (`image`, `mask`), stopping at the
  first one with padding, which would count; None when there is no full batch."""
  measuring = copy.deepcopy(config)
  measuring.model.bn_momentum = 0.0  # A train-mode pass then stores exactly its batch's moments.
  encoder = bigbigan.build_models(measuring).encoder

  @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, parallel.REPLICATED))
  def batch_moments(params, batch_stats, batch):
    _, new = encoder.apply({'params': params, 'batch_stats': batch_stats},
                           image_views.to_float(batch['image']), train=True, mutable=['batch_stats'])
    return new['batch_stats'], jnp.min(batch['mask'])  # The global minimum: every process stops.

  moments = []
  for batch in parallel.prefetch_to_mesh(mesh, batches, config.data.prefetch,
                                         parallel.EVAL_BATCH):
    batch_stats, full = jax.device_get(batch_moments(e_params, e_batch_stats, batch))
    if full < 1:
      break
    moments.append(traverse_util.flatten_dict(batch_stats))
  if not moments:
    return None
  dtypes = {k: v.dtype for k, v in traverse_util.flatten_dict(e_batch_stats).items()}
  stats = {k: v.astype(dtypes[k]) for k, v in pool_moments(moments).items()}
  return jax.device_put(traverse_util.unflatten_dict(stats),
                        NamedSharding(mesh, parallel.REPLICATED))


def pool_moments(moments: Sequence[Moments]) -> Moments:
  """Mean and variance of the union of equal-sized groups, from each group's mean and variance."""
  mean = {k: np.mean([m[k] for m in moments], axis=0) for k in moments[0] if k[-1] == 'mean'}
  pooled = dict(mean)
  for k in mean:
    var = k[:-1] + ('var',)
    second = np.mean([m[var] + m[k] ** 2 for m in moments], axis=0)
    pooled[var] = second - mean[k] ** 2
  return pooled
