"""In-memory data path: resumable seeded order, the tf.data path's batches in distribution,
eval batches, the .npz cache, and training on a machine without TensorFlow."""

import itertools
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from etils import epath

import bigbigan_jax
from bigbigan_jax import config_checks, default_config, in_memory, input_pipeline, parallel
from bigbigan_jax.datasets import fashion_mnist_local, idx_files
from test_input_pipeline import _write_idx as write_idx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_EXAMPLES = 48  # Three steps of 2 x 8 images: one epoch.
TEST_EXAMPLES = 7


@pytest.fixture(scope='module')
def fashion(tmp_path_factory):
  """(IDX source dir, prepared TFDS data_dir) of a small fashion_mnist_local of random images."""
  source = tmp_path_factory.mktemp('idx')
  rng = np.random.default_rng(0)
  for split, n in (('train', TRAIN_EXAMPLES), ('t10k', TEST_EXAMPLES)):
    write_idx(source / f'{split}-images-idx3-ubyte.gz', rng.integers(0, 256, (n, 28, 28)))
    write_idx(source / f'{split}-labels-idx1-ubyte.gz', np.arange(n) % 10)
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(idx_files.DIR_ENV_VAR, str(source))
    fashion_mnist_local.FashionMnistLocal(data_dir=data_dir).download_and_prepare()
  return source, data_dir


@pytest.fixture
def config(fashion, tmp_path, monkeypatch):
  source, data_dir = fashion
  monkeypatch.setenv(idx_files.DIR_ENV_VAR, str(source))
  c = default_config.tiny_config(data__num_channels=1, data__augment='resize',
                                 data__random_flip=True, data__in_memory=True)
  c.data.dataset, c.data.data_dir = 'fashion_mnist_local', data_dir
  c.data.cache_dir = str(tmp_path / 'cache')
  c.data.eval_split = 'test'
  return c


def _host(batches, n):
  return [np.asarray(b['image']) for b in itertools.islice(batches, n)]


def test_a_resumed_run_gets_the_batches_of_a_fresh_one(config):
  mesh = parallel.make_mesh()
  fresh = _host(in_memory.TrainBatches(config, mesh).iterate(), 7)
  resumed = _host(in_memory.TrainBatches(config, mesh).iterate(start_step=4), 3)
  for a, b in zip(fresh[4:], resumed):
    np.testing.assert_array_equal(a, b)
  config.seed = 1
  other = _host(in_memory.TrainBatches(config, mesh).iterate(), 1)
  assert not np.array_equal(fresh[0], other[0])


def test_each_epoch_is_a_new_permutation_of_the_split(config):
  batches = in_memory.TrainBatches(config, parallel.make_mesh())
  steps_per_epoch = TRAIN_EXAMPLES // batches.indices(0).size
  epochs = [np.concatenate([batches.indices(k).ravel() for k in range(e * steps_per_epoch,
                                                                        (e + 1) * steps_per_epoch)])
            for e in range(2)]
  for order in epochs:
    assert sorted(order) == list(range(TRAIN_EXAMPLES))
  assert epochs[0].tolist() != epochs[1].tolist()


def _unflipped_and_flipped(images, targets):
  """For each image, (index of the target it is, whether it is that target mirrored), matched
  by the smallest mean absolute difference; and that difference's maximum pixel."""
  a = images.astype(np.int32).reshape(len(images), 1, -1)
  mirrored = np.flip(images, axis=-2).astype(np.int32).reshape(len(images), 1, -1)
  b = targets.astype(np.int32).reshape(1, len(targets), -1)
  straight, flipped = np.abs(a - b).mean(-1), np.abs(mirrored - b).mean(-1)
  match = np.minimum(straight, flipped).argmin(1)
  is_flipped = flipped[np.arange(len(images)), match] < straight[np.arange(len(images)), match]
  chosen = np.where(is_flipped[:, None], mirrored[:, 0], a[:, 0])
  worst = np.abs(chosen - b[0, match]).max()
  return match, is_flipped, worst


