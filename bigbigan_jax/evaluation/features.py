"""Frozen features of a data split (E's, or raw pixels) written to a FeatureWriter directory.

Batches of `eval_iterator` are sharded over the mesh's batch axis and so are the features:
each process writes the rows of its own slice of the split (padding dropped) to its own
directory, so that every example is written once whatever the process count
(`FeatureStore.open_all` reads them together). E runs deterministically: z_mean path (no
sampling key), BatchNorm running statistics. `between_batches` is called after each batch (the
training loop's stop check).
"""

import dataclasses
import os
from collections.abc import Callable

import jax
import ml_collections
from etils import epath
from jax.sharding import Mesh, NamedSharding

from bigbigan_jax import data, image_views, inference, parallel
from bigbigan_jax.evaluation.feature_store import FeatureStore, FeatureWriter


@dataclasses.dataclass(frozen=True)
class Features:
  """A written split: its FeatureStore (None if this process's slice held only padding) and
  1 + the largest label in it."""
  store: FeatureStore | None
  num_classes: int

  @classmethod
  def open_all(cls, directories: list[epath.Path]) -> 'Features':
    """The features that several processes wrote, one directory each, in process order."""
    store = FeatureStore.open_all(directories)
    return cls(store, store.largest_label() + 1)


class FeatureExtractor:
  """Writes E's `config.eval.feature` or raw pixels (flattened D view) of a split to disk."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh):
    self.config, self.mesh = config, mesh
    self._model = inference.BigBiGAN(config)
    sharded = NamedSharding(mesh, parallel.EVAL_BATCH)
    self._encode = jax.jit(self._encode_impl, out_shardings=sharded)
    self._pixels = jax.jit(self._pixels_impl, out_shardings=sharded)

  def encoder(self, e_params, e_batch_stats, split: str, directory: str | os.PathLike, *,
              num_examples: int = 0, between_batches: Callable[[], None] = lambda: None
              ) -> Features:
    """E's features of this process's slice of the first `num_examples` (0: all) of `split`."""
    return self._write(lambda b: self._encode(e_params, e_batch_stats, b), split, directory,
                       num_examples, between_batches)

  def raw_pixels(self, split: str, directory: str | os.PathLike, *,
                 num_examples: int = 0, between_batches: Callable[[], None] = lambda: None
                 ) -> Features:
    """Flattened D-resolution pixels of this process's slice of the first `num_examples` (0: all)
    of `split`."""
    return self._write(self._pixels, split, directory, num_examples, between_batches)

  def _encode_impl(self, e_params, e_batch_stats, batch):
    features = self._model.encode(e_params, e_batch_stats, image_views.to_float(batch['image']))
    return features[self.config.eval.feature], batch['label'], batch['mask']

  def _pixels_impl(self, batch):
    _, images = image_views.views(batch['image'], self.config.model.resolution)
    return images.reshape(images.shape[0], -1), batch['label'], batch['mask']

  def _write(self, extract, split, directory, num_examples, between_batches) -> Features:
    batches = data.eval_batches(self.config, split, self.config.eval.batch_size,
                                num_examples=num_examples)
    device_batches = parallel.prefetch_to_mesh(self.mesh, batches, self.config.data.prefetch,
                                               parallel.EVAL_BATCH)
    writer, largest = FeatureWriter(directory), 0
    for batch in device_batches:
      features, labels, mask = map(parallel.local_rows, extract(batch))
      keep = mask > 0
      writer.append(features[keep], labels[keep])
      largest = max(largest, int(labels[keep].max(initial=0)))
      between_batches()
    return Features(writer.close(), largest + 1)
