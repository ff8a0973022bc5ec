"""BigGAN generator G, unconditional through one learned "single label" embedding.

z is split into one chunk for the 4x4 stem and one per upsampling block (hierarchical z).
Each block's two conditional BatchNorms read [z chunk, embedding].
"""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from bigbigan_jax.models import layers

# Block (input, output) channel multipliers of `ch` per resolution (BigGAN G_arch).
G_CHANNELS = {
    32: ((4, 4), (4, 4), (4, 4)),
    64: ((16, 16), (16, 8), (8, 4), (4, 2)),
    128: ((16, 16), (16, 8), (8, 4), (4, 2), (2, 1)),
    256: ((16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1)),
}
BOTTOM_WIDTH = 4


def num_z_chunks(resolution: int) -> int:
  return len(layers.resolution_channels(G_CHANNELS, resolution, 'Generator')) + 1


def block_resolutions(resolution: int) -> list[int]:
  blocks = layers.resolution_channels(G_CHANNELS, resolution, 'Generator')
  return [BOTTOM_WIDTH * 2 ** (i + 1) for i in range(len(blocks))]


class GBlock(nn.Module):
  """CBN-ReLU-up-conv3x3-CBN-ReLU-conv3x3, plus an upsampled 1x1-conv shortcut; the sum in
  `residual_dtype`."""
  features: int
  sn_eps: float
  bn_eps: float
  axis_name: Optional[str]
  dtype: Any
  residual_dtype: Any

  @nn.compact
  def __call__(self, x, cond, train: bool, update_sn: bool):
    cbn = lambda name: layers.ConditionalBatchNorm(
        sn_eps=self.sn_eps, bn_eps=self.bn_eps, axis_name=self.axis_name, dtype=self.dtype, name=name)
    conv = lambda k, name: layers.SNConv(self.features, k, sn_eps=self.sn_eps, dtype=self.dtype, name=name)
    h = nn.relu(cbn('bn1')(x, cond, train=train, update_sn=update_sn))
    h = conv(3, 'conv1')(layers.upsample2(h), update_sn)
    h = nn.relu(cbn('bn2')(h, cond, train=train, update_sn=update_sn))
    h = conv(3, 'conv2')(h, update_sn)
    sc = conv(1, 'conv_sc')(layers.upsample2(x), update_sn)
    return h.astype(self.residual_dtype) + sc.astype(self.residual_dtype)


class Generator(nn.Module):
  """Maps z [N, z_dim] to images [N, R, R, C] in [-1, 1] (tanh).

  `train` normalises with batch statistics (recording them); otherwise with the standing ones.
  `update_sn` (default: `train`) advances the spectral-norm power iteration.
  """
  config: ml_collections.ConfigDict
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, z, *, train: bool, update_sn: Optional[bool] = None):
    update_sn = train if update_sn is None else update_sn
    m = self.config.model
    blocks = layers.resolution_channels(G_CHANNELS, m.resolution, 'Generator')
    chunks = jnp.split(z.astype(jnp.float32), num_z_chunks(m.resolution), axis=-1)
    embedding = self.param('embedding', layers.orthogonal, (1, m.embed_dim), jnp.float32)
    embedding = jnp.broadcast_to(embedding, (z.shape[0], m.embed_dim))

    stem_ch = blocks[0][0] * m.g_ch
    residual_dtype = layers.residual_dtype(self.config, self.dtype)
    h = layers.SNDense(BOTTOM_WIDTH * BOTTOM_WIDTH * stem_ch, sn_eps=m.sn_eps, dtype=residual_dtype,
                       name='stem')(chunks[0], update_sn)
    h = h.reshape(z.shape[0], BOTTOM_WIDTH, BOTTOM_WIDTH, stem_ch)
    block = nn.remat(GBlock, static_argnums=(3, 4)) if m.remat else GBlock
    for i, ((_, out_mult), res) in enumerate(zip(blocks, block_resolutions(m.resolution))):
      cond = jnp.concatenate([chunks[i + 1], embedding], axis=-1)
      h = block(out_mult * m.g_ch, m.sn_eps, m.bn_eps, self.axis_name, self.dtype, residual_dtype,
                name=f'block{i}')(h, cond, train, update_sn)
      if res in m.g_attn_res:
        h = layers.attention(self.config, self.dtype, f'attention{res}')(h, update_sn)

    h = layers.BatchStatsNorm(eps=m.bn_eps, axis_name=self.axis_name, name='out_bn')(h, train)
    scale = self.param('out_bn_scale', nn.initializers.ones, (h.shape[-1],), jnp.float32)
    bias = self.param('out_bn_bias', nn.initializers.zeros, (h.shape[-1],), jnp.float32)
    h = nn.relu(h * scale.astype(self.dtype) + bias.astype(self.dtype))
    h = layers.SNConv(self.config.data.num_channels, 3, sn_eps=m.sn_eps, dtype=self.dtype,
                      name='out_conv')(h, update_sn)
    return jnp.tanh(h.astype(jnp.float32))


def check_generator_config(config: ml_collections.ConfigDict) -> None:
  """Raises a one-sentence ValueError for a G the config cannot build."""
  m = config.model
  chunks = num_z_chunks(m.resolution)
  if m.z_dim % chunks:
    raise ValueError(f'model.z_dim={m.z_dim} must split evenly into the {chunks} hierarchical '
                     f'chunks of a {m.resolution} px generator.')
  allowed = block_resolutions(m.resolution)
  for res in m.g_attn_res:
    if res not in allowed:
      raise ValueError(f'model.g_attn_res has {res}, which is not a generator block resolution; '
                       f'use some of {allowed}.')
