"""tf.data input pipelines: seeded, resumable training batches and padded eval batches.

The only module of the project that imports TensorFlow, which it keeps off the GPU.
Every process reads its own even slice of a split. Training order and augmentation
depend only on `config.seed`, the epoch and an example's position in the epoch, so
a pipeline restarted at step k yields what the k-th element of a fresh one would.
"""

import functools
from typing import Callable, Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from bigbigan_jax import parallel
from bigbigan_jax.config_checks import ConfigError
from bigbigan_jax.datasets import fashion_mnist_local, sources

tf.config.set_visible_devices([], 'GPU')

Batch = dict[str, np.ndarray]

FOLDER_PREFIX = 'folder:'
IMAGENET = 'imagenet2012'
IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
AUGMENTATIONS = ('inception_crop', 'resize')
_CROP_AREA = (0.08, 1.0)
_CROP_ASPECT = (3 / 4, 4 / 3)
_CROP_MIN_COVERED = 0.1
_CROP_ATTEMPTS = 10
_FALLBACK_CROP = 224 / 256
_NO_END = np.iinfo(np.int64).max
MAX_NAMED_SKIPS = 3  # Undecodable images named in the log; later ones are counted.


def _builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The dataset's builder, prepared unless it is ImageNet or an image folder."""
  name, data_dir = config.data.dataset, config.data.data_dir
  if name.startswith(FOLDER_PREFIX):
    sources.check_image_folder(name[len(FOLDER_PREFIX):])
    return tfds.ImageFolder(name[len(FOLDER_PREFIX):])
  if name == fashion_mnist_local.FashionMnistLocal.name:
    make = lambda: fashion_mnist_local.FashionMnistLocal(data_dir=data_dir)
  else:
    sources.check_tfds_name(name)
    make = lambda: tfds.builder(name, data_dir=data_dir)
  return make() if name == IMAGENET else sources.prepared(make)


def _imagenet_missing(builder: tfds.core.DatasetBuilder) -> FileNotFoundError:
  root = builder.data_dir_root
  return FileNotFoundError(
      f'ImageNet ({IMAGENET}) is not prepared under {root}: put {IMAGENET_TARS[0]} '
      f'and {IMAGENET_TARS[1]} in {root / "downloads" / "manual"} and run '
      f'`tfds build {IMAGENET} --data_dir={root}`.')


def _read(builder: tfds.core.DatasetBuilder, split: str, process_index: int,
          process_count: int, num_examples: int = 0) -> tf.data.Dataset:
  """The process's even slice of the first `num_examples` (0: all) of `split`.

  Elements keep their image encoded and come in a fixed order.
  """
  sources.check_split(builder, split)
  decoders = {'image': tfds.decode.SkipDecoding()}
  if isinstance(builder, tfds.ImageFolder):  # No sub-split support.
    ds = builder.as_dataset(split=split, decoders=decoders)
    ds = ds.take(num_examples) if num_examples else ds
    return ds.shard(process_count, process_index)
  if num_examples:
    split = f'{split}[:{num_examples}]'
  split = tfds.split_for_jax_process(
      split, process_index=process_index, process_count=process_count)
  try:
    return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
  except AssertionError:  # What TFDS raises for data never prepared.
    if builder.name != IMAGENET:
      raise
    raise _imagenet_missing(builder) from None


def _options(config: ml_collections.ConfigDict) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = config.data.tf_threads  # 0: TF's pool, all cores.
  options.threading.max_intra_op_parallelism = 1
  # Autotuning off: AUTOTUNE maps run as wide as the thread pool (the same images/s in
  # benchmarks/input_pipeline.py), and deleting an iterator no longer waits for the tuner's
  # thread to wake (25-31 s at the end of a run of the 2-process test).
  options.autotune.enabled = False
  return options


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """Examples in `split` of the configured dataset, over all processes."""
  return int(_read(_builder(config), split, 0, 1).cardinality())


def _decode(encoded: tf.Tensor, channels: int) -> tf.Tensor:
  image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
  image.set_shape([None, None, channels])
  return image


def _centre_crop(image: tf.Tensor, fraction: float) -> tf.Tensor:
  """The central square of side `fraction` times the short side."""
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  side = tf.cast(fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  return tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2,
                                       side, side)


