"""A gs:// workdir keeps its scheme all the way to the feature shards (issue: pathlib turned
`gs://bucket/run` into the local relative path `gs:/bucket/run`). epath's gs:// backend is
redirected to a local folder, so nothing touches the network."""

import os
import types

import numpy as np
import pytest
from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing

from bigbigan_jax.evaluation import evaluator, feature_store


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs://bucket/... served from tmp_path/gcs/bucket/...; the test runs in tmp_path/cwd."""
  def local(path):
    path = os.fspath(path)
    return str(tmp_path / 'gcs' / path.removeprefix('gs://')) if path.startswith('gs://') else path

  def redirect(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  (tmp_path / 'cwd').mkdir()
  monkeypatch.chdir(tmp_path / 'cwd')
  # With TensorFlow installed epath would pick its tf.io.gfile backend over the mocked one.
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)
  names = ('exists', 'glob', 'isdir', 'listdir', 'makedirs', 'mkdir', 'open', 'remove', 'rmtree',
           'stat', 'walk')
  with epath_testing.mock_epath(**{name: redirect for name in names}):
    yield tmp_path / 'gcs' / 'bucket'


def test_feature_shards_round_trip_through_a_remote_directory(bucket):
  directory = epath.Path('gs://bucket/run/eval_features/7/process_0/train')
  assert not feature_store.is_local(directory)
  rng = np.random.default_rng(0)
  features, labels = rng.normal(size=(11, 3)).astype(np.float32), rng.integers(0, 5, 11)
  with feature_store.FeatureWriter(directory, shard_size=4, dtype=np.float32) as writer:
    writer.append(features[:6], labels[:6])
    writer.append(features[6:], labels[6:])
  assert sorted(p.name for p in (bucket / 'run/eval_features/7/process_0/train').iterdir()) == [
      f'{kind}_{i:05d}.npy' for kind in ('features', 'labels') for i in range(3)]
  store = feature_store.FeatureStore.open(directory)
  read = list(store.batches(11))
  np.testing.assert_array_equal(read[0][0], features)
  np.testing.assert_array_equal(read[0][1], labels)
  assert os.listdir('.') == []  # Nothing under a local `gs:` folder.


def test_evaluator_puts_features_under_a_gs_workdir_and_removes_them(bucket):
  seen = []

  def extract(split, directory, num_examples, between_batches):
    seen.append(directory)
    with feature_store.FeatureWriter(directory) as writer:
      writer.append(np.zeros((2, 3)), np.zeros(2))
    raise KeyboardInterrupt  # Stops before the probes: only the paths matter here.

  config = types.SimpleNamespace(data=types.SimpleNamespace(train_split='train'),
                                 eval=types.SimpleNamespace(num_train_examples=0))
  fake = types.SimpleNamespace(config=config, workdir=epath.Path('gs://bucket/run'))
  with pytest.raises(KeyboardInterrupt):
    evaluator.Evaluator._representation(fake, '1000', extract)  # pylint: disable=protected-access
  assert [os.fspath(d) for d in seen] == ['gs://bucket/run/eval_features/1000/process_0/train']
  assert not (bucket / 'run/eval_features/1000/process_0').exists()
  assert os.listdir('.') == []
