"""Frechet distance, feature statistics and the Inception Score, in float64 numpy.

FID is `frechet_distance` between the Inception pool3 statistics of generated and real
images; IS is `inception_score` of the Inception class predictions of generated images.
"""

import numpy as np
import scipy.linalg
import scipy.special
from etils import epath

# Largest imaginary part of the sqrtm diagonal that is put down to round-off.
_MAX_IMAGINARY = 1e-3


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
  """Returns tr(sqrtm(sigma1 @ sigma2)), regularising both matrices if sqrtm fails."""
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = eps * np.eye(sigma1.shape[0])
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    largest = np.max(np.abs(np.diagonal(covmean).imag))
    if largest > _MAX_IMAGINARY:
      raise ValueError(f'sqrtm of the covariance product has imaginary part {largest:.3g}.')
    covmean = covmean.real
  return float(np.trace(covmean))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

  d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)), in float64.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f'Statistics shapes differ: {mu1.shape}/{sigma1.shape} vs '
                     f'{mu2.shape}/{sigma2.shape}.')
  diff = mu1 - mu2
  tr_covmean = _trace_sqrt_product(sigma1, sigma2, eps)
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased) covariance of features [N, D], in float64."""
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


class RunningStatistics:
  """Streaming mean and covariance of feature batches, in float64.

  Keeps the sum and the sum of outer products of the features, shifted by the first
  batch's mean to limit cancellation, so that no more than one batch is ever held.
  """

  def __init__(self):
    self.count = 0
    self._shift = None
    self._sum = None
    self._outer = None

  def update(self, features: np.ndarray) -> None:
    """Adds a batch of features [B, D]."""
    features = np.asarray(features, np.float64)
    if self._shift is None:
      self._shift = features.mean(axis=0)
      self._sum = np.zeros_like(self._shift)
      self._outer = np.zeros((self._shift.size, self._shift.size))
    centred = features - self._shift
    self._sum += centred.sum(axis=0)
    self._outer += centred.T @ centred
    self.count += features.shape[0]

  def result(self) -> tuple[np.ndarray, np.ndarray]:
    """Returns (mu, sigma) of everything added so far (sigma is unbiased)."""
    if self.count < 2:
      raise ValueError(f'Need at least 2 examples for a covariance, have {self.count}.')
    mean_centred = self._sum / self.count
    sigma = (self._outer - self.count * np.outer(mean_centred, mean_centred)) / (self.count - 1)
    return self._shift + mean_centred, sigma


def inception_score(predictions: np.ndarray, num_splits: int = 10, *,
                    from_logits: bool = True) -> tuple[float, float]:
  """Inception Score: mean and std over splits of exp(E_x KL(p(y|x) || p(y))).

  Args:
    predictions: [N, C] class logits (from_logits=True) or probabilities.
    num_splits: the samples are split into this many parts (the usual 10).
    from_logits: whether `predictions` are logits rather than probabilities.
  """
  predictions = np.asarray(predictions, np.float64)
  probs = scipy.special.softmax(predictions, axis=1) if from_logits else predictions
  scores = [_split_score(part) for part in np.array_split(probs, num_splits)]
  return float(np.mean(scores)), float(np.std(scores))


def _split_score(probs: np.ndarray) -> float:
  """exp of the mean KL divergence between each row of probs and their mean."""
  marginal = probs.mean(axis=0, keepdims=True)
  kl = scipy.special.xlogy(probs, probs) - scipy.special.xlogy(probs, marginal)
  return float(np.exp(kl.sum(axis=1).mean()))


def save_statistics(path: str | epath.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
  """Writes reference statistics to an .npz file with arrays 'mu' and 'sigma'."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('wb') as f:
    np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_statistics(path: str | epath.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads (mu, sigma) written by `save_statistics`."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'No reference statistics at {path}.')
  with path.open('rb') as f, np.load(f) as data:
    if {'mu', 'sigma'} - set(data.files):
      raise ValueError(f'{path} lacks the arrays "mu" and "sigma" (has {data.files}).')
    return data['mu'], data['sigma']