def _crop_window(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """ResNet's random crop [top, left, height, width] of an image of `shape`; the centre crop
  of `_centre_crop(image, _FALLBACK_CROP)` where no sampled box fits."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
      seed=seed,
      min_object_covered=_CROP_MIN_COVERED,
      aspect_ratio_range=_CROP_ASPECT,
      area_range=_CROP_AREA,
      max_attempts=_CROP_ATTEMPTS,
      use_image_if_no_bounding_boxes=True)
  failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
  height, width = shape[0], shape[1]
  side = tf.cast(_FALLBACK_CROP * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  centre = tf.stack([(height - side) // 2, (width - side) // 2, side, side])
  return tf.where(failed, centre, tf.stack([begin[0], begin[1], size[0], size[1]]))


def _inception_crop(encoded: tf.Tensor, channels: int, seed: tf.Tensor) -> tf.Tensor:
  """The decoded random crop; of a JPEG only the crop window is decoded."""
  def jpeg():
    window = _crop_window(tf.image.extract_jpeg_shape(encoded), seed)
    return tf.image.decode_and_crop_jpeg(encoded, window, channels=channels)

  def other():
    image = _decode(encoded, channels)
    top, left, height, width = tf.unstack(_crop_window(tf.shape(image), seed))
    return tf.image.crop_to_bounding_box(image, top, left, height, width)

  image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  image.set_shape([None, None, channels])
  return image


def _to_e_resolution(image: tf.Tensor, resolution: int) -> tf.Tensor:
  """Resizes uint8 pixels to E's square resolution (antialiased bicubic), rounded to uint8.

  Where no side shrinks, antialiasing changes nothing (to float rounding) and the plain
  bicubic resize costs less than half as much.
  """
  resize = lambda antialias: lambda: tf.image.resize(
      image, [resolution, resolution], method='bicubic', antialias=antialias)
  enlarging = tf.reduce_all(tf.shape(image)[:2] <= resolution)
  image = tf.cond(enlarging, resize(False), resize(True))
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def _train_image(example: dict[str, tf.Tensor], config: ml_collections.ConfigDict) -> tf.Tensor:
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(example['seed'], 2))
  if config.data.augment == 'inception_crop':
    image = _inception_crop(example['image'], config.data.num_channels, crop_seed)
  else:
    image = _decode(example['image'], config.data.num_channels)
  image = _to_e_resolution(image, config.encoder.resolution)
  if config.data.random_flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return image


def _eval_example(example: dict[str, tf.Tensor],
                  config: ml_collections.ConfigDict) -> dict[str, tf.Tensor]:
  image = _centre_crop(_decode(example['image'], config.data.num_channels), 1.0)
  return {
      'image': _to_e_resolution(image, config.encoder.resolution),
      'label': tf.cast(example['label'], tf.int32),
      'mask': tf.constant(1.0),
  }


def _epoch(base: tf.data.Dataset, seed: int, buffer: int, epoch: tf.Tensor) -> tf.data.Dataset:
  """One pass over `base` shuffled by (seed, epoch); each example gets its own seed."""
  epoch_seed = tf.random.stateless_uniform(
      [], seed=tf.stack([tf.constant(seed, tf.int64), epoch]), minval=None, maxval=None,
      dtype=tf.int64)
  ds = base.shuffle(buffer, seed=epoch_seed).enumerate()
  return ds.map(lambda index, ex: {'image': ex['image'], 'seed': tf.stack([epoch_seed, index])})


def _train_batch(batch: dict[str, tf.Tensor],
                 config: ml_collections.ConfigDict) -> dict[str, tf.Tensor]:
  """Splits a batch of images into d_steps + 1 update batches; keeps the examples' seeds."""
  images = batch['image']
  return {'image': tf.reshape(images, [config.optim.d_steps + 1, -1, *images.shape[1:]]),
          'seed': batch['seed']}


def _report_skipped(batches: Iterator[Batch], epoch_size: int, start: int,
                    name_of: Callable[[int, int], str]) -> Iterator[Batch]:
  """Passes the batches on without their seeds, logging the examples the pipeline skipped.

  An example's seed is (epoch seed, position in the shuffled epoch); a gap between consecutive
  examples is an image that could not be decoded. The stream starts at position `start` of its
  first epoch. `name_of(epoch_seed, position)` names a skipped example.
  """
  previous, skipped = None, 0
  for batch in batches:
    seeds = batch.pop('seed')
    if previous is None:
      previous = np.array([seeds[0, 0], start - 1])
    chain = np.concatenate([previous[None], seeds])
    next_position = np.where(chain[1:, 0] == chain[:-1, 0], chain[:-1, 1] + 1, 0)
    gaps = np.flatnonzero((chain[1:, 1] != next_position) |
                          ((chain[1:, 0] != chain[:-1, 0]) & (chain[:-1, 1] != epoch_size - 1)))
    for i in gaps:
      for epoch_seed, position in _between(chain[i], chain[i + 1], epoch_size):
        skipped += 1
        if skipped <= MAX_NAMED_SKIPS:
          logging.warning('Skipped an image that cannot be decoded: %s (%d so far).',
                          name_of(epoch_seed, position), skipped)
        elif skipped in (10, 100, 1000, 10_000, 100_000):
          logging.warning('Skipped %d images that cannot be decoded so far.', skipped)
    previous = seeds[-1]
    yield batch


def _between(before: np.ndarray, after: np.ndarray, epoch_size: int):
  """(epoch seed, position) of the examples between two consecutive seeds of the stream."""
  if before[0] == after[0]:
    return [(int(before[0]), p) for p in range(before[1] + 1, after[1])]
  return ([(int(before[0]), p) for p in range(before[1] + 1, epoch_size)] +
          [(int(after[0]), p) for p in range(0, after[1])])


def train_iterator(config: ml_collections.ConfigDict, *, start_step: int = 0,
                   process_index: int | None = None,
                   process_count: int | None = None) -> Iterator[Batch]:
  """Endless per-process training elements, one per train-step call.

  Each holds `image` [d_steps + 1, batch, E_res, E_res, C], uint8 (image_views makes E's and
  D's float views on the device); `start_step` resumes a run.
  """
  if config.data.augment not in AUGMENTATIONS:
    raise ValueError(f'data.augment is {config.data.augment!r}, not one of {AUGMENTATIONS}.')
  process_index, process_count = parallel.processes(process_index, process_count)
  per_step = (config.optim.d_steps + 1) * parallel.per_process(config.batch_size, process_count)
  base = _read(_builder(config), config.data.train_split, process_index, process_count)
  epoch_size = int(base.cardinality())
  if epoch_size < 1:
    raise ValueError(f'Process {process_index} got no training examples, or an unknown number.')
  start_epoch, skip = divmod(start_step * per_step, epoch_size)
  ds = tf.data.Dataset.range(start_epoch, _NO_END).flat_map(
      functools.partial(_epoch, base, config.seed, config.data.shuffle_buffer))
  ds = ds.skip(skip).map(
      lambda ex: {'image': _train_image(ex, config), 'seed': ex['seed']},
      num_parallel_calls=tf.data.AUTOTUNE)
  # An undecodable image is dropped (and reported below), not the end of training; a resumed
  # run is then offset from a fresh one by the images skipped before the resumed step.
  ds = ds.ignore_errors().batch(per_step, drop_remainder=True)
  ds = ds.map(functools.partial(_train_batch, config=config))
  ds = ds.prefetch(config.data.prefetch).with_options(_options(config))
  name_of = functools.partial(_name_at, base, config.data.shuffle_buffer)
  return _report_skipped(ds.as_numpy_iterator(), epoch_size, skip, name_of)


def _name_at(base: tf.data.Dataset, buffer: int, epoch_seed: int, position: int) -> str:
  """The file name (image folders) or the position of an example in a shuffled epoch."""
  if 'image/filename' not in base.element_spec:
    return f'example {position} of the shuffled epoch'
  names = base.shuffle(buffer, seed=epoch_seed).skip(position).take(1)
  return next(iter(names))['image/filename'].numpy().decode()


def _padding(config: ml_collections.ConfigDict) -> tf.data.Dataset:
  """Endless masked-out examples that fill the last eval batch."""
  resolution, channels = config.encoder.resolution, config.data.num_channels
  return tf.data.Dataset.from_tensors({
      'image': tf.zeros([resolution, resolution, channels], tf.uint8),
      'label': tf.constant(0),
      'mask': tf.constant(0.0),
  }).repeat()


def eval_iterator(config: ml_collections.ConfigDict, split: str, batch_size: int, *,
                  num_examples: int = 0, process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[Batch]:
  """One pass over this process's slice of the first `num_examples` (0: all) of `split`.

  `batch_size` is global. Batches hold `image` (centre square at E's resolution, uint8, no
  augmentation), `label` int32 and `mask` float32 (0 marks padding); every process yields
  the same number of batches.
  """
  process_index, process_count = parallel.processes(process_index, process_count)
  per_process = parallel.per_process(batch_size, process_count)
  builder = _builder(config)
  ds = _read(builder, split, process_index, process_count, num_examples)
  total = int(_read(builder, split, 0, 1, num_examples).cardinality())
  num_batches = parallel.eval_batches_per_process(total, process_count, per_process)
  ds = ds.map(functools.partial(_eval_example, config=config),
              num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()  # Padding replaces them.
  ds = ds.concatenate(_padding(config)).take(num_batches * per_process).batch(per_process)
  ds = ds.prefetch(config.data.prefetch).with_options(_options(config))
  return ds.as_numpy_iterator()


def decoded_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, H, W, C], labels [N]) of the whole split, decoded, for the in-memory path.

  Images that cannot be decoded are left out (and counted in the log).
  """
  builder = _builder(config)
  ds = _read(builder, split, 0, 1)
  total = int(ds.cardinality())
  ds = ds.map(lambda ex: {'image': _decode(ex['image'], config.data.num_channels),
                          'label': ex['label']},
              num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
  images, labels = [], []
  for example in ds.with_options(_options(config)).as_numpy_iterator():
    if images and example['image'].shape != images[0].shape:
      raise ConfigError(
          f'data.in_memory needs images of one size, and {config.data.dataset} {split} has '
          f'{images[0].shape} and {example["image"].shape}; use the tf.data path '
          '(data.in_memory=False).')
    images.append(example['image'])
    labels.append(example['label'])
  if len(images) < total:
    logging.warning('Left out %d images of %s that cannot be decoded.', total - len(images), split)
  if not images:
    raise ConfigError(f'{config.data.dataset} {split} has no images that can be decoded.')
  return np.stack(images), np.asarray(labels, np.int64)
