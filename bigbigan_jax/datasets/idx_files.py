"""Fashion-MNIST's local IDX files, read with NumPy alone (no TensorFlow).

Debian and Ubuntu ship the files in the package `dataset-fashion-mnist`; the env var
FASHION_MNIST_DIR points at another copy of the same files.
"""

import gzip
import os

import numpy as np

DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
DIR_ENV_VAR = 'FASHION_MNIST_DIR'
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


def check_files(directory: str) -> None:
  """Raises FileNotFoundError when any of the four files is missing."""
  names = [name for files in SPLIT_FILES.values() for name in files]
  missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
  if missing:
    raise FileNotFoundError(
        f'Fashion-MNIST files {missing} are missing from {directory}: install '
        f'them with `apt-get install dataset-fashion-mnist` or set {DIR_ENV_VAR} '
        'to a directory holding them.')


def read_split(split: str, directory: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, 28, 28, 1], labels int64 [N]) of 'train' or 'test'."""
  directory = directory or source_dir()
  check_files(directory)
  images_file, labels_file = (os.path.join(directory, name) for name in SPLIT_FILES[split])
  images, labels = read_idx(images_file, ndim=3), read_idx(labels_file, ndim=1)
  if len(images) != len(labels):
    raise ValueError(f'{images_file} has {len(images)} images but '
                     f'{labels_file} has {len(labels)} labels.')
  return images[..., None], labels.astype(np.int64)
