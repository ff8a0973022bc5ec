"""Known-answer tests for the Frechet distance, feature statistics and Inception Score."""

import numpy as np
import pytest

from bigbigan_jax.evaluation import frechet


def _random_statistics(dim=16, seed=0):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(200, dim)) @ rng.normal(size=(dim, dim))
  return frechet.statistics(features)


def test_identical_statistics_have_zero_distance():
  mu, sigma = _random_statistics()
  assert frechet.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_diagonal_gaussians_match_closed_form():
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  s1, s2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2.0 * np.sqrt(s1 * s2))
  assert frechet.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)


def test_distance_is_symmetric_and_positive():
  mu1, sigma1 = _random_statistics(seed=0)
  mu2, sigma2 = _random_statistics(seed=1)
  d12 = frechet.frechet_distance(mu1, sigma1, mu2, sigma2)
  assert d12 > 0
  assert d12 == pytest.approx(frechet.frechet_distance(mu2, sigma2, mu1, sigma1))


@pytest.mark.filterwarnings('ignore::scipy.linalg.LinAlgWarning')
def test_singular_covariances_stay_finite():
  mu = np.zeros(4)
  sigma = np.diag([1.0, 1.0, 0.0, 0.0])
  assert frechet.frechet_distance(mu, sigma, mu + 1.0, sigma) == pytest.approx(4.0, abs=1e-4)


def test_mismatched_shapes_raise():
  with pytest.raises(ValueError, match='shapes'):
    frechet.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_running_statistics_match_numpy():
  rng = np.random.default_rng(2)
  features = rng.normal(loc=100.0, size=(103, 5)) @ rng.normal(size=(5, 5))
  running = frechet.RunningStatistics()
  for i in range(0, len(features), 10):
    running.update(features[i:i + 10].astype(np.float32))
  mu, sigma = running.result()
  assert running.count == 103
  np.testing.assert_allclose(mu, features.astype(np.float32).mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(features.astype(np.float32), rowvar=False),
                             rtol=1e-6, atol=1e-8)
  batch_mu, batch_sigma = frechet.statistics(features.astype(np.float32))
  np.testing.assert_allclose(mu, batch_mu, rtol=1e-9)
  np.testing.assert_allclose(sigma, batch_sigma, rtol=1e-8, atol=1e-8)


def test_running_statistics_need_two_examples():
  running = frechet.RunningStatistics()
  running.update(np.ones((1, 3)))
  with pytest.raises(ValueError, match='at least 2'):
    running.result()


def test_inception_score_of_uniform_predictions_is_one():
  mean, std = frechet.inception_score(np.zeros((100, 10)), num_splits=10)
  assert mean == pytest.approx(1.0) and std == pytest.approx(0.0)


def test_inception_score_of_distinct_one_hots_is_num_classes():
  probs = np.tile(np.eye(7), (10, 1))  # Every split holds each class equally often.
  mean, std = frechet.inception_score(probs, num_splits=10, from_logits=False)
  assert mean == pytest.approx(7.0) and std == pytest.approx(0.0, abs=1e-9)
  logits_mean, _ = frechet.inception_score(100.0 * np.tile(np.eye(7), (10, 1)), num_splits=10)
  assert logits_mean == pytest.approx(7.0, rel=1e-6)


def test_statistics_npz_round_trip(tmp_path):
  mu, sigma = _random_statistics()
  path = tmp_path / 'ref' / 'stats.npz'
  frechet.save_statistics(path, mu, sigma)
  loaded_mu, loaded_sigma = frechet.load_statistics(path)
  np.testing.assert_array_equal(loaded_mu, mu)
  np.testing.assert_array_equal(loaded_sigma, sigma)
  with pytest.raises(FileNotFoundError):
    frechet.load_statistics(tmp_path / 'missing.npz')
