"""sample / encode / reconstruct / discriminate outside training."""

import jax
import numpy as np
import pytest
from conftest import initial_state

from bigbigan_jax import default_config, inference


@pytest.fixture(scope='module')
def setup():
  c = default_config.tiny_config()
  return c, inference.BigBiGAN(c), initial_state(c)


def test_standing_stats_make_samples_independent_of_the_batch(setup):
  c, model, state = setup
  standing = model.sampling_variables(state, jax.random.PRNGKey(1), num_batches=3, batch_size=8)
  z = jax.random.normal(jax.random.PRNGKey(2), (6, c.model.z_dim))
  alone = model.sample(state.g_ema_params, standing, z[:2])
  together = model.sample(state.g_ema_params, standing, z)
  assert alone.shape == (2, 32, 32, 3)
  np.testing.assert_allclose(alone, together[:2], rtol=1e-4, atol=1e-5)  # Batch stats would move O(0.1).
  # The standing statistics are an average over batches, not the initial zeros and ones.
  stats = jax.tree.leaves(standing['batch_stats'])
  assert any(float(np.abs(s).max()) > 0 for s in stats[::2])


def test_encode_reconstruct_and_discriminate(setup):
  c, model, state = setup
  x = jax.random.uniform(jax.random.PRNGKey(3), (4, 32, 32, 3), minval=-1, maxval=1)
  out = model.encode(state.e_params, state.e_batch_stats, x)
  np.testing.assert_array_equal(out['z_sample'], out['z_mean'])  # No key: the mean.
  noisy = model.encode(state.e_params, state.e_batch_stats, x, jax.random.PRNGKey(4))
  assert not np.allclose(noisy['z_sample'], noisy['z_mean'])
  assert out['avepool_feat'].shape[0] == 4 and out['bn_crelu_feat'].shape[1] == 2 * out['avepool_feat'].shape[1]
  standing = model.sampling_variables(state, jax.random.PRNGKey(1), num_batches=2, batch_size=8)
  recon = model.reconstruct(state.g_ema_params, standing, state.e_params, state.e_batch_stats, x)
  np.testing.assert_allclose(recon, model.sample(state.g_ema_params, standing, out['z_mean']),
                             rtol=1e-5, atol=1e-6)
  scores = model.discriminate(state.d_params, state.d_spectral, recon, out['z_mean'])
  assert {k: v.shape for k, v in scores.items()} == {'score_x': (4,), 'score_z': (4,),
                                                     'score_xz': (4,)}
