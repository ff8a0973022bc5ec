"""The in-memory data path (`data.in_memory=True`) for a dataset that fits in device memory.

A split is read once, into a NumPy cache (`<cache_dir>/<dataset>-<split>.npz`) that later runs,
and machines without TensorFlow, read directly; Fashion-MNIST's local IDX files need no
TensorFlow either. The training split is then kept on every device as uint8, and each step's
batch is gathered, resized to E's resolution and flipped there, by one jitted program beside
the train step. Its batches are those of the tf.data path in kind (uint8
[d_steps + 1, batch, E_res, E_res, C], the same resize and flip); the order differs: each epoch
is a whole-split permutation seeded by (config.seed, epoch), where tf.data shuffles through a
buffer. Batch k and its flips depend only on (config.seed, k), so a run resumed at step k gets
the batches a fresh run gets there.
"""

import functools
import os
import re
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import Mesh, NamedSharding

from bigbigan_jax import npz_files, parallel
from bigbigan_jax.config_checks import ConfigError
from bigbigan_jax.datasets import idx_files

FASHION_MNIST_LOCAL = 'fashion_mnist_local'
# Seed streams of numpy's SeedSequence([seed, stream, index]).
_ORDER, _FLIP = 0, 1


def cache_path(config: ml_collections.ConfigDict, split: str) -> epath.Path:
  """Where the split's .npz cache is: `data.cache_dir`, else `<TFDS data dir>/in_memory`."""
  root = config.data.cache_dir or os.path.join(
      config.data.data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'),
      'in_memory')
  name = re.sub(r'[^A-Za-z0-9._-]+', '_', f'{config.data.dataset}-{split}').strip('_')
  return epath.Path(os.path.expanduser(root)) / f'{name}.npz'


def load_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, H, W, data.num_channels], labels int64 [N]) of `split`.

  Read from the cache when it exists; else from the dataset (Fashion-MNIST's IDX files, or TFDS
  through TensorFlow), and the cache is written for next time.
  """
  path = cache_path(config, split)
  # Decided together: a process without the cache (a host-local cache_dir) reads the dataset,
  # and preparing a dataset waits for every process.
  if all(parallel.from_every_process(path.exists())):
    images, labels = _read_cache(path)
  else:
    if config.data.dataset == FASHION_MNIST_LOCAL and split in idx_files.SPLIT_FILES:
      images, labels = idx_files.read_split(split)
    else:
      try:
        from bigbigan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ConfigError(f'{path} does not exist, and reading {config.data.dataset} to write it '
                          f'needs TensorFlow ({e}); copy the file from a machine that has it.'
                          ) from None
      images, labels = input_pipeline.decoded_split(config, split)
    if jax.process_index() == 0 and not path.exists():  # Kept where only another host lacks it.
      _write_cache(path, images, labels)
    parallel.barrier('in-memory cache written')
    if jax.process_index() > 0 and not path.exists():  # A cache_dir of this host's own.
      _write_cache(path, images, labels)
  return _with_channels(images, config.data.num_channels, path), labels


def _read_cache(path: epath.Path) -> tuple[np.ndarray, np.ndarray]:
  try:
    with path.open('rb') as f, np.load(f) as cache:
      images, labels = cache['image'], cache['label']
  except Exception as e:  # A truncated or foreign file: zipfile, pickle or key errors.
    raise ConfigError(f'The in-memory cache {path} cannot be read ({type(e).__name__}: {e}); '
                      'delete it to read the dataset again.') from None
  if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != images.shape[:1]:
    raise ConfigError(f'The in-memory cache {path} holds {images.dtype} images of shape '
                      f'{images.shape} and {labels.shape} labels, not uint8 [N, H, W, C] with N '
                      'labels; delete it to read the dataset again.')
  return images, labels


def _write_cache(path: epath.Path, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes the cache whole or not at all; a cache that cannot be written only costs a re-read."""
  try:
    npz_files.write_whole(path, image=images, label=labels)
    logging.info('Wrote the in-memory cache %s (%.0f MB).', path, images.nbytes / 2**20)
  except OSError as e:
    logging.warning('Could not write the in-memory cache %s: %s', path, e)


def _with_channels(images: np.ndarray, channels: int, path: epath.Path) -> np.ndarray:
  if images.shape[-1] == channels:
    return images
  if images.shape[-1] == 1:
    return np.repeat(images, channels, axis=-1)
  raise ConfigError(f'data.num_channels={channels} but {path} holds {images.shape[-1]}-channel '
                    'images; set data.num_channels to match.')


