"""A small Fashion-MNIST classifier that the project trains itself: the feature network of the
download-free generator metrics (garment_metrics), as Inception-v3 is FID's on ImageNet.

Two conv layers and a hidden dense layer, trained with Adam on 28x28 images in [-1, 1]; its
penultimate activations (the hidden layer after ReLU) are the features. A trained classifier is
cached as an .npz named after its settings, with its test-split accuracy.
"""

import dataclasses
import json
import os
import time
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import traverse_util

from bigbigan_jax import npz_files
from bigbigan_jax.datasets import idx_files

RESOLUTION = 28
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a trained classifier depends on; the cache file is named after them."""
  conv_widths: tuple[int, ...] = (16, 32)
  hidden: int = 128  # The feature dimension.
  epochs: int = 4
  batch_size: int = 128
  learning_rate: float = 2e-3
  seed: int = 0
  num_train_examples: int = 0  # 0: the whole train split.

  def file_name(self) -> str:
    widths = '-'.join(map(str, self.conv_widths))
    return (f'garment_classifier_c{widths}_h{self.hidden}_e{self.epochs}_b{self.batch_size}_'
            f'lr{self.learning_rate:g}_s{self.seed}_n{self.num_train_examples}.npz')


class GarmentNet(nn.Module):
  """[N, H, W, 1] images in [-1, 1] -> (logits [N, 10], features [N, hidden]); any H, W is
  resized to 28x28 first."""
  conv_widths: tuple[int, ...]
  hidden: int

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, jnp.float32)
    if x.shape[1:3] != (RESOLUTION, RESOLUTION):
      x = jax.image.resize(x, (x.shape[0], RESOLUTION, RESOLUTION, x.shape[3]), 'linear',
                           antialias=True)
    for width in self.conv_widths:
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    features = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    return nn.Dense(NUM_CLASSES)(features), features


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] images to float32 [-1, 1] (the networks' range); floats pass through."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 127.5 - 1.0
  return images.astype(np.float32)


class GarmentClassifier:
  """A trained GarmentNet: `logits(images)`, `features(images)`, `predict(images)` on batches of
  [N, H, W, 1] images (uint8, or float in [-1, 1]), returning numpy arrays."""

  def __init__(self, settings: Settings, params, test_accuracy: float = float('nan')):
    self.settings, self.params, self.test_accuracy = settings, params, float(test_accuracy)
    self.net = GarmentNet(settings.conv_widths, settings.hidden)
    self._apply = jax.jit(lambda p, x: self.net.apply({'params': p}, x))

  def _outputs(self, images, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 1:
      raise ValueError(f'The garment classifier takes [N, H, W, 1] images, got {images.shape}.')
    logits, features = [], []
    for start in range(0, len(images), batch_size):
      out = jax.device_get(self._apply(self.params, to_float(images[start:start + batch_size])))
      logits.append(out[0])
      features.append(out[1])
    if not logits:
      return np.zeros((0, NUM_CLASSES), np.float32), np.zeros((0, self.settings.hidden), np.float32)
    return np.concatenate(logits), np.concatenate(features)

  def logits(self, images) -> np.ndarray:
    return self._outputs(images)[0]

  def features(self, images) -> np.ndarray:
    """The penultimate activations [N, hidden]."""
    return self._outputs(images)[1]

  def predict(self, images) -> np.ndarray:
    return self.logits(images).argmax(axis=-1)

  def accuracy(self, images, labels) -> float:
    return float(np.mean(self.predict(images) == np.asarray(labels)))


def train(images: np.ndarray, labels: np.ndarray, settings: Settings = Settings()
          ) -> GarmentClassifier:
  """Trains a GarmentNet on [N, 28, 28, 1] images (uint8, or float in [-1, 1]) and labels."""
  images, labels = to_float(images), np.asarray(labels, np.int32)
  if images.ndim != 4 or images.shape[-1] != 1 or labels.shape != images.shape[:1]:
    raise ValueError(f'Training the garment classifier needs [N, H, W, 1] images and N labels, '
                     f'got {images.shape} and {labels.shape}.')
  if len(images) < settings.batch_size:
    raise ValueError(f'Training the garment classifier needs at least batch_size='
                     f'{settings.batch_size} images, got {len(images)}.')
  net = GarmentNet(settings.conv_widths, settings.hidden)
  init_key = jax.random.PRNGKey(settings.seed)
  params = net.init(init_key, jnp.zeros((1, *images.shape[1:]), jnp.float32))['params']
  steps_per_epoch = len(images) // settings.batch_size
  schedule = optax.cosine_decay_schedule(settings.learning_rate,
                                         settings.epochs * steps_per_epoch)
  optimizer = optax.adam(schedule)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits, _ = net.apply({'params': p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  rng = np.random.default_rng(settings.seed)
  for _ in range(settings.epochs):
    order = rng.permutation(len(images))[:steps_per_epoch * settings.batch_size]
    for batch in order.reshape(steps_per_epoch, settings.batch_size):
      params, opt_state = step(params, opt_state, images[batch], labels[batch])
  return GarmentClassifier(settings, jax.device_get(params))


def save(path: str | os.PathLike, classifier: GarmentClassifier) -> None:
  """Writes the parameters, settings and test accuracy to an .npz, whole or not at all."""
  arrays = {f'params/{k}': np.asarray(v) for k, v in
            traverse_util.flatten_dict(classifier.params, sep='/').items()}
  npz_files.write_whole(epath.Path(path),
                        settings=json.dumps(dataclasses.asdict(classifier.settings)),
                        test_accuracy=classifier.test_accuracy, **arrays)


def load(path: str | os.PathLike) -> GarmentClassifier:
  """Reads a classifier written by `save`."""
  path = epath.Path(path)
  try:
    with path.open('rb') as f, np.load(f) as data:
      settings = json.loads(str(data['settings']))
      params = {k[len('params/'):]: data[k] for k in data.files if k.startswith('params/')}
      test_accuracy = float(data['test_accuracy'])
  except Exception as e:  # A truncated or foreign file: zipfile, json or key errors.
    raise ValueError(f'The garment classifier {path} cannot be read ({type(e).__name__}: {e}); '
                     'delete it to train it again.') from None
  settings['conv_widths'] = tuple(settings['conv_widths'])
  return GarmentClassifier(Settings(**settings),
                           traverse_util.unflatten_dict(params, sep='/'), test_accuracy)


def trained(cache_dir: str | os.PathLike, settings: Settings = Settings(),
            source_dir: Optional[str] = None) -> GarmentClassifier:
  """The classifier of `settings` trained on Fashion-MNIST's local train split and scored on its
  test split, read from `<cache_dir>/<settings file name>` or trained and written there."""
  path = epath.Path(os.path.expanduser(os.fspath(cache_dir))) / settings.file_name()
  if path.exists():
    return load(path)
  train_images, train_labels = idx_files.read_split('train', source_dir)
  if settings.num_train_examples:
    train_images = train_images[:settings.num_train_examples]
    train_labels = train_labels[:settings.num_train_examples]
  start = time.time()
  classifier = train(train_images, train_labels, settings)
  classifier.test_accuracy = classifier.accuracy(*idx_files.read_split('test', source_dir))
  logging.info('Trained the garment classifier in %.0f s: test accuracy %.4f; caching it in %s.',
               time.time() - start, classifier.test_accuracy, path)
  try:
    save(path, classifier)
  except OSError as e:  # A classifier that cannot be cached only costs retraining.
    logging.warning('Could not cache the garment classifier in %s: %s', path, e)
  return classifier
