"""Linear probe: multinomial logistic regression on frozen features, trained with optax.

Features are standardised with the train split's mean and std (one streaming pass). The L2
penalty is picked from a grid by top-1 on a held-out slice of the train features, all grid
values being trained together in one pass over the data; the probe is then retrained on all
train features with the chosen value and scored on the test features.
"""

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigbigan_jax.evaluation.feature_store import FeatureStore

__all__ = ['FeatureStore', 'train_and_evaluate']

# Standard deviations below this (constant features) are treated as this.
_MIN_STD = 1e-6


def train_and_evaluate(train_store: FeatureStore, test_store: FeatureStore, *,
                       num_classes: int, epochs: int = 30, batch_size: int = 1024,
                       weight_decays: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3),
                       holdout_fraction: float = 0.1, learning_rate: float = 1e-3,
                       seed: int = 0, between_epochs: Callable[[], None] = lambda: None) -> dict:
  """Trains a linear classifier on train_store and scores it on test_store.

  Args:
    train_store: train features and labels.
    test_store: test features and labels.
    num_classes: number of classes; labels lie in [0, num_classes).
    epochs: passes over the train features per fit.
    batch_size: minibatch size for training and evaluation.
    weight_decays: grid of L2 penalty coefficients (on the weights, not the bias).
    holdout_fraction: share of the train features held out to pick the weight decay
      (unused when the grid has a single value).
    learning_rate: peak Adam learning rate, decayed to 0 with a cosine schedule.
    seed: seeds the holdout split and the data order.
    between_epochs: called after each epoch of each fit (the training loop's stop check).

  Returns:
    dict with 'top1' and 'top5' test accuracies, the chosen 'weight_decay' and the
    'holdout_top1' of every grid value (empty when the grid has a single value).
  """
  fit = functools.partial(_fit, num_classes=num_classes, epochs=epochs, batch_size=batch_size,
                          learning_rate=learning_rate, seed=seed, between_epochs=between_epochs)
  holdout_top1 = []
  if len(weight_decays) > 1:
    fit_store, holdout_store = train_store.split(holdout_fraction, seed)
    if not len(holdout_store):
      raise ValueError(f'holdout_fraction={holdout_fraction} holds out no train examples.')
    top1, _ = _evaluate(fit(fit_store, weight_decays), holdout_store, batch_size)
    holdout_top1 = [float(t) for t in top1]
  weight_decay = weight_decays[int(np.argmax(holdout_top1))] if holdout_top1 else weight_decays[0]
  top1, top5 = _evaluate(fit(train_store, [weight_decay]), test_store, batch_size)
  return dict(top1=float(top1[0]), top5=float(top5[0]), weight_decay=float(weight_decay),
              holdout_top1=holdout_top1)


def _fit(store: FeatureStore, weight_decays: Sequence[float], *, num_classes: int, epochs: int,
         batch_size: int, learning_rate: float, seed: int,
         between_epochs: Callable[[], None]) -> dict:
  """Trains one probe per weight decay together; returns their params and standardisation."""
  batch_size = min(batch_size, len(store))
  total_steps = epochs * (len(store) // batch_size)
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, total_steps))
  mean, inv_std = _standardisation(store, batch_size)
  decays = jnp.asarray(weight_decays, jnp.float32)
  params = {'w': jnp.zeros((len(weight_decays), store.dim, num_classes)),
            'b': jnp.zeros((len(weight_decays), num_classes))}
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    x = (x.astype(jnp.float32) - mean) * inv_std
    grads = jax.grad(_penalised_loss)(params, x, y, decays)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(seed)
  for _ in range(epochs):
    for x, y in store.batches(batch_size, shuffle=True, seed=int(rng.integers(2**31)),
                              drop_remainder=True):
      params, opt_state = step(params, opt_state, x, y)
    between_epochs()
  return dict(params=params, mean=mean, inv_std=inv_std)


def _logits(params: dict, x: jax.Array) -> jax.Array:
  """Logits [G, N, C] of the G stacked probes for standardised features x [N, D]."""
  return jnp.einsum('nd,gdc->gnc', x, params['w']) + params['b'][:, None, :]


def _penalised_loss(params: dict, x: jax.Array, y: jax.Array, decays: jax.Array) -> jax.Array:
  """Sum over probes of mean cross-entropy plus (decay / 2) * |w|^2."""
  logits = _logits(params, x)
  labels = jnp.broadcast_to(y, logits.shape[:2])
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(axis=1)
  return jnp.sum(xent + 0.5 * decays * jnp.sum(jnp.square(params['w']), axis=(1, 2)))


@jax.jit
def _shifted_sums(x: jax.Array, shift: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sum and sum of squares of x - shift over the batch."""
  centred = x.astype(jnp.float32) - shift
  return centred.sum(axis=0), jnp.square(centred).sum(axis=0)


def _standardisation(store: FeatureStore, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Per-feature mean and 1/std of the store, in one streaming pass."""
  shift, total, total_sq = None, 0.0, 0.0
  for x, _ in store.batches(batch_size):
    if shift is None:
      shift = np.asarray(x, np.float32).mean(axis=0)
    batch_sum, batch_sq = _shifted_sums(x, shift)
    total += np.asarray(batch_sum, np.float64)
    total_sq += np.asarray(batch_sq, np.float64)
  shifted_mean = total / len(store)
  std = np.sqrt(np.maximum(total_sq / len(store) - np.square(shifted_mean), 0.0))
  return jnp.asarray(shift + shifted_mean, jnp.float32), jnp.asarray(
      1.0 / np.maximum(std, _MIN_STD), jnp.float32)


@jax.jit
def _correct(probe: dict, x: jax.Array, y: jax.Array, valid: jax.Array) -> jax.Array:
  """Counts [2, G] of valid examples whose label is the top-1 / within the top-5 logits."""
  x = (x.astype(jnp.float32) - probe['mean']) * probe['inv_std']
  logits = _logits(probe['params'], x)
  top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  hits = top == y[None, :, None]
  return jnp.stack([hits[..., 0], hits.any(axis=-1)]).astype(jnp.int32) @ valid


def _evaluate(probe: dict, store: FeatureStore, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Top-1 and top-5 accuracy [G] of each probe on the store."""
  counts = 0
  for x, y in store.batches(batch_size):
    pad = batch_size - len(y)
    valid = np.arange(batch_size) < len(y)
    counts += np.asarray(_correct(probe, np.pad(x, ((0, pad), (0, 0))), np.pad(y, (0, pad)),
                                  valid.astype(np.int32)))
  return counts[0] / len(store), counts[1] / len(store)
