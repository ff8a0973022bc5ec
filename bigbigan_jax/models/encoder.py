"""BigBiGAN encoder E: a ResNet-v2 or RevNet backbone and an MLP head to a Gaussian over z.

The backbones follow the revisiting-self-supervised ResNet/RevNet family (SPEC 2.4): one
`base_width` (64 in the paper) sets the first stage's bottleneck width, a name suffix x2/x4
multiplies every channel count, and the pooled feature is 32 * base_width * multiplier wide.
Parameters do not depend on the input size, which can be any size of at least 32 pixels.
"""

import functools
import re
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bigbigan_jax.models import layers

# Bottleneck units per stage for each depth.
STAGE_UNITS = {
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}
FAMILIES = ('resnet', 'revnet')
WIDTH_MULTIPLIERS = (1, 2, 4)
MIN_RESOLUTION = 32
_NAME_PATTERN = re.compile('({})({})(?:x({}))?'.format(
    '|'.join(FAMILIES), '|'.join(map(str, STAGE_UNITS)), '|'.join(map(str, WIDTH_MULTIPLIERS))))

ModuleDef = Callable[..., nn.Module]
he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')


def parse_encoder_name(name: str) -> tuple[str, int, int]:
  """Splits e.g. 'revnet50x4' into ('revnet', 50, 4); a missing suffix means x1."""
  match = _NAME_PATTERN.fullmatch(name)
  if not match:
    bases = ', '.join(f'{f}{d}' for f in FAMILIES for d in STAGE_UNITS)
    suffixes = ', '.join(f'x{m}' for m in WIDTH_MULTIPLIERS)
    raise ValueError(f'Encoder name {name!r} is not supported; use one of {bases}, '
                     f'optionally followed by one of {suffixes}.')
  return match[1], int(match[2]), int(match[3] or 1)


def _pad_hw(x, pad: int):
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


class BottleneckV2(nn.Module):
  """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3 (strided), BN-ReLU-1x1 to `features`.

  The bottleneck is features / 4 wide. The shortcut is the identity, a strided 1x1 projection
  of the pre-activated input when the shape changes, or absent with `shortcut=False`. The sum
  is in `residual_dtype` (default: the dtype of h).
  """
  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  shortcut: bool = True
  residual_dtype: Any = None

  @nn.compact
  def __call__(self, x):
    width = self.features // 4
    preact = nn.relu(self.norm(name='bn1')(x))
    h = self.conv(width, (1, 1), name='conv1')(preact)
    h = nn.relu(self.norm(name='bn2')(h))
    h = self.conv(width, (3, 3), strides=self.strides, padding=((1, 1), (1, 1)), name='conv2')(h)
    h = nn.relu(self.norm(name='bn3')(h))
    h = self.conv(self.features, (1, 1), name='conv3')(h)
    if not self.shortcut:
      return h
    if self.strides > 1 or x.shape[-1] != self.features:
      x = self.conv(self.features, (1, 1), strides=self.strides, name='proj')(preact)
    dtype = self.residual_dtype or h.dtype
    return x.astype(dtype) + h.astype(dtype)


class ReversibleUnit(nn.Module):
  """RevNet coupling: (x1, x2) -> (x2, x1 + F(x2)), F a no-shortcut pre-activation bottleneck."""
  conv: ModuleDef
  norm: ModuleDef
  residual_dtype: Any = None

  @nn.compact
  def __call__(self, x):
    x1, x2 = jnp.split(x, 2, axis=-1)
    f = BottleneckV2(x2.shape[-1], self.conv, self.norm, shortcut=False, name='f')(x2)
    dtype = self.residual_dtype or f.dtype
    y1 = x1.astype(dtype) + f.astype(dtype)
    x2 = x2.astype(dtype)
    return jnp.concatenate([x2, y1], axis=-1)


def _root(x, features: int, conv: ModuleDef):
  """7x7/2 conv, then a 3x3/2 max-pool over zero padding (as in the reference TF code)."""
  x = conv(features, (7, 7), strides=2, padding=((3, 3), (3, 3)), name='root_conv')(x)
  return nn.max_pool(_pad_hw(x, 1), (3, 3), (2, 2), 'VALID')


class ResNetV2(nn.Module):
  """Pre-activation ResNet with bottleneck stages at width * {1, 2, 4, 8} (4x expansion);
  `remat` recomputes each unit in the backward pass."""
  units: tuple[int, ...]
  width: int
  conv: ModuleDef
  norm: ModuleDef
  remat: bool = False
  residual_dtype: Any = None

  @nn.compact
  def __call__(self, x):
    x = _root(x, self.width, self.conv)
    unit_cls = nn.remat(BottleneckV2) if self.remat else BottleneckV2
    for stage, num_units in enumerate(self.units):
      for unit in range(num_units):
        x = unit_cls(4 * self.width * 2**stage, self.conv, self.norm,
                     strides=2 if stage > 0 and unit == 0 else 1,
                     residual_dtype=self.residual_dtype,
                     name=f'stage{stage + 1}_unit{unit + 1}')(x)
    return nn.relu(self.norm(name='final_bn')(x))