def test_batches_are_the_tf_data_pipelines_in_distribution(config):
  """One epoch from each path: the same images (each once, resized alike to within one grey
  level, some mirrored), the same shapes and dtype, about half of them mirrored."""
  tf_batches = list(itertools.islice(input_pipeline.train_iterator(config), 3))
  memory_batches = _host(in_memory.TrainBatches(config, parallel.make_mesh()).iterate(), 3)
  assert [b['image'].shape for b in tf_batches] == [b.shape for b in memory_batches]
  assert {b['image'].dtype for b in tf_batches} == {b.dtype for b in memory_batches} == {np.dtype(np.uint8)}
  originals = np.asarray(in_memory._resized(
      in_memory.load_split(config, 'train')[0], config.encoder.resolution))
  flipped_shares = []
  for epoch in (np.concatenate([b['image'] for b in tf_batches]), np.concatenate(memory_batches)):
    epoch = epoch.reshape(-1, *epoch.shape[2:])
    match, is_flipped, worst = _unflipped_and_flipped(epoch, originals)
    assert sorted(match) == list(range(TRAIN_EXAMPLES))  # Every example once.
    assert worst <= 1
    flipped_shares.append(is_flipped.mean())
  # 48 fair coin flips: 0.2-0.8 is 4.2 standard deviations either side.
  assert all(0.2 < share < 0.8 for share in flipped_shares), flipped_shares
  tf_epoch = np.concatenate([b['image'] for b in tf_batches]).astype(np.float64)
  memory_epoch = np.concatenate(memory_batches).astype(np.float64)
  assert abs(tf_epoch.mean() - memory_epoch.mean()) < 0.05
  assert abs(tf_epoch.std() - memory_epoch.std()) < 0.05


def test_eval_batches_hold_what_the_tf_data_eval_iterator_holds(config):
  """The same batch shapes and padding per process, and the same examples over both processes
  (in another order: the IDX files' where TFDS stores them shuffled)."""
  examples = {}
  for name, iterate in (('tf', input_pipeline.eval_iterator), ('memory', in_memory.eval_batches)):
    batches = [list(iterate(config, 'test', 4, process_index=i, process_count=2))
               for i in range(2)]
    examples[name] = sorted(
        (int(label), image.tobytes())
        for b in itertools.chain(*batches)
        for label, image, mask in zip(b['label'], b['image'], b['mask']) if mask)
    examples[name + ' layout'] = [[(b['image'].shape, b['image'].dtype, b['mask'].tolist())
                                   for b in per_process] for per_process in batches]
  assert examples['tf layout'] == examples['memory layout']
  assert len(examples['tf']) == len(examples['memory']) == TEST_EXAMPLES
  for (label, image), (tf_label, tf_image) in zip(examples['memory'], examples['tf']):
    assert label == tf_label
    difference = np.frombuffer(image, np.uint8).astype(int) - np.frombuffer(tf_image, np.uint8)
    assert np.abs(difference).max() <= 1


def test_the_cache_is_read_without_the_source_and_a_bad_one_is_named(config, monkeypatch,
                                                                    tmp_path):
  images, labels = in_memory.load_split(config, 'train')
  path = in_memory.cache_path(config, 'train')
  assert path.exists() and images.shape == (TRAIN_EXAMPLES, 28, 28, 1)
  monkeypatch.setenv(idx_files.DIR_ENV_VAR, str(tmp_path / 'nothing here'))
  cached_images, cached_labels = in_memory.load_split(config, 'train')
  np.testing.assert_array_equal(cached_images, images)
  np.testing.assert_array_equal(cached_labels, labels)
  config.data.num_channels = 3
  assert in_memory.load_split(config, 'train')[0].shape == (TRAIN_EXAMPLES, 28, 28, 3)
  path.write_bytes(path.read_bytes()[:1000])
  with pytest.raises(config_checks.ConfigError, match='cannot be read.*delete it'):
    in_memory.load_split(config, 'train')
  assert path.exists()  # Nothing deleted behind the user's back.


