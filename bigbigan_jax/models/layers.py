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


ATTENTION_IMPLEMENTATIONS = ('auto', 'fused', 'chunked', 'dense')


def _dense_attention(q, k, v, logits_dtype):
  """softmax(q k^T) v (no scaling), the [B, Q, K] weights materialised; softmax in float32."""
  logits = jnp.einsum('bqc,bkc->bqk', q, k, preferred_element_type=logits_dtype)
  attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum('bqk,bkc->bqc', attn, v)


def _chunked_attention(q, k, v, logits_dtype, chunk: int):
  """_dense_attention over blocks of `chunk` queries, each recomputed in the backward pass, so
  at most one block's weights [B, chunk, K] are live. Each query's softmax sees every key."""
  b, n, c = q.shape
  if n <= chunk:
    return _dense_attention(q, k, v, logits_dtype)
  chunk = next(s for s in range(chunk, 0, -1) if n % s == 0)
  blocks = jnp.moveaxis(q.reshape(b, n // chunk, chunk, c), 1, 0)
  block_fn = jax.checkpoint(lambda qb: _dense_attention(qb, k, v, logits_dtype))
  out = lax.map(block_fn, blocks)
  return jnp.moveaxis(out, 0, 1).reshape(b, n, v.shape[-1])


def _fused_attention(q, k, v):
  """jax.nn.dot_product_attention (cuDNN flash attention on GPU in 16-bit, XLA's elsewhere).

  It needs one head width for queries, keys and values: q and k are zero-padded to v's width,
  which adds nothing to q k^T.
  """
  width = max(q.shape[-1], v.shape[-1])
  pad = lambda t: jnp.pad(t, ((0, 0), (0, 0), (0, width - t.shape[-1])))[:, :, None, :]
  use_cudnn = jax.default_backend() == 'gpu' and v.dtype in (jnp.bfloat16, jnp.float16)
  out = jax.nn.dot_product_attention(pad(q), pad(k), pad(v), scale=1.0,
                                     implementation='cudnn' if use_cudnn else None)
  return out[:, :, 0, :v.shape[-1]]


def attend(q, k, v, *, implementation: str = 'dense', logits_dtype: Dtype = None,
           chunk: int = 1024):
  """softmax(q k^T) v for q [B, Q, Cq], k [B, K, Cq], v [B, K, Cv] (no logit scaling).

  'dense' materialises the weights; 'chunked' bounds them to `chunk` query rows; 'fused' calls
  jax.nn.dot_product_attention; 'auto' is fused on GPU in 16-bit, chunked elsewhere. Logits are
  accumulated in `logits_dtype` (default: the inputs' dtype; cuDNN always uses float32).
  """
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f'Attention implementation {implementation!r} is not one of '
                     f'{ATTENTION_IMPLEMENTATIONS}.')
  logits_dtype = logits_dtype or q.dtype
  if implementation == 'auto':
    on_gpu = jax.default_backend() == 'gpu' and v.dtype in (jnp.bfloat16, jnp.float16)
    implementation = 'fused' if on_gpu else 'chunked'
  if implementation == 'fused':
    return _fused_attention(q, k, v)
  if implementation == 'chunked':
    return _chunked_attention(q, k, v, logits_dtype, chunk)
  return _dense_attention(q, k, v, logits_dtype)


class SelfAttention(nn.Module):
  """SAGAN non-local block: theta/phi at C/8, g at C/2, keys 2x2 max-pooled, gamma starts at 0.

  `implementation` and `chunk` choose how the attention runs (see `attend`); `residual_dtype`
  (default `dtype`) is the dtype of the logits and of the residual sum.
  """
  sn_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  implementation: str = 'dense'
  chunk: int = 1024
  residual_dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x, update_sn: bool = False):
    b, h, w, c = x.shape
    conv = lambda f, name: SNConv(f, 1, use_bias=False, sn_eps=self.sn_eps, dtype=self.dtype, name=name)
    pool = lambda t: nn.max_pool(t, (2, 2), (2, 2))
    theta = conv(c // 8, 'theta')(x, update_sn).reshape(b, h * w, c // 8)
    phi = pool(conv(c // 8, 'phi')(x, update_sn)).reshape(b, h * w // 4, c // 8)
    g = pool(conv(c // 2, 'g')(x, update_sn)).reshape(b, h * w // 4, c // 2)
    residual_dtype = self.residual_dtype or self.dtype
    o = attend(theta, phi, g, implementation=self.implementation, logits_dtype=residual_dtype,
               chunk=self.chunk).reshape(b, h, w, c // 2)
    o = conv(c, 'o')(o, update_sn)
    gamma = self.param('gamma', nn.initializers.zeros, (), jnp.float32)
    return x.astype(residual_dtype) + gamma.astype(residual_dtype) * o.astype(residual_dtype)


class ResidualMLP(nn.Module):
  """An input projection to `width`, then `depth` dense layers as depth/2 pre-activation
  residual blocks, then ReLU. Used for H, J (spectrally normalised) and E's head (plain).
  The residual stream is kept in `residual_dtype` (default `dtype`)."""
  width: int
  depth: int
  spectral_norm: bool = True
  sn_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  kernel_init: Any = orthogonal
  residual_dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x, update_sn: bool = False):
    if self.depth % 2:
      raise ValueError(f'Residual MLP depth must be even (pairs of layers), got {self.depth}.')
    dense = lambda name: SNDense(self.width, spectral_norm=self.spectral_norm, sn_eps=self.sn_eps,
                                 dtype=self.dtype, kernel_init=self.kernel_init, name=name)
    residual_dtype = self.residual_dtype or self.dtype
    h = dense('proj')(x, update_sn).astype(residual_dtype)
    for i in range(self.depth // 2):
      r = dense(f'block{i}_a')(nn.relu(h), update_sn)
      r = dense(f'block{i}_b')(nn.relu(r), update_sn)
      h = h + r.astype(residual_dtype)
    return nn.relu(h)


def residual_dtype(config, dtype: Dtype) -> Dtype:
  """The dtype of residual streams: float32 with `config.float32_residuals`, else `dtype`."""
  return jnp.float32 if config.float32_residuals else dtype


def attention(config, dtype: Dtype, name: str) -> SelfAttention:
  """The self-attention block a model config asks for, rematerialised with `model.remat`."""
  cls = nn.remat(SelfAttention, static_argnums=(2,)) if config.model.remat else SelfAttention
  return cls(sn_eps=config.model.sn_eps, dtype=dtype, implementation=config.model.attention,
             chunk=config.model.attention_chunk, residual_dtype=residual_dtype(config, dtype),
             name=name)


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
