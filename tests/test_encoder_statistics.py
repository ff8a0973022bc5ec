"""Measured BatchNorm statistics of E: pooling, exactness on one batch, whole batches only."""

import jax
import numpy as np
import pytest
from conftest import initial_state

from bigbigan_jax import config_checks, default_config, parallel
from bigbigan_jax.evaluation import encoder_statistics
from bigbigan_jax.models import bigbigan


def initial():
  c = default_config.tiny_config()
  return c, initial_state(c), parallel.make_mesh()


def test_pooled_moments_are_the_moments_of_the_union():
  rng = np.random.default_rng(0)
  groups = [rng.normal(loc, scale, size=(50, 4)) for loc, scale in ((0, 1), (3, 0.5), (-2, 2))]
  moments = [{('block', 'mean'): g.mean(0), ('block', 'var'): g.var(0)} for g in groups]
  pooled = encoder_statistics.pool_moments(moments)
  union = np.concatenate(groups)
  np.testing.assert_allclose(pooled[('block', 'mean')], union.mean(0), rtol=1e-10)
  np.testing.assert_allclose(pooled[('block', 'var')], union.var(0), rtol=1e-10)


def test_statistics_of_one_batch_make_inference_equal_training_on_it():
  c, state, mesh = initial()
  x = np.random.default_rng(1).uniform(-1, 1, (8, c.encoder.resolution, c.encoder.resolution,
                                               c.data.num_channels)).astype(np.float32)
  encoder = bigbigan.build_models(c).encoder
  training, _ = encoder.apply({'params': state.e_params, 'batch_stats': state.e_batch_stats}, x,
                              train=True, mutable=['batch_stats'])
  infer = lambda stats: encoder.apply({'params': state.e_params, 'batch_stats': stats}, x,
                                      train=False)
  measured = encoder_statistics.measure_batches(c, mesh, state.e_params, state.e_batch_stats,
                                                [{'image': x, 'mask': np.ones(8, np.float32)}])
  for feature in ('avepool_feat', 'bn_crelu_feat', 'z_mean'):
    np.testing.assert_allclose(infer(measured)[feature], training[feature], rtol=1e-3, atol=1e-3)
  # The placeholders (mean 0, variance 1) compute a different network.
  assert not np.allclose(infer(state.e_batch_stats)['avepool_feat'], training['avepool_feat'],
                         rtol=1e-2, atol=1e-2)


def test_measure_stops_at_the_first_padded_batch(monkeypatch):
  c, state, mesh = initial()
  shape = (c.eval.batch_size, c.encoder.resolution, c.encoder.resolution, c.data.num_channels)
  rng = np.random.default_rng(2)
  images = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(4)]
  masks = [np.ones(shape[0], np.float32)] * 3 + [np.arange(shape[0]) < 3]
  asked = []

  def eval_iterator(config, split, batch_size, *, num_examples):
    asked.append((split, batch_size, num_examples))
    return iter([{'image': x, 'mask': m.astype(np.float32)} for x, m in zip(images, masks)])

  monkeypatch.setattr(encoder_statistics.data, 'eval_batches', eval_iterator)
  measured = encoder_statistics.measure(c, mesh, state.e_params, state.e_batch_stats, 'train', 4)
  expected = encoder_statistics.measure_batches(
      c, mesh, state.e_params, state.e_batch_stats,
      [{'image': x, 'mask': np.ones(shape[0], np.float32)} for x in images[:3]])
  assert asked == [('train', c.eval.batch_size, 4 * c.eval.batch_size)]
  for a, b in zip(jax.tree.leaves(measured), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6)

  masks[0] = masks[3]
  with pytest.raises(config_checks.ConfigError,
                     match=f'no full batch of eval.batch_size={c.eval.batch_size}'):
    encoder_statistics.measure(c, mesh, state.e_params, state.e_batch_stats, 'train', 4)


def test_zero_init_bn_batches_keep_the_placeholders():
  c, state, mesh = initial()
  c.eval.init_bn_batches = 0
  assert encoder_statistics.with_measured_statistics(c, mesh, state) is state
