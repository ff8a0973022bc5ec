"""How well an encoder inverts a generator: z against E(G(z)) over a set of latents."""

import numpy as np


def diagonal_correlation(z: np.ndarray, z_hat: np.ndarray) -> np.ndarray:
  """corr(z_hat_i, z_i) for each latent dimension i; 0 where z_hat_i is constant.

  BiGAN's optimum is E = G^-1, where it is 1; for untrained networks it is near 0, each
  dimension's sign being random.
  """
  z_c = (z - z.mean(0)) / z.std(0)
  z_hat_c = (z_hat - z_hat.mean(0)) / np.maximum(z_hat.std(0), 1e-12)
  return (z_c * z_hat_c).mean(0)


def heldout_r2(z: np.ndarray, z_hat: np.ndarray) -> float:
  """R^2 of a least-squares linear map z_hat -> z fitted on the first half, scored on the rest.

  It credits any linear trace of z, which random networks already keep.
  """
  half = len(z) // 2
  features = np.concatenate([z_hat, np.ones((len(z), 1))], axis=1)
  coef, *_ = np.linalg.lstsq(features[:half], z[:half], rcond=None)
  residual = z[half:] - features[half:] @ coef
  return float(1.0 - residual.var(axis=0).mean() / z[half:].var(axis=0).mean())
