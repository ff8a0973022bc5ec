"""Input pipeline: shapes, ranges, per-process slices, seeded order, resume, errors."""

import gzip
import itertools

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bigbigan_jax import default_config
from bigbigan_jax import image_views
from bigbigan_jax import input_pipeline
from bigbigan_jax.datasets import fashion_mnist_local, idx_files

MOCK_EXAMPLES = 12
TRAIN_EXAMPLES = 20
TEST_EXAMPLES = 7
GRAY_STEP = 10  # Example i is a uniform image of gray level GRAY_STEP * i.


def _config(dataset, **overrides):
  c = default_config.tiny_config(**overrides)
  c.data.dataset = dataset
  return c


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _ids(images):
  """Recovers the example index of uniform gray uint8 images."""
  levels = images.reshape(len(images), -1).mean(axis=1)
  return np.round(levels / GRAY_STEP).astype(int).tolist()


@pytest.fixture
def mock_imagenet():
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    yield


def _write_idx(path, array):
  header = np.array([0x0800 | array.ndim, *array.shape], '>u4').tobytes()
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope='module')
def tiny_fashion(tmp_path_factory):
  """The data_dir of a fashion_mnist_local made of small uniform images."""
  source = tmp_path_factory.mktemp('idx')
  for split, n in (('train', TRAIN_EXAMPLES), ('t10k', TEST_EXAMPLES)):
    images = np.repeat(GRAY_STEP * np.arange(n), 28 * 28).reshape(n, 28, 28)
    _write_idx(source / f'{split}-images-idx3-ubyte.gz', images)
    _write_idx(source / f'{split}-labels-idx1-ubyte.gz', np.arange(n) % 10)
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(idx_files.DIR_ENV_VAR, str(source))
    fashion_mnist_local.FashionMnistLocal(data_dir=data_dir).download_and_prepare()
  return data_dir


def _fashion_config(data_dir, **overrides):
  c = _config('fashion_mnist_local', **overrides)
  c.data.data_dir = data_dir
  return c


@pytest.mark.parametrize('augment,channels,e_res,d_res', [
    ('inception_crop', 3, 32, 32),
    ('resize', 1, 32, 16),
    ('inception_crop', 3, 32, 24),
])
def test_train_shapes_and_range(mock_imagenet, augment, channels, e_res, d_res):
  c = _config('imagenet2012', data__augment=augment, data__num_channels=channels,
              encoder__resolution=e_res, model__resolution=d_res, optim__d_steps=2)
  for batch in _take(input_pipeline.train_iterator(c), 2):
    assert set(batch) == {'image'}
    assert batch['image'].shape == (3, 8, e_res, e_res, channels)
    assert batch['image'].dtype == np.uint8
    assert batch['image'].min() < batch['image'].max()
    x_e, x_d = image_views.views(batch['image'], d_res)
    assert x_d.shape == (3, 8, d_res, d_res, channels)
    assert -1 <= x_e.min() < x_e.max() <= 1


def test_uint8_e_view_is_the_float_resize_rounded():
  """The float view differs from resizing straight to float (before uint8 batches) by rounding."""
  image = np.random.default_rng(0).integers(0, 256, (45, 37, 3), np.uint8)
  resized = tf.image.resize(image, [32, 32], method='bicubic', antialias=True).numpy()
  float_view = np.clip(resized / 127.5 - 1.0, -1.0, 1.0)
  uint8_view = image_views.to_float(input_pipeline._to_e_resolution(image, 32).numpy())
  np.testing.assert_allclose(uint8_view, float_view, atol=0.5 / 127.5 + 1e-6)
  assert np.abs(uint8_view - float_view).max() > 0.1 / 127.5  # Rounding, not a copy.


@pytest.mark.parametrize('shape', [(20, 32), (32, 11), (40, 25)])
def test_e_resolution_is_the_antialiased_resize(shape):
  """Enlarging images skip antialiasing, which changes nothing there but float rounding."""
  image = np.random.default_rng(2).integers(0, 256, (*shape, 3), np.uint8)
  resized = tf.image.resize(image, [32, 32], method='bicubic', antialias=True).numpy()
  expected = np.round(np.clip(resized, 0, 255))
  actual = input_pipeline._to_e_resolution(image, 32).numpy().astype(np.float32)
  assert np.abs(actual - expected).max() <= 1
  assert np.mean(actual != expected) < 0.01


@pytest.mark.parametrize('d_res', [32, 16, 24])
def test_d_view_matches_tensorflow(d_res):
  """D's view on the device equals what tf.data computed before batches became uint8."""
  x = image_views.to_float(np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), np.uint8))
  if d_res == 16:
    expected = tf.nn.avg_pool2d(x, ksize=2, strides=2, padding='VALID')
  elif d_res == 32:
    expected = x
  else:
    expected = tf.image.resize(x, [d_res, d_res], method='bilinear', antialias=True)
  np.testing.assert_allclose(image_views.d_view(x, d_res), expected, atol=1e-6)


def test_same_seed_same_batches_other_seed_other_batches(mock_imagenet):
  first = _take(input_pipeline.train_iterator(_config('imagenet2012')), 3)
  again = _take(input_pipeline.train_iterator(_config('imagenet2012')), 3)
  other = _take(input_pipeline.train_iterator(_config('imagenet2012', seed=1)), 3)
  for a, b, o in zip(first, again, other):
    np.testing.assert_array_equal(a['image'], b['image'])
    assert not np.array_equal(a['image'], o['image'])