class RevNet(nn.Module):
  """Reversible ResNet: stages of coupling units at 4 * width channels, doubled between stages
  by a 2x2 average pool and zero channel padding; a final BN without ReLU. `remat` recomputes
  each unit in the backward pass."""
  units: tuple[int, ...]
  width: int
  conv: ModuleDef
  norm: ModuleDef
  remat: bool = False
  residual_dtype: Any = None

  @nn.compact
  def __call__(self, x):
    x = _root(x, 4 * self.width, self.conv)
    unit_cls = nn.remat(ReversibleUnit) if self.remat else ReversibleUnit
    for stage, num_units in enumerate(self.units):
      if stage > 0:
        x = nn.avg_pool(x, (2, 2), (2, 2), padding='SAME', count_include_pad=False)
        c = x.shape[-1]
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (c // 2, c // 2)))
      for unit in range(num_units):
        x = unit_cls(self.conv, self.norm, residual_dtype=self.residual_dtype,
                     name=f'stage{stage + 1}_unit{unit + 1}')(x)
    return self.norm(name='final_bn')(x)


class Encoder(nn.Module):
  """Maps images [N, H, W, C] in [-1, 1] to z statistics, a z sample and evaluation features.

  Returns float32 `z_mean`, `z_stdev`, `z_sample` [N, z_dim], `avepool_feat` [N, D] and
  `bn_crelu_feat` [N, 2D]. A stochastic encoder's z_sample = z_mean + z_stdev * eps takes eps
  from `noise` when given, else draws it from the 'sample' rng, else (inference without a
  key) uses eps = 0.
  """
  config: ml_collections.ConfigDict
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, *, train: bool, noise: Optional[jax.Array] = None) -> dict[str, jax.Array]:
    ec = self.config.encoder
    family, depth, multiplier = parse_encoder_name(ec.name)
    num_channels = self.config.data.num_channels
    if x.ndim != 4 or x.shape[-1] != num_channels or min(x.shape[1:3]) < MIN_RESOLUTION:
      raise ValueError(f'Encoder input must be [N, H, W, {num_channels}] with H, W >= '
                       f'{MIN_RESOLUTION}, got shape {x.shape}.')
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=self.config.model.bn_momentum,
        epsilon=self.config.model.bn_eps, axis_name=self.axis_name, dtype=self.dtype)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=he_normal)
    backbone = ResNetV2 if family == 'resnet' else RevNet
    residual_dtype = layers.residual_dtype(self.config, self.dtype)
    h = backbone(STAGE_UNITS[depth], ec.base_width * multiplier, conv, norm,
                 remat=self.config.model.remat, residual_dtype=residual_dtype,
                 name='backbone')(x.astype(self.dtype))
    feat = jnp.mean(h.astype(jnp.float32), axis=(1, 2))

    # Whether this BN has a learned affine is UNCONFIRMED (SPEC 2.4); it has none here.
    bn_feat = norm(use_scale=False, use_bias=False, dtype=jnp.float32, name='feat_bn')(feat)
    bn_crelu_feat = jnp.concatenate([nn.relu(bn_feat), nn.relu(-bn_feat)], axis=-1)

    z_dim = self.config.model.z_dim
    lecun = nn.initializers.lecun_normal()
    h = layers.ResidualMLP(width=ec.head_width, depth=ec.head_depth, spectral_norm=False,
                           dtype=self.dtype, kernel_init=lecun, residual_dtype=residual_dtype,
                           name='head')(feat)
    out = nn.Dense(2 * z_dim if ec.stochastic else z_dim, dtype=jnp.float32,
                   kernel_init=lecun, name='head_out')(h)
    if ec.stochastic:
      z_mean, sigma_hat = jnp.split(out, 2, axis=-1)
      z_stdev = nn.softplus(sigma_hat) + ec.min_stdev
      if noise is None and self.has_rng('sample'):
        noise = jax.random.normal(self.make_rng('sample'), z_mean.shape, jnp.float32)
      z_sample = z_mean if noise is None else z_mean + z_stdev * noise
    else:
      z_mean = z_sample = out
      z_stdev = jnp.zeros_like(out)
    return {
        'z_mean': z_mean,
        'z_stdev': z_stdev,
        'z_sample': z_sample,
        'avepool_feat': feat,
        'bn_crelu_feat': bn_crelu_feat,
    }
