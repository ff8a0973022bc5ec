"""Where batches come from: the tf.data pipeline (input_pipeline, TensorFlow) or, with
`data.in_memory=True`, the device-resident path (in_memory, JAX only). TensorFlow is imported
only when the tf.data path is used."""

from typing import Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from bigbigan_jax import in_memory, parallel


def train_batches(config: ml_collections.ConfigDict, mesh: Mesh,
                  start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
  """Endless training batches as global device arrays, from batch `start_step` on."""
  if config.data.in_memory:
    return in_memory.TrainBatches(config, mesh).iterate(start_step)
  from bigbigan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return parallel.prefetch_to_mesh(
      mesh, input_pipeline.train_iterator(config, start_step=start_step), config.data.prefetch)


def eval_batches(config: ml_collections.ConfigDict, split: str, batch_size: int,
                 **kwargs) -> Iterator[dict[str, np.ndarray]]:
  """One pass over this process's slice of `split` as host batches; see
  input_pipeline.eval_iterator for the arguments and what a batch holds."""
  if config.data.in_memory:
    return in_memory.eval_batches(config, split, batch_size, **kwargs)
  from bigbigan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.eval_iterator(config, split, batch_size, **kwargs)
