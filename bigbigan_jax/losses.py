"""BigBiGAN losses on the three discriminator scores (SPEC 1.2).

Encoder pairs (x, E(x)) carry y = +1 and generator pairs (G(z), z) carry y = -1.

- D: a hinge on each score term separately, h(t) = max(0, 1 - t):
  L_D = E_real[sum_t h(s_t)] + E_fake[sum_t h(-s_t)].
- E and G: linear in the scores, L_EG = E_real[sum_t s_t] - E_fake[sum_t s_t], so E pushes the
  scores of encoder pairs down and G pushes those of generator pairs up.

`reduction='sum'` sums the active terms as the paper writes the loss; `reduction='mean'`
averages them as the official TF-Hub demo does (1/3 of the sum with all three terms), which
only rescales the effective learning rate. The unary terms s_x and s_z can be dropped for the
paper's ablations; s_xz is always kept.
"""

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

SCORE_TERMS = ('score_x', 'score_z', 'score_xz')
REDUCTIONS = ('sum', 'mean')
Scores = Mapping[str, jax.Array]


def active_terms(use_sx: bool = True, use_sz: bool = True) -> tuple[str, ...]:
  return tuple(t for t, on in zip(SCORE_TERMS, (use_sx, use_sz, True)) if on)


def _combine(per_term: dict[str, jax.Array], reduction: str) -> jax.Array:
  if reduction not in REDUCTIONS:
    raise ValueError(f'loss.reduction must be one of {REDUCTIONS}, got {reduction!r}.')
  total = sum(per_term.values())
  return total / len(per_term) if reduction == 'mean' else total


def discriminator_loss(real: Scores, fake: Scores, *, terms: Sequence[str] = SCORE_TERMS,
                       reduction: str = 'sum') -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-term hinge loss of D; returns the total and each term's (real + fake) hinge."""
  per_term = {
      t: jnp.mean(jax.nn.relu(1.0 - real[t])) + jnp.mean(jax.nn.relu(1.0 + fake[t])) for t in terms
  }
  return _combine(per_term, reduction), per_term


def encoder_generator_loss(real: Scores, fake: Scores, *, terms: Sequence[str] = SCORE_TERMS,
                           reduction: str = 'sum') -> tuple[jax.Array, dict[str, jax.Array]]:
  """The joint E/G loss; returns the total and each term's E_real[s] - E_fake[s]."""
  per_term = {t: jnp.mean(real[t]) - jnp.mean(fake[t]) for t in terms}
  return _combine(per_term, reduction), per_term
