"""Tests for k-nearest-neighbour classification."""

import numpy as np
import pytest

from bigbigan_jax.evaluation import feature_store
from bigbigan_jax.evaluation import knn

# Three labelled points and four queries where cosine and euclidean neighbours differ:
# q0's nearest is t0 by distance but t1 by angle; q2's is t1 by distance but t0 by angle;
# q3's is t2 either way (wrong); q1's is t2 either way (right).
_TRAIN = np.array([[1.0, 0.0], [10.0, 1.0], [0.0, 1.0]])
_TRAIN_LABELS = np.array([0, 1, 2])
_TEST = np.array([[5.0, 1.0], [0.2, 3.0], [9.0, 0.0], [0.5, 0.6]])
_TEST_LABELS = np.array([1, 2, 0, 0])


@pytest.mark.parametrize('metric, expected_1nn', [('cosine', 0.75), ('euclidean', 0.25)])
def test_hand_made_1nn(metric, expected_1nn):
  accuracy = knn.knn_accuracy(_TRAIN, _TRAIN_LABELS, _TEST, _TEST_LABELS, num_classes=3,
                              ks=(1, 3), metric=metric)
  # With k=3 every class gets one vote and the tie goes to label 0: right for q2 and q3.
  assert accuracy == {1: expected_1nn, 3: 0.5}


def _brute_force(train, train_labels, test, test_labels, k, metric, num_classes):
  if metric == 'cosine':
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    distance = -test @ train.T
  else:
    distance = ((test[:, None] - train[None]) ** 2).sum(-1)
  nearest = train_labels[np.argsort(distance, axis=1)[:, :k]]
  votes = np.stack([np.bincount(row, minlength=num_classes) for row in nearest])
  return np.mean(votes.argmax(axis=1) == test_labels)


@pytest.mark.parametrize('metric', knn.METRICS)
def test_chunked_matches_brute_force(metric):
  rng = np.random.default_rng(0)
  train, test = rng.normal(size=(50, 6)), rng.normal(size=(13, 6))
  train_labels, test_labels = rng.integers(0, 4, size=50), rng.integers(0, 4, size=13)
  train_store = feature_store.FeatureStore.from_arrays(train.astype(np.float32), train_labels,
                                                       shard_size=9)
  test_store = feature_store.FeatureStore.from_arrays(test.astype(np.float32), test_labels)
  accuracy = knn.knn_accuracy_from_stores(train_store, test_store, num_classes=4, ks=(1, 5),
                                          metric=metric, train_chunk=8, query_batch=4)
  for k in (1, 5):
    assert accuracy[k] == pytest.approx(
        _brute_force(train, train_labels, test, test_labels, k, metric, 4))


def test_rejects_bad_arguments():
  with pytest.raises(ValueError, match='metric'):
    knn.knn_accuracy(_TRAIN, _TRAIN_LABELS, _TEST, _TEST_LABELS, num_classes=3, metric='l1')
  with pytest.raises(ValueError, match='exceeds'):
    knn.knn_accuracy(_TRAIN, _TRAIN_LABELS, _TEST, _TEST_LABELS, num_classes=3, ks=(4,))
