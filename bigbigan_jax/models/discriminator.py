"""The joint discriminator: F on images, H on latents, J on [F(x), H(z)], and their scores.

s_x = theta_x . F(x), s_z = theta_z . H(z), s_xz = theta_xz . J([F(x), H(z)]).
F is the BigGAN discriminator trunk without the class projection.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from bigbigan_jax.models import layers

# Block (input, output) channel multipliers of `ch` and whether the block downsamples
# (BigGAN D_arch, "wide" blocks: hidden = output channels). Input 0 means image channels.
F_BLOCKS = {
    32: ((0, 4, True), (4, 4, True), (4, 4, False), (4, 4, False)),
    64: ((0, 1, True), (1, 2, True), (2, 4, True), (4, 8, True), (8, 16, False)),
    128: ((0, 1, True), (1, 2, True), (2, 4, True), (4, 8, True), (8, 16, True), (16, 16, False)),
    256: ((0, 1, True), (1, 2, True), (2, 4, True), (4, 8, True), (8, 8, True), (8, 16, True),
          (16, 16, False)),
}


def block_resolutions(resolution: int) -> list[int]:
  out, res = [], resolution
  for _, _, down in layers.resolution_channels(F_BLOCKS, resolution, 'Discriminator'):
    res = res // 2 if down else res
    out.append(res)
  return out


class DBlock(nn.Module):
  """[ReLU]-conv3x3-ReLU-conv3x3-[avgpool], plus a 1x1-conv shortcut when the shape changes;
  the sum in `residual_dtype`."""
  features: int
  downsample: bool
  preactivation: bool
  sn_eps: float
  dtype: Any
  residual_dtype: Any

  @nn.compact
  def __call__(self, x, update_sn: bool):
    conv = lambda k, name: layers.SNConv(self.features, k, sn_eps=self.sn_eps, dtype=self.dtype, name=name)
    h = nn.relu(x) if self.preactivation else x
    h = conv(3, 'conv1')(h, update_sn)
    h = conv(3, 'conv2')(nn.relu(h), update_sn)
    if self.downsample:
      h = layers.avg_pool2(h)
    sc = x
    learnable_sc = self.downsample or x.shape[-1] != self.features
    if self.preactivation:
      sc = conv(1, 'conv_sc')(sc, update_sn) if learnable_sc else sc
      sc = layers.avg_pool2(sc) if self.downsample else sc
    else:
      sc = layers.avg_pool2(sc) if self.downsample else sc
      sc = conv(1, 'conv_sc')(sc, update_sn) if learnable_sc else sc
    return h.astype(self.residual_dtype) + sc.astype(self.residual_dtype)


class FeatureTrunk(nn.Module):
  """F: images [N, R, R, C] -> ReLU + global sum-pooled features [N, 16 ch] (float32)."""
  config: ml_collections.ConfigDict
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, update_sn: bool):
    m = self.config.model
    residual_dtype = layers.residual_dtype(self.config, self.dtype)
    block = nn.remat(DBlock, static_argnums=(2,)) if m.remat else DBlock
    h = x.astype(self.dtype)
    blocks = layers.resolution_channels(F_BLOCKS, m.resolution, 'Discriminator')
    for i, ((_, out_mult, down), res) in enumerate(zip(blocks, block_resolutions(m.resolution))):
      h = block(out_mult * m.d_ch, down, i > 0, m.sn_eps, self.dtype, residual_dtype,
                name=f'block{i}')(h, update_sn)
      if res in m.d_attn_res:
        h = layers.attention(self.config, self.dtype, f'attention{res}')(h, update_sn)
    return jnp.sum(nn.relu(h).astype(jnp.float32), axis=(1, 2))


class Discriminator(nn.Module):
  """Scores (x, z) pairs: returns dict of score_x, score_z, score_xz, each [N] float32.

  `features(x)` (F alone) and `scores(f, z)` split the call: F has no batch statistics, so
  features of separate batches concatenate to the features of the joint batch.
  """
  config: ml_collections.ConfigDict
  dtype: Any = jnp.float32

  def setup(self):
    m = self.config.model
    residual_dtype = layers.residual_dtype(self.config, self.dtype)
    # With float32 residuals, H (fed z) runs in float32 too.
    mlp = lambda dtype: layers.ResidualMLP(
        m.hj_width, m.hj_depth, spectral_norm=m.hj_spectral_norm, sn_eps=m.sn_eps, dtype=dtype,
        residual_dtype=residual_dtype)
    head = lambda: layers.SNDense(1, sn_eps=m.sn_eps, dtype=jnp.float32)
    self.F = FeatureTrunk(self.config, self.dtype)
    self.H = mlp(residual_dtype)
    self.J = mlp(self.dtype)
    self.score_x, self.score_z, self.score_xz = head(), head(), head()

  def __call__(self, x, z, *, train: bool):
    return self.scores(self.features(x, train=train), z, train=train)

  def features(self, x, *, train: bool):
    """F(x) [N, 16 ch] float32."""
    return self.F(x, train)

  def scores(self, f, z, *, train: bool):
    """The three scores of features `f` = F(x) paired with z."""
    h = self.H(z.astype(jnp.float32), train)
    j = self.J(jnp.concatenate([f.astype(self.dtype), h.astype(self.dtype)], axis=-1), train)
    return {
        'score_x': self.score_x(f, train)[:, 0],
        'score_z': self.score_z(h.astype(jnp.float32), train)[:, 0],
        'score_xz': self.score_xz(j.astype(jnp.float32), train)[:, 0],
    }


def check_discriminator_config(config: ml_collections.ConfigDict) -> None:
  """Raises a one-sentence ValueError for a D the config cannot build."""
  m = config.model
  allowed = block_resolutions(m.resolution)
  for res in m.d_attn_res:
    if res not in allowed:
      raise ValueError(f'model.d_attn_res has {res}, which is not a discriminator block '
                       f'resolution; use some of {sorted(set(allowed))}.')
  if m.hj_depth % 2:
    raise ValueError(f'model.hj_depth={m.hj_depth} must be even (H and J are pairs of residual layers).')
