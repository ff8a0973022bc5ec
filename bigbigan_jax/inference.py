"""The trained networks outside training: sample, encode, reconstruct, discriminate.

Sampling uses G's EMA parameters with standing statistics (BigGAN practice): `standing_stats`
runs G in training mode on many fresh latents, advances the spectral-norm vectors for the EMA
weights, and averages the BatchNorm statistics it records. E uses its running statistics and
D its stored spectral vectors. Every function is jitted; arrays sharded over a mesh stay so.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

from bigbigan_jax.models import bigbigan

STANDING_STATS_BATCH = 256  # G forward passes for standing statistics run replicated.


class BigBiGAN:
  """Jitted inference functions for the networks of one config (no cross-replica axis)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.models = bigbigan.build_models(config)
    self._standing_batch = jax.jit(self._standing_batch_impl, static_argnums=3)
    self.sample = jax.jit(self._sample)
    self.encode = jax.jit(self._encode)
    self.reconstruct = jax.jit(self._reconstruct)
    self.discriminate = jax.jit(self._discriminate)

  def _standing_batch_impl(self, params, spectral, key, batch_size):
    z = jax.random.normal(key, (batch_size, self.config.model.z_dim))
    _, new_vars = self.models.generator.apply(
        {'params': params, 'spectral': spectral}, z, train=True, update_sn=True,
        mutable=['spectral', 'batch_stats'])
    return new_vars['spectral'], new_vars['batch_stats']

  def standing_stats(self, params: Any, spectral: Any, key: jax.Array, *, num_batches: int,
                     batch_size: int) -> dict[str, Any]:
    """G's inference variables for `params`: {'spectral', 'batch_stats'} (standing averages)."""
    total = None
    for k in jax.random.split(key, num_batches):
      spectral, stats = self._standing_batch(params, spectral, k, batch_size)
      total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    return {'spectral': spectral, 'batch_stats': jax.tree.map(lambda t: t / num_batches, total)}

  def _sample(self, params, standing, z):
    return self.models.generator.apply({'params': params, **standing}, z, train=False)

  def _encode(self, params, batch_stats, x, key: Optional[jax.Array] = None):
    variables = {'params': params, 'batch_stats': batch_stats}
    rngs = {} if key is None else {'sample': key}
    return self.models.encoder.apply(variables, x, train=False, rngs=rngs)

  def _reconstruct(self, g_params, standing, e_params, e_batch_stats, x,
                   key: Optional[jax.Array] = None):
    """G(E(x)) from z_sample when `key` is given, else from z_mean."""
    out = self._encode(e_params, e_batch_stats, x, key)
    z = out['z_mean'] if key is None else out['z_sample']
    return self._sample(g_params, standing, z)

  def _discriminate(self, params, spectral, x, z):
    return self.models.discriminator.apply({'params': params, 'spectral': spectral}, x, z,
                                           train=False)

  def sampling_variables(self, state, key: Optional[jax.Array] = None, *,
                         num_batches: Optional[int] = None,
                         batch_size: Optional[int] = None) -> dict[str, Any]:
    """Standing statistics of a TrainState's EMA generator.

    By default as the training grids, evaluation and export draw them: from PRNGKey(seed + 2),
    config.standing_stats_batches batches of min(batch_size, STANDING_STATS_BATCH) latents.
    """
    c = self.config
    key = jax.random.PRNGKey(c.seed + 2) if key is None else key
    return self.standing_stats(
        state.g_ema_params, state.g_spectral, key,
        num_batches=c.standing_stats_batches if num_batches is None else num_batches,
        batch_size=min(c.batch_size, STANDING_STATS_BATCH) if batch_size is None else batch_size)
