"""Known answers for the encoder-inverts-generator measures."""

import numpy as np

from bigbigan_jax.evaluation import latent_metrics


def test_diagonal_correlation_known_answers():
  z = np.random.default_rng(0).standard_normal((500, 3))
  z_hat = np.stack([2 * z[:, 0] + 1, -z[:, 1], np.full(500, 0.7)], axis=1)
  np.testing.assert_allclose(latent_metrics.diagonal_correlation(z, z_hat), [1.0, -1.0, 0.0],
                             atol=1e-9)
  # A permutation of the dimensions inverts G up to relabelling, which BiGAN's J would reject.
  assert abs(latent_metrics.diagonal_correlation(z, z[:, ::-1])[0]) < 0.2


def test_heldout_r2_credits_any_linear_map():
  rng = np.random.default_rng(1)
  z = rng.standard_normal((1000, 4))
  mixed = z @ rng.standard_normal((4, 4)) + 3.0
  assert latent_metrics.heldout_r2(z, mixed) > 0.999
  assert abs(latent_metrics.heldout_r2(z, rng.standard_normal((1000, 4)))) < 0.05
