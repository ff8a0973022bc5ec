"""The Fashion-MNIST builder on the real IDX files of Debian's dataset-fashion-mnist."""

import gzip
import os

import numpy as np
import pytest

from bigbigan_jax import default_config
from bigbigan_jax import input_pipeline
from bigbigan_jax.datasets import fashion_mnist_local, idx_files

pytestmark = pytest.mark.skipif(
    not os.path.isdir(idx_files.source_dir()),
    reason='needs `apt-get install dataset-fashion-mnist`')


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  builder = fashion_mnist_local.FashionMnistLocal(data_dir=str(tmp_path_factory.mktemp('tfds')))
  builder.download_and_prepare()
  return builder


def test_split_sizes(builder):
  assert builder.info.splits['train'].num_examples == 60_000
  assert builder.info.splits['test'].num_examples == 10_000


def test_features(builder):
  assert builder.info.features['label'].num_classes == 10
  example = next(iter(builder.as_dataset(split='test').take(1)))
  assert example['image'].shape == (28, 28, 1)
  assert example['image'].dtype.name == 'uint8'
  assert 0 <= int(example['label']) < 10


def test_train_iterator_reads_it(builder):
  c = default_config.tiny_config()
  c.data.dataset = 'fashion_mnist_local'
  c.data.data_dir = builder.data_dir_root.as_posix()
  c.data.num_channels = 1
  batch = next(input_pipeline.train_iterator(c))
  assert batch['image'].shape == (2, 8, 32, 32, 1) and batch['image'].dtype == np.uint8
  assert batch['image'].min() < batch['image'].max()


def test_missing_files_error(tmp_path, monkeypatch):
  monkeypatch.setenv(idx_files.DIR_ENV_VAR, str(tmp_path))
  builder = fashion_mnist_local.FashionMnistLocal(data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist') as error:
    builder.download_and_prepare()
  assert str(tmp_path) in str(error.value)
  assert idx_files.DIR_ENV_VAR in str(error.value)


def test_read_idx_checks_magic(tmp_path):
  path = tmp_path / 'bad.gz'
  with gzip.open(path, 'wb') as f:
    f.write(np.array([0x0801, 1], '>u4').tobytes() + b'\x07')
  assert idx_files.read_idx(str(path), ndim=1).tolist() == [7]
  with pytest.raises(ValueError, match='magic number 2049, expected 2051'):
    idx_files.read_idx(str(path), ndim=3)