@pytest.mark.parametrize('start_step', [1, 4])
def test_resume_equals_skipping(mock_imagenet, start_step):
  c = _config('imagenet2012')  # 16 examples a step, 12 an epoch.
  fresh = _take(input_pipeline.train_iterator(c), start_step + 2)[start_step:]
  resumed = _take(input_pipeline.train_iterator(c, start_step=start_step), 2)
  for a, b in zip(fresh, resumed):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_inception_crop_falls_back_to_centre_crop():
  # No box of aspect ratio in [3/4, 4/3] covers 8% of a 3x300 image.
  window = input_pipeline._crop_window(tf.constant([3, 300, 1]), tf.constant([0, 1]))
  assert window.numpy().tolist() == [0, 149, 2, 2]


@pytest.mark.parametrize('channels', [1, 3])
def test_jpeg_crop_decodes_only_the_window_but_equals_decode_then_crop(channels):
  rng = np.random.default_rng(3)
  pixels = np.clip(rng.normal(128, 60, (70, 90, 3)), 0, 255).astype(np.uint8)
  jpeg, png = (tf.io.encode_jpeg(pixels).numpy(), tf.io.encode_png(pixels).numpy())
  for seed in ([0, 1], [5, 9], [7, 2]):
    seed = tf.constant(seed)
    window = input_pipeline._crop_window(tf.constant([70, 90, channels]), seed).numpy()
    top, left, height, width = window
    decoded = tf.io.decode_image(jpeg, channels=channels).numpy()
    crop = input_pipeline._inception_crop(jpeg, channels, seed).numpy()
    np.testing.assert_array_equal(crop, decoded[top:top + height, left:left + width])
    png_crop = input_pipeline._inception_crop(png, channels, seed).numpy()
    assert png_crop.shape == crop.shape


def test_train_epochs_are_reshuffled_process_slices(tiny_fashion):
  c = _fashion_config(tiny_fashion, batch_size=10, optim__d_steps=0)  # 5 a process a step.
  seen = []
  for index in range(2):
    batches = _take(input_pipeline.train_iterator(c, process_index=index, process_count=2), 4)
    ids = [_ids(b['image'][0]) for b in batches]
    epoch_0, epoch_1 = sum(ids[:2], []), sum(ids[2:], [])
    assert sorted(epoch_0) == sorted(epoch_1)
    assert epoch_0 != epoch_1
    seen.append(set(epoch_0))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(TRAIN_EXAMPLES))


def test_eval_processes_get_disjoint_padded_slices(tiny_fashion):
  c = _fashion_config(tiny_fashion)
  slices = []
  for index in range(2):
    batches = list(input_pipeline.eval_iterator(c, 'test', 4, process_index=index, process_count=2))
    assert len(batches) == 2  # 4 and 3 examples, 2 a batch.
    ids, labels = [], []
    for batch in batches:
      assert batch['image'].shape == (2, 32, 32, 3) and batch['image'].dtype == np.uint8
      assert batch['label'].dtype == np.int32 and batch['mask'].dtype == np.float32
      real = batch['mask'] == 1
      ids += [i for i, r in zip(_ids(batch['image']), real) if r]
      labels += batch['label'][real].tolist()
    assert labels == [i % 10 for i in ids]
    slices.append(ids)
  assert not set(slices[0]) & set(slices[1])
  assert sorted(slices[0] + slices[1]) == list(range(TEST_EXAMPLES))


def test_eval_num_examples_and_helper(tiny_fashion):
  c = _fashion_config(tiny_fashion)
  assert input_pipeline.num_examples(c, 'train') == TRAIN_EXAMPLES
  batches = list(input_pipeline.eval_iterator(c, 'test', 4, num_examples=5))
  assert [b['mask'].sum() for b in batches] == [4, 1]


def test_image_folder(tmp_path):
  for label, level in (('a', 0), ('b', 250)):
    (tmp_path / 'train' / label).mkdir(parents=True)
    for i in range(3):
      Image.new('RGB', (40 + i, 30), (level,) * 3).save(tmp_path / 'train' / label / f'{i}.jpg')
  c = _config(f'folder:{tmp_path}', batch_size=4, data__num_channels=1)
  batch = next(input_pipeline.train_iterator(c))
  assert batch['image'].shape == (2, 4, 32, 32, 1)
  halves = [list(input_pipeline.eval_iterator(c, 'train', 4, process_index=i, process_count=2))
            for i in range(2)]
  assert [len(h) for h in halves] == [2, 2]
  assert sum(b['mask'].sum() for h in halves for b in h) == 6


def test_imagenet_not_prepared_error(tmp_path):
  c = _config('imagenet2012')
  c.data.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError) as error:
    input_pipeline.train_iterator(c)
  message = str(error.value)
  assert str(tmp_path / 'downloads' / 'manual') in message
  assert 'ILSVRC2012_img_train.tar' in message and 'ILSVRC2012_img_val.tar' in message
  assert '\n' not in message and message.count('. ') == 0


def test_batch_not_divisible_by_processes():
  with pytest.raises(ValueError, match='not divisible by the process count 3'):
    input_pipeline.train_iterator(_config('imagenet2012'), process_count=3)
