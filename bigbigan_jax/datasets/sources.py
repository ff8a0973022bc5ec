"""Finding a dataset: one-sentence errors before TFDS's own tracebacks, and preparation done
once when several processes (of one run, or independent runs) share a data_dir."""

import contextlib
import errno
import fcntl
import os
from typing import Callable, Iterator

import jax
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from bigbigan_jax import parallel
from bigbigan_jax.config_checks import ConfigError

# How long the other processes wait for process 0's first preparation of a dataset (ImageNet's
# TFDS preparation takes hours on one host).
PREPARATION_WAIT_S = 24 * 3600

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


def check_tfds_name(name: str) -> None:
  base = name.split(':')[0].split('/')[0]
  if base not in tfds.list_builders(with_community_datasets=False):
    raise ConfigError(f"data.dataset={name!r} is not a TFDS dataset, 'fashion_mnist_local' or "
                      f"'folder:<path>'; `tfds.list_builders()` lists the TFDS names.")


def check_image_folder(root: str) -> None:
  """The folder holds <split>/<class>/<image> files, as tfds.ImageFolder reads them."""
  path = epath.Path(root)
  if not path.is_dir():
    raise ConfigError(f'The image folder {root} does not exist; data.dataset=folder:<path> needs '
                      f'<path>/<split>/<class>/*.jpg.')
  has_images = any(p.suffix.lower() in IMAGE_SUFFIXES
                   for split in path.iterdir() if split.is_dir()
                   for label in split.iterdir() if label.is_dir()
                   for p in label.iterdir())
  if not has_images:
    raise ConfigError(f'The image folder {root} holds no images in <split>/<class>/ folders; '
                      f'data.dataset=folder:<path> needs <path>/<split>/<class>/*.jpg.')


def check_split(builder: tfds.core.DatasetBuilder, split: str) -> None:
  """`split` (optionally sliced, e.g. 'train[:1000]') names one of the dataset's splits."""
  base = split.split('[')[0]
  known = sorted(builder.info.splits.keys())
  if known and base not in known:
    raise ConfigError(f'The dataset {builder.name} has no split {base!r}; it has '
                      f'{", ".join(known)} (data.train_split, data.eval_split).')


def prepared(make: Callable[[], tfds.core.DatasetBuilder]) -> tfds.core.DatasetBuilder:
  """The builder `make()` returns, its data prepared by one process at a time.

  Process 0 of a run prepares first while the others wait; a file lock in the data_dir keeps
  independent processes on one machine from preparing the same files at once (TFDS renames
  its temporary folder into place, which fails for the second one). The builder is made again
  once the data is there, so that it reads what the other process wrote.
  """
  first = jax.process_index() == 0
  if first:
    builder = _prepare_locked(make)
  # Not a device collective (on CPU one gives up after 30 s): a coordination-service barrier
  # that waits as long as a first preparation of ImageNet can take.
  parallel.barrier('dataset prepared', timeout_s=PREPARATION_WAIT_S)
  if not first:
    builder = _prepare_locked(make)
  return builder


def _prepare_locked(make: Callable[[], tfds.core.DatasetBuilder]) -> tfds.core.DatasetBuilder:
  with _file_lock(make().data_dir_root):
    builder = make()
    builder.download_and_prepare()
  return builder


_NO_LOCKS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL)


@contextlib.contextmanager
def _file_lock(directory) -> Iterator[None]:
  """An exclusive lock on a local directory; nothing for remote ones (gs://)."""
  directory = str(directory)
  if '://' in directory:
    yield
    return
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, '.bigbigan_prepare.lock'), 'w') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError as e:
      if e.errno not in _NO_LOCKS:
        raise
      # Lustre without -o flock, some NFS: process 0 still prepares before the others.
      logging.warning('%s has no file locks (%s); preparing the data without one.', directory, e)
      yield
      return
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