def _resized(images: jax.Array, resolution: int) -> jax.Array:
  """uint8 [..., H, W, C] to uint8 [..., R, R, C]: bicubic, antialiased when shrinking, rounded
  (the tf.data path's resize)."""
  *lead, height, width, channels = images.shape
  if (height, width) == (resolution, resolution):
    return images
  resized = jax.image.resize(images.astype(jnp.float32), (*lead, resolution, resolution, channels),
                             'cubic', antialias=True)
  return jnp.round(jnp.clip(resized, 0, 255)).astype(jnp.uint8)


def _centre_square(images: np.ndarray) -> np.ndarray:
  height, width = images.shape[-3:-1]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  return images[..., top:top + side, left:left + side, :]


def _train_batch(images, indices, flips, *, resolution):
  batch = _resized(images[indices], resolution)
  return jnp.where(flips[..., None, None, None], jnp.flip(batch, axis=-2), batch)


class TrainBatches:
  """Training batches gathered from the split held on every device.

  `batch(k)` is the (k+1)-th batch of the run, a dict with `image`, a global uint8 array
  [d_steps + 1, batch_size, E_res, E_res, C] sharded over the mesh like tf.data batches.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh):
    images = load_split(config, config.data.train_split)[0]
    if not len(images):
      raise ConfigError(f'The split {config.data.train_split} of {config.data.dataset} is empty.')
    self.config, self.num_examples = config, len(images)
    self.shape = (config.optim.d_steps + 1, config.batch_size)
    replicated = NamedSharding(mesh, parallel.REPLICATED)
    self.images = jax.make_array_from_callback(images.shape, replicated, lambda index: images[index])
    self._batch_sharding = NamedSharding(mesh, parallel.STEP_BATCH)
    self._make = jax.jit(functools.partial(_train_batch, resolution=config.encoder.resolution),
                         out_shardings=self._batch_sharding)
    self._order_epoch, self._order = None, None

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._order_epoch:
      rng = np.random.default_rng([self.config.seed % 2**32, _ORDER, epoch])
      self._order_epoch, self._order = epoch, rng.permutation(self.num_examples)
    return self._order

  def indices(self, k: int) -> np.ndarray:
    """The examples of batch k, int32 [d_steps + 1, batch_size]."""
    size = int(np.prod(self.shape))
    positions = k * size + np.arange(size, dtype=np.int64)
    epochs, within = np.divmod(positions, self.num_examples)
    out = np.empty(size, np.int32)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      out[here] = self._permutation(int(epoch))[within[here]]
    return out.reshape(self.shape)

  def flips(self, k: int) -> np.ndarray:
    """Which images of batch k are mirrored, bool [d_steps + 1, batch_size]."""
    if not self.config.data.random_flip:
      return np.zeros(self.shape, bool)
    rng = np.random.default_rng([self.config.seed % 2**32, _FLIP, k])
    return rng.random(self.shape) < 0.5

  def batch(self, k: int) -> dict[str, jax.Array]:
    indices, flips = (jax.make_array_from_callback(self.shape, self._batch_sharding,
                                                   lambda index, a=a: a[index])
                      for a in (self.indices(k), self.flips(k)))
    return {'image': self._make(self.images, indices, flips)}

  def iterate(self, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
    """Batches start_step, start_step + 1, ...; each is dispatched while the previous trains."""
    k = start_step
    while True:
      yield self.batch(k)
      k += 1


def eval_batches(config: ml_collections.ConfigDict, split: str, batch_size: int, *,
                 num_examples: int = 0, process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """The tf.data path's eval_iterator from memory: one pass over this process's even slice of
  the first `num_examples` (0: all) of `split`, in order.

  `batch_size` is global. Batches hold `image` (centre square at E's resolution, uint8),
  `label` int32 and `mask` float32 (0 marks padding); every process yields the same number.
  """
  process_index, process_count = parallel.processes(process_index, process_count)
  per_process = parallel.per_process(batch_size, process_count)
  images, labels = load_split(config, split)
  if num_examples:
    images, labels = images[:num_examples], labels[:num_examples]
  mine = np.array_split(np.arange(len(images)), process_count)[process_index]
  num_batches = parallel.eval_batches_per_process(len(images), process_count, per_process)
  resize = jax.jit(functools.partial(_resized, resolution=config.encoder.resolution))
  for b in range(num_batches):
    chosen = mine[b * per_process:(b + 1) * per_process]
    pad = per_process - len(chosen)
    image = _centre_square(images[chosen])
    image = np.concatenate([image, np.zeros((pad, *image.shape[1:]), np.uint8)])
    yield {
        'image': np.asarray(resize(image)),
        'label': np.concatenate([labels[chosen], np.zeros(pad, labels.dtype)]).astype(np.int32),
        'mask': np.concatenate([np.ones(len(chosen)), np.zeros(pad)]).astype(np.float32),
    }
