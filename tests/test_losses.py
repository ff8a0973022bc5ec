"""The BigBiGAN losses against values computed by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from bigbigan_jax import losses

REAL = {'score_x': jnp.array([2.0, 0.5]), 'score_z': jnp.array([-1.0, 0.0]),
        'score_xz': jnp.array([1.0, 3.0])}
FAKE = {'score_x': jnp.array([-2.0, 0.5]), 'score_z': jnp.array([1.0, -0.5]),
        'score_xz': jnp.array([0.0, -3.0])}


def test_discriminator_hinge_is_per_term():
  # Real hinge max(0, 1 - s), fake hinge max(0, 1 + s), each term on its own.
  x = np.mean([0.0, 0.5]) + np.mean([0.0, 1.5])
  z = np.mean([2.0, 1.0]) + np.mean([2.0, 0.5])
  xz = np.mean([0.0, 0.0]) + np.mean([1.0, 0.0])
  total, per_term = losses.discriminator_loss(REAL, FAKE)
  np.testing.assert_allclose(per_term['score_x'], x)
  np.testing.assert_allclose(per_term['score_z'], z)
  np.testing.assert_allclose(per_term['score_xz'], xz)
  np.testing.assert_allclose(total, x + z + xz)
  mean_total, _ = losses.discriminator_loss(REAL, FAKE, reduction='mean')
  np.testing.assert_allclose(mean_total, (x + z + xz) / 3)


def test_per_term_hinge_differs_from_hinge_of_sum():
  # The summed real scores are [2, 3.5], whose single hinge is 0; the per-term hinges are not.
  zero_fake = {t: -jnp.ones(2) for t in losses.SCORE_TERMS}
  total, _ = losses.discriminator_loss(REAL, zero_fake)
  np.testing.assert_allclose(total, 0.25 + 1.5 + 0.0)


def test_encoder_generator_loss_signs():
  # E pushes real-pair scores down (+mean real), G pushes fake-pair scores up (-mean fake).
  total, per_term = losses.encoder_generator_loss(REAL, FAKE)
  expected = {t: np.mean(REAL[t]) - np.mean(FAKE[t]) for t in losses.SCORE_TERMS}
  for t in losses.SCORE_TERMS:
    np.testing.assert_allclose(per_term[t], expected[t])
  np.testing.assert_allclose(total, sum(expected.values()))
  mean_total, _ = losses.encoder_generator_loss(REAL, FAKE, reduction='mean')
  np.testing.assert_allclose(mean_total, sum(expected.values()) / 3)


def test_dropping_unary_terms():
  assert losses.active_terms(use_sx=False) == ('score_z', 'score_xz')
  assert losses.active_terms(use_sx=False, use_sz=False) == ('score_xz',)
  terms = losses.active_terms(use_sz=False)
  total, per_term = losses.discriminator_loss(REAL, FAKE, terms=terms)
  assert set(per_term) == {'score_x', 'score_xz'}
  np.testing.assert_allclose(total, per_term['score_x'] + per_term['score_xz'])


def test_initial_scores_give_the_known_hinge_value():
  zeros = {t: jnp.zeros(4) for t in losses.SCORE_TERMS}
  total, _ = losses.discriminator_loss(zeros, zeros)
  np.testing.assert_allclose(total, 6.0)  # 3 terms x (1 + 1), SPEC 7 smoke test.


def test_unknown_reduction_is_rejected():
  with pytest.raises(ValueError, match='loss.reduction'):
    losses.discriminator_loss(REAL, FAKE, reduction='max')
