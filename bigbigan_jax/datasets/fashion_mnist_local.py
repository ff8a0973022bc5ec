"""TFDS builder for Fashion-MNIST read from local IDX files; never downloads.

Debian and Ubuntu ship the files in the package `dataset-fashion-mnist`; the
env var FASHION_MNIST_DIR points the builder at another copy of the same files.
"""

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
DIR_ENV_VAR = 'FASHION_MNIST_DIR'
CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
               'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
# Split name -> (images file, labels file).
SPLIT_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
_UBYTE_TYPE_CODE = 0x08


def source_dir() -> str:
  """The directory holding the four IDX .gz files."""
  return os.environ.get(DIR_ENV_VAR, DEFAULT_DIR)


def read_idx(path: str, ndim: int) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes with `ndim` dimensions."""
  with gzip.open(path, 'rb') as f:
    data = f.read()
  magic = int.from_bytes(data[:4], 'big')
  if magic != (_UBYTE_TYPE_CODE << 8) | ndim:
    raise ValueError(f'{path} has IDX magic number {magic}, expected '
                     f'{(_UBYTE_TYPE_CODE << 8) | ndim} (unsigned bytes, {ndim} dims).')
  shape = tuple(int(d) for d in np.frombuffer(data, '>u4', count=ndim, offset=4))
  pixels = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if pixels.size != np.prod(shape):
    raise ValueError(f'{path} holds {pixels.size} bytes of data, its header says {shape}.')
  return pixels.reshape(shape)


def _check_files(directory: str) -> None:
  """Raises FileNotFoundError when any of the four files is missing."""
  names = [name for files in SPLIT_FILES.values() for name in files]
  missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
  if missing:
    raise FileNotFoundError(
        f'Fashion-MNIST files {missing} are missing from {directory}: install '
        f'them with `apt-get install dataset-fashion-mnist` or set {DIR_ENV_VAR} '
        'to a directory holding them.')


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (70,000 28x28 grayscale images, 10 classes) from local files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(28, 28, 1)),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/zalandoresearch/fashion-mnist',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    directory = source_dir()
    _check_files(directory)
    return {
        split: self._generate_examples(os.path.join(directory, images),
                                       os.path.join(directory, labels))
        for split, (images, labels) in SPLIT_FILES.items()
    }

  def _generate_examples(self, images_path: str, labels_path: str):
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
      raise ValueError(f'{images_path} has {len(images)} images but '
                       f'{labels_path} has {len(labels)} labels.')
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {'image': image[:, :, None], 'label': int(label)}
