"""Tests for the FeatureStore and the linear probe."""

import numpy as np
import pytest

from bigbigan_jax.evaluation import feature_store
from bigbigan_jax.evaluation import linear_probe


def _data(n=23, dim=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, dim)).astype(np.float32), rng.integers(0, 5, size=n)


def _collect(batches):
  xs, ys = zip(*batches)
  return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize('dtype', [np.float16, np.float32])
def test_writer_store_round_trip(tmp_path, dtype):
  features, labels = _data()
  with feature_store.FeatureWriter(tmp_path, shard_size=7, dtype=dtype) as writer:
    for i in range(0, len(labels), 5):
      writer.append(features[i:i + 5], labels[i:i + 5])
  store = feature_store.FeatureStore.open(tmp_path)
  assert len(store) == 23 and store.dim == 3
  assert sorted(p.name for p in tmp_path.glob('features_*.npy')) == [
      f'features_{i:05d}.npy' for i in range(4)]
  x, y = _collect(store.batches(4))
  assert x.dtype == np.float32  # Stored as `dtype`, read as float32 (see FeatureStore.batches).
  np.testing.assert_array_equal(x, features.astype(dtype).astype(np.float32))
  np.testing.assert_array_equal(y, labels)


def test_writer_refuses_to_overwrite(tmp_path):
  writer = feature_store.FeatureWriter(tmp_path, shard_size=4)
  writer.append(*_data(n=4))
  with pytest.raises(FileExistsError):
    feature_store.FeatureWriter(tmp_path)


def test_shuffled_batches_are_a_permutation():
  features, labels = _data(n=50)
  store = feature_store.FeatureStore.from_arrays(features, labels, shard_size=8)
  batches = list(store.batches(6, shuffle=True, seed=3, drop_remainder=True))
  assert [len(y) for _, y in batches] == [6] * 8
  x, y = _collect(store.batches(6, shuffle=True, seed=3, buffer_shards=2))
  assert not np.array_equal(x, features)
  order = np.lexsort(x.T)
  expected = np.lexsort(features.T)
  np.testing.assert_array_equal(x[order], features[expected])
  np.testing.assert_array_equal(y[order], labels[expected])


def test_split_partitions_the_store():
  features, labels = _data(n=100)
  store = feature_store.FeatureStore.from_arrays(features, labels, shard_size=30)
  rest, held = store.split(0.2, seed=1)
  assert len(held) == 6 + 6 + 6 + 2 and len(rest) == 80
  x = np.concatenate([_collect(rest.batches(7))[0], _collect(held.batches(7))[0]])
  np.testing.assert_array_equal(np.sort(x, axis=0), np.sort(features, axis=0))


def _separable(n, num_classes=10, dim=32, seed=0):
  """Gaussian blobs around well-separated class centres (linearly separable in practice)."""
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(123).normal(size=(num_classes, dim)) * 3.0
  labels = rng.integers(0, num_classes, size=n)
  features = centres[labels] + 0.3 * rng.normal(size=(n, dim)) + 5.0
  return feature_store.FeatureStore.from_arrays(features.astype(np.float32), labels, 512)


def test_probe_separates_separable_features():
  result = linear_probe.train_and_evaluate(
      _separable(2000), _separable(500, seed=1), num_classes=10, epochs=5, batch_size=128,
      weight_decays=(0.0, 1e-3), holdout_fraction=0.1, learning_rate=1e-2, seed=0)
  assert result['top1'] >= 0.99
  assert result['top5'] >= result['top1']
  assert result['weight_decay'] in (0.0, 1e-3)
  assert len(result['holdout_top1']) == 2 and min(result['holdout_top1']) >= 0.99


def test_probe_on_random_labels_is_near_chance():
  rng = np.random.default_rng(0)
  train = feature_store.FeatureStore.from_arrays(
      rng.normal(size=(600, 8)).astype(np.float32), rng.integers(0, 10, size=600))
  test = feature_store.FeatureStore.from_arrays(
      rng.normal(size=(1000, 8)).astype(np.float32), rng.integers(0, 10, size=1000))
  result = linear_probe.train_and_evaluate(train, test, num_classes=10, epochs=2, batch_size=100,
                                           weight_decays=(1e-4,))
  assert result['holdout_top1'] == [] and result['weight_decay'] == 1e-4
  assert 0.03 < result['top1'] < 0.2 and 0.35 < result['top5'] < 0.65
