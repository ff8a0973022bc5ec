"""k-nearest-neighbour classification of frozen features, under jit.

The test features stay on the device; the train features stream past them in chunks (one
pass over a FeatureStore) while a running top-k of the most similar train examples is kept
for every test example. Prediction is a majority vote of the k nearest labels; ties go to
the smallest label.
"""

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bigbigan_jax.evaluation.feature_store import FeatureStore

METRICS = ('cosine', 'euclidean')


def knn_accuracy(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                 test_labels: np.ndarray, *, num_classes: int, ks: Sequence[int] = (1, 25),
                 metric: str = 'cosine', train_chunk: int = 8192,
                 query_batch: int = 4096) -> dict[int, float]:
  """Top-1 accuracy {k: accuracy} of k-NN classification of in-memory features."""
  return knn_accuracy_from_stores(
      FeatureStore.from_arrays(train_feats, train_labels),
      FeatureStore.from_arrays(test_feats, test_labels), num_classes=num_classes, ks=ks,
      metric=metric, train_chunk=train_chunk, query_batch=query_batch)


def knn_accuracy_from_stores(train_store: FeatureStore, test_store: FeatureStore, *,
                             num_classes: int, ks: Sequence[int] = (1, 25),
                             metric: str = 'cosine', train_chunk: int = 8192,
                             query_batch: int = 4096,
                             between_chunks: Callable[[], None] = lambda: None) -> dict[int, float]:
  """Top-1 accuracy {k: accuracy} of k-NN classification; test features must fit on device.

  Args:
    train_store: the labelled neighbours, streamed in chunks of `train_chunk`.
    test_store: the examples to classify.
    num_classes: number of classes; labels lie in [0, num_classes).
    ks: neighbourhood sizes to report.
    metric: 'cosine' (similarity of L2-normalised features) or 'euclidean'.
    train_chunk: train examples compared per step (at least max(ks) are).
    query_batch: test examples compared per step.
    between_chunks: called after each train chunk (the training loop's stop check).
  """
  if metric not in METRICS:
    raise ValueError(f'metric must be one of {METRICS}, not {metric!r}.')
  k_max = max(ks)
  if k_max > len(train_store):
    raise ValueError(f'k={k_max} exceeds the {len(train_store)} train examples.')
  train_chunk = max(train_chunk, k_max)
  queries, query_labels = _batched_queries(test_store, query_batch, metric)
  scores = jnp.full(queries.shape[:2] + (k_max,), -jnp.inf)
  labels = jnp.zeros(queries.shape[:2] + (k_max,), jnp.int32)
  for x, y in train_store.batches(train_chunk):
    pad = train_chunk - len(y)
    valid = np.arange(train_chunk) < len(y)
    scores, labels = _merge_chunk(scores, labels, queries, np.pad(x, ((0, pad), (0, 0))),
                                  np.pad(y, (0, pad)).astype(np.int32), valid, metric=metric)
    between_chunks()
  return {k: _vote_accuracy(labels[..., :k], query_labels, num_classes) for k in ks}


def _batched_queries(store: FeatureStore, query_batch: int,
                     metric: str) -> tuple[jax.Array, np.ndarray]:
  """All test features on device as [B, query_batch, D] (zero padded), and their labels."""
  features, labels = zip(*store.batches(query_batch))
  features = np.concatenate(features).astype(np.float32)
  pad = -len(features) % query_batch
  features = np.pad(features, ((0, pad), (0, 0))).reshape(-1, query_batch, store.dim)
  queries = _normalise(jnp.asarray(features)) if metric == 'cosine' else jnp.asarray(features)
  return queries, np.concatenate(labels)


def _normalise(x: jax.Array) -> jax.Array:
  """Rows scaled to unit L2 norm (zero rows stay zero)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames='metric')
def _merge_chunk(scores: jax.Array, labels: jax.Array, queries: jax.Array, chunk: jax.Array,
                 chunk_labels: jax.Array, valid: jax.Array,
                 metric: str) -> tuple[jax.Array, jax.Array]:
  """Updates the running top-k (scores, labels) [B, Q, k] with one train chunk [T, D].

  Scores are cosine similarities, or q.t - |t|^2 / 2 (= -|q - t|^2 / 2 up to a per-query
  constant) for the euclidean metric; higher is nearer.
  """
  chunk = chunk.astype(jnp.float32)
  if metric == 'cosine':
    chunk, offset = _normalise(chunk), 0.0
  else:
    offset = -0.5 * jnp.sum(jnp.square(chunk), axis=-1)
  offset = jnp.where(valid, offset, -jnp.inf)
  k = scores.shape[-1]

  def merge_batch(args):
    best_scores, best_labels, query = args
    similarity = jnp.dot(query, chunk.T, precision=jax.lax.Precision.HIGHEST) + offset
    chunk_scores, index = jax.lax.top_k(similarity, k)
    merged_scores = jnp.concatenate([best_scores, chunk_scores], axis=-1)
    merged_labels = jnp.concatenate([best_labels, chunk_labels[index]], axis=-1)
    top_scores, top_index = jax.lax.top_k(merged_scores, k)
    return top_scores, jnp.take_along_axis(merged_labels, top_index, axis=-1)

  return jax.lax.map(merge_batch, (scores, labels, queries))


@functools.partial(jax.jit, static_argnames='num_classes')
def _vote(neighbour_labels: jax.Array, num_classes: int) -> jax.Array:
  """Majority label [B, Q] of neighbour labels [B, Q, k]; ties go to the smallest label."""

  def vote_batch(batch_labels):
    rows = jnp.arange(batch_labels.shape[0])[:, None]
    counts = jnp.zeros((batch_labels.shape[0], num_classes), jnp.int32)
    return jnp.argmax(counts.at[rows, batch_labels].add(1), axis=-1)

  return jax.lax.map(vote_batch, neighbour_labels)


def _vote_accuracy(neighbour_labels: jax.Array, labels: np.ndarray, num_classes: int) -> float:
  """Share of the (unpadded) queries whose majority vote is their label."""
  predictions = np.asarray(_vote(neighbour_labels, num_classes)).reshape(-1)[:len(labels)]
  return float(np.mean(predictions == labels))
