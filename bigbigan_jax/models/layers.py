"""Building blocks shared by G, E and D.

Spectral normalisation keeps one power-iteration vector `u` per weight in the `spectral`
collection; it advances only when the caller passes `update_sn=True` (training the network
that owns the weight). The power iteration and the division run in float32.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any
orthogonal = nn.initializers.orthogonal()


def _l2_normalize(x, eps):
  return x * lax.rsqrt(jnp.sum(x * x) + eps)


def spectral_normalize(module: nn.Module, kernel, *, update: bool, eps: float):
  """Returns kernel / sigma, estimating sigma with one persistent power-iteration step."""
  w = kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)
  u = module.variable(
      'spectral', 'u',
      lambda: _l2_normalize(jax.random.normal(module.make_rng('params'), (w.shape[1],)), eps))
  u_vec = u.value
  if update:
    v = _l2_normalize(w @ u_vec, eps)
    u_vec = lax.stop_gradient(_l2_normalize(w.T @ v, eps))
    if not module.is_initializing():
      u.value = u_vec
  v = lax.stop_gradient(_l2_normalize(w @ u_vec, eps))
  sigma = v @ (w @ u_vec)
  return kernel.astype(jnp.float32) / sigma


def top_singular_value(kernel) -> jax.Array:
  """The exact largest singular value of a kernel flattened to [fan_in, out] (for tests)."""
  return jnp.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]


class SNDense(nn.Module):
  """Dense layer with a spectrally normalised kernel (or a plain one if `spectral_norm` is off)."""
  features: int
  use_bias: bool = True
  spectral_norm: bool = True
  sn_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  kernel_init: Any = orthogonal

  @nn.compact
  def __call__(self, x, update_sn: bool = False):
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    if self.spectral_norm:
      kernel = spectral_normalize(self, kernel, update=update_sn, eps=self.sn_eps)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y


class SNConv(nn.Module):
  """2-D convolution (NHWC, SAME padding) with a spectrally normalised kernel."""
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  sn_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, update_sn: bool = False):
    shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
    kernel = self.param('kernel', orthogonal, shape, jnp.float32)
    kernel = spectral_normalize(self, kernel, update=update_sn, eps=self.sn_eps)
    y = lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), (1, 1), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y


class BatchStatsNorm(nn.Module):
  """Batch normalisation without affine, with cross-replica statistics and standing statistics.

  In training mode it normalises with the (global) batch statistics and records them in the
  `batch_stats` collection; `generator.standing_stats` averages those records over many batches.
  In inference mode it normalises with the recorded (standing) statistics.
  """
  eps: float = 1e-5
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    mean_var = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
    var_var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
    if train:
      xf = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xf, axes)
      mean_sq = jnp.mean(xf * xf, axes)
      if self.axis_name is not None:
        mean, mean_sq = lax.pmean((mean, mean_sq), self.axis_name)
      var = jnp.maximum(mean_sq - mean * mean, 0.0)
      if not self.is_initializing():
        mean_var.value, var_var.value = mean, var
    else:
      mean, var = mean_var.value, var_var.value
    scale = lax.rsqrt(var + self.eps)
    return ((x.astype(jnp.float32) - mean) * scale).astype(x.dtype)


class ConditionalBatchNorm(nn.Module):
  """BigGAN HyperBN: normalise, then gain (1 + W_g c) and bias W_b c from SN linear maps of c."""
  sn_eps: float = 1e-6
  bn_eps: float = 1e-5
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cond, *, train: bool, update_sn: bool):
    c = x.shape[-1]
    gain = 1.0 + SNDense(c, use_bias=False, sn_eps=self.sn_eps, dtype=jnp.float32, name='gain')(cond, update_sn)
    bias = SNDense(c, use_bias=False, sn_eps=self.sn_eps, dtype=jnp.float32, name='bias')(cond, update_sn)
    h = BatchStatsNorm(eps=self.bn_eps, axis_name=self.axis_name, name='bn')(x, train)
    return (h.astype(jnp.float32) * gain[:, None, None, :] + bias[:, None, None, :]).astype(self.dtype)


class SelfAttention(nn.Module):
  """SAGAN non-local block: theta/phi at C/8, g at C/2, keys 2x2 max-pooled, gamma starts at 0."""
  sn_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, update_sn: bool = False):
    b, h, w, c = x.shape
    conv = lambda f, name: SNConv(f, 1, use_bias=False, sn_eps=self.sn_eps, dtype=self.dtype, name=name)
    pool = lambda t: nn.max_pool(t, (2, 2), (2, 2))
    theta = conv(c // 8, 'theta')(x, update_sn).reshape(b, h * w, c // 8)
    phi = pool(conv(c // 8, 'phi')(x, update_sn)).reshape(b, h * w // 4, c // 8)
    g = pool(conv(c // 2, 'g')(x, update_sn)).reshape(b, h * w // 4, c // 2)
    logits = jnp.einsum('bqc,bkc->bqk', theta, phi).astype(jnp.float32)
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    o = jnp.einsum('bqk,bkc->bqc', attn, g).reshape(b, h, w, c // 2)
    o = conv(c, 'o')(o, update_sn)
    gamma = self.param('gamma', nn.initializers.zeros, (), jnp.float32)
    return x + gamma.astype(self.dtype) * o


class ResidualMLP(nn.Module):
  """An input projection to `width`, then `depth` dense layers as depth/2 pre-activation
  residual blocks, then ReLU. Used for H, J (spectrally normalised) and E's head (plain)."""
  width: int
  depth: int
  spectral_norm: bool = True
  sn_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  kernel_init: Any = orthogonal

  @nn.compact
  def __call__(self, x, update_sn: bool = False):
    if self.depth % 2:
      raise ValueError(f'Residual MLP depth must be even (pairs of layers), got {self.depth}.')
    dense = lambda name: SNDense(self.width, spectral_norm=self.spectral_norm, sn_eps=self.sn_eps,
                                 dtype=self.dtype, kernel_init=self.kernel_init, name=name)
    h = dense('proj')(x, update_sn)
    for i in range(self.depth // 2):
      r = dense(f'block{i}_a')(nn.relu(h), update_sn)
      r = dense(f'block{i}_b')(nn.relu(r), update_sn)
      h = h + r
    return nn.relu(h)


def avg_pool2(x):
  return nn.avg_pool(x, (2, 2), (2, 2))


def upsample2(x):
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def resolution_channels(table: dict[int, Sequence[int]], resolution: int, what: str):
  if resolution not in table:
    allowed = ', '.join(str(r) for r in sorted(table))
    raise ValueError(f'{what} resolution {resolution} is not supported; use one of {allowed}.')
  return table[resolution]