def test_a_cache_written_over_another_process_cache_is_replaced_quietly(tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(in_memory.logging, 'warning', lambda *args: warnings.append(args))
  path = epath.Path(tmp_path) / 'split.npz'
  images, labels = np.zeros((2, 28, 28, 1), np.uint8), np.arange(2)
  in_memory._write_cache(path, images, labels)
  in_memory._write_cache(path, images + 1, labels)  # Another process wrote it meanwhile.
  assert not warnings and [p.name for p in tmp_path.iterdir()] == ['split.npz']
  np.testing.assert_array_equal(in_memory._read_cache(path)[0], images + 1)


def test_processes_decide_together_whether_to_read_the_cache(config, monkeypatch):
  """A host-local cache_dir: while one process lacks the cache, every process reads the
  dataset (whose preparation waits for all of them), and a process other than 0 that still
  lacks it after process 0 wrote its own copy writes one."""
  images, labels = in_memory.load_split(config, 'train')  # This host's cache.
  path, reads, read_split = in_memory.cache_path(config, 'train'), [], idx_files.read_split
  monkeypatch.setattr(idx_files, 'read_split', lambda split: reads.append(split) or read_split(split))
  monkeypatch.setattr(parallel, 'from_every_process', lambda has_cache: [int(has_cache), 0])
  assert np.array_equal(in_memory.load_split(config, 'train')[0], images)
  assert reads == ['train']  # The dataset, not this host's cache.

  path.unlink()
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  again, again_labels = in_memory.load_split(config, 'train')
  assert path.exists() and reads == ['train'] * 2
  assert np.array_equal(again, images) and np.array_equal(again_labels, labels)


def test_a_split_read_through_tfds_holds_the_idx_files_examples(config):
  """The TFDS route (any dataset without its own reader) gives the same examples."""
  images, labels = input_pipeline.decoded_split(config, 'train')
  idx_images, idx_labels = in_memory.load_split(config, 'train')
  assert images.shape == idx_images.shape and images.dtype == np.uint8
  key = lambda imgs, labs: sorted((int(l), i.tobytes()) for i, l in zip(imgs, labs))
  assert key(images, labels) == key(idx_images, idx_labels)


def test_without_tensorflow_a_missing_cache_is_one_sentence(config, monkeypatch):
  monkeypatch.delattr(bigbigan_jax, 'input_pipeline')
  monkeypatch.setitem(sys.modules, 'bigbigan_jax.input_pipeline', None)  # Cannot be imported.
  config.data.dataset = 'mnist'
  with pytest.raises(config_checks.ConfigError, match='mnist-train.npz does not exist.*TensorFlow'):
    in_memory.load_split(config, 'train')


def test_random_crops_are_refused_for_the_in_memory_path(config):
  config.data.augment = 'inception_crop'
  with pytest.raises(config_checks.ConfigError, match="in_memory=True supports data.augment='resize'"):
    config_checks.validate(config, jax.device_count())


def test_main_trains_on_a_machine_without_tensorflow(config, tmp_path):
  """`python -m bigbigan_jax.main` with TensorFlow and TFDS unimportable, from the cache alone."""
  in_memory.load_split(config, 'train')  # Writes the cache.
  fashion_cache = in_memory.cache_path(config, 'train')
  config.data.dataset = 'known_only_by_its_cache'
  fashion_cache.rename(in_memory.cache_path(config, 'train'))
  # The tiny config's 3 channels (the grey cache is repeated into them): the same step and init
  # programs as the suite's shared tiny run, so this process loads them from the compilation
  # cache instead of compiling its own.
  flags = [f'--config={REPO}/configs/tiny.py', f'--workdir={tmp_path / "run"}',
           '--config.num_train_steps=2', '--config.checkpoint_every_steps=2',
           *(f'--config.data.{k}={config.data[k]}' for k in
             ('dataset', 'cache_dir', 'in_memory', 'augment'))]
  script = textwrap.dedent(f"""
      import sys
      sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None  # Not installed.
      from absl import app
      from bigbigan_jax import main
      sys.argv = ['main', *{flags!r}]
      try:
        app.run(main.main, flags_parser=main.parse_flags)
      finally:
        assert not [name for name, module in sys.modules.items()
                    if module and name.startswith('tensorflow')]
  """)
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'JAX_COMPILATION_CACHE_DIR': jax.config.jax_compilation_cache_dir}
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / 'run' / 'checkpoints' / '2').is_dir()
  lines = (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()
  losses = [json.loads(line) for line in lines if 'd_loss' in line]
  assert [m['step'] for m in losses] == [1, 2]
  assert all(np.isfinite(m['d_loss']) for m in losses)
