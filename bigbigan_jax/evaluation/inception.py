"""Inception-v3 as used for FID and IS: the 2015-12-05 TF graph in pytorch-fid's form.

The network differs from torchvision's Inception-v3 the way pytorch-fid's FIDInceptionA/C/E
blocks do: the 3x3 average pools of the A, C and first E blocks leave padding out of the
average, the last E block max-pools instead, and the classifier has 1008 outputs. Inputs in
[-1, 1] are resized bilinearly (half-pixel centres, no antialiasing) to 299x299.

Weights come from a flat .npz with keys such as 'Conv2d_1a_3x3/conv/kernel' (see
`convert_inception_weights`); BatchNorm statistics live in 'params' as the network is frozen.
"""

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_LOGITS = 1008
BN_EPSILON = 1e-3


class FrozenBatchNorm(nn.Module):
  """Inference-only BatchNorm whose statistics are parameters."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    mean = self.param('mean', nn.initializers.zeros, (features,))
    var = self.param('var', nn.initializers.ones, (features,))
    return (x - mean) * (scale * jax.lax.rsqrt(var + BN_EPSILON)) + bias


class ConvBN(nn.Module):
  """Bias-free convolution, BatchNorm and ReLU (torchvision's BasicConv2d)."""
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad_h, pad_w = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                padding=((pad_h, pad_h), (pad_w, pad_w)), use_bias=False,
                precision=self.precision, name='conv')(x)
    return nn.relu(FrozenBatchNorm(name='bn')(x))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool that leaves the zero padding out of the average (as TF)."""
  return nn.avg_pool(x, (3, 3), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3 stride-1 max pool with same-size output."""
  return nn.max_pool(x, (3, 3), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """3x3 stride-2 max pool without padding."""
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
  """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""
  pool_features: int
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    branch1x1 = conv(64, (1, 1), name='branch1x1')(x)
    branch5x5 = conv(48, (1, 1), name='branch5x5_1')(x)
    branch5x5 = conv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(branch5x5)
    branch3x3dbl = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(branch3x3dbl)
    branch_pool = conv(self.pool_features, (1, 1), name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """Reduction from 35x35 to 17x17."""
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    branch3x3 = conv(384, (3, 3), strides=2, name='branch3x3')(x)
    branch3x3dbl = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = conv(96, (3, 3), strides=2, name='branch3x3dbl_3')(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convolutions."""
  channels_7x7: int
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    c7 = self.channels_7x7
    branch1x1 = conv(192, (1, 1), name='branch1x1')(x)
    branch7x7 = conv(c7, (1, 1), name='branch7x7_1')(x)
    branch7x7 = conv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(branch7x7)
    branch7x7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(branch7x7)
    dbl = conv(c7, (1, 1), name='branch7x7dbl_1')(x)
    dbl = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(dbl)
    dbl = conv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(dbl)
    dbl = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(dbl)
    dbl = conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(dbl)
    branch_pool = conv(192, (1, 1), name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """Reduction from 17x17 to 8x8."""
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    branch3x3 = conv(192, (1, 1), name='branch3x3_1')(x)
    branch3x3 = conv(320, (3, 3), strides=2, name='branch3x3_2')(branch3x3)
    branch7x7x3 = conv(192, (1, 1), name='branch7x7x3_1')(x)
    branch7x7x3 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(branch7x7x3)
    branch7x7x3 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(branch7x7x3)
    branch7x7x3 = conv(192, (3, 3), strides=2, name='branch7x7x3_4')(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3 / 3x1 branches; `max_pool` selects the FID graph's last block."""
  max_pool: bool = False
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBN, precision=self.precision)
    branch1x1 = conv(320, (1, 1), name='branch1x1')(x)
    branch3x3 = conv(384, (1, 1), name='branch3x3_1')(x)
    branch3x3 = jnp.concatenate([
        conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(branch3x3),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(branch3x3)], axis=-1)
    dbl = conv(448, (1, 1), name='branch3x3dbl_1')(x)
    dbl = conv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(dbl)
    dbl = jnp.concatenate([
        conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(dbl),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(dbl)], axis=-1)
    pooled = _max_pool_3x3(x) if self.max_pool else _avg_pool_3x3(x)
    branch_pool = conv(192, (1, 1), name='branch_pool')(pooled)
    return jnp.concatenate([branch1x1, branch3x3, dbl, branch_pool], axis=-1)


def resize_to_input(images: jax.Array) -> jax.Array:
  """Images [N, H, W, C] in [-1, 1] as float32 [N, 299, 299, 3] (grayscale is repeated)."""
  images = images.astype(jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  if images.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    shape = (images.shape[0], INPUT_SIZE, INPUT_SIZE, 3)
    images = jax.image.resize(images, shape, 'bilinear', antialias=False)
  return images


class InceptionV3(nn.Module):
  """FID Inception-v3: images [N, H, W, C] in [-1, 1] -> (pool3 [N, 2048], logits [N, 1008]).

  `precision` is passed to every convolution and the classifier (e.g. HIGHEST to keep
  float32 accuracy on GPUs that would otherwise use TF32).
  """
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    conv = functools.partial(ConvBN, precision=self.precision)
    x = resize_to_input(images)
    x = conv(32, (3, 3), strides=2, name='Conv2d_1a_3x3')(x)
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = conv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = conv(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_s2(x)
    for name, pool_features in (('Mixed_5b', 32), ('Mixed_5c', 64), ('Mixed_5d', 64)):
      x = InceptionA(pool_features, precision=self.precision, name=name)(x)
    x = InceptionB(precision=self.precision, name='Mixed_6a')(x)
    for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = InceptionC(c7, precision=self.precision, name=name)(x)
    x = InceptionD(precision=self.precision, name='Mixed_7a')(x)
    x = InceptionE(precision=self.precision, name='Mixed_7b')(x)
    x = InceptionE(max_pool=True, precision=self.precision, name='Mixed_7c')(x)
    features = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_LOGITS, precision=self.precision, name='fc')(features)
    return features, logits


@functools.cache
def expected_shapes() -> dict[str, tuple[int, ...]]:
  """Flat parameter name -> shape of `InceptionV3`."""
  dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0), dummy)
  return {key: tuple(value.shape) for key, value in _flatten(shapes['params']).items()}


def _flatten(params: Any) -> dict[str, Any]:
  """Nested params -> {'a/b/c': leaf}."""
  return traverse_util.flatten_dict(params, sep='/')


def check_params(flat: dict[str, Any]) -> None:
  """Raises ValueError unless flat params have exactly the names and shapes of InceptionV3."""
  expected = expected_shapes()
  missing = sorted(expected.keys() - flat.keys())
  unexpected = sorted(flat.keys() - expected.keys())
  wrong = sorted(k for k in expected.keys() & flat.keys()
                 if tuple(np.shape(flat[k])) != expected[k])
  if missing or unexpected or wrong:
    details = [f'{label}: {names[:3]}{" ..." if len(names) > 3 else ""}'
               for label, names in (('missing', missing), ('unexpected', unexpected),
                                    ('wrong shape', wrong)) if names]
    raise ValueError(f'Inception weights do not match the network ({"; ".join(details)}).')


def save_params(variables: dict[str, Any], npz_path: str | os.PathLike) -> None:
  """Writes `variables['params']` to a flat .npz after checking names and shapes."""
  flat = {key: np.asarray(value) for key, value in _flatten(variables['params']).items()}
  check_params(flat)
  path = epath.Path(npz_path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('wb') as f:
    np.savez(f, **flat)


def load_params(npz_path: str | os.PathLike) -> dict[str, Any]:
  """Reads a flat .npz into Flax variables {'params': ...} for `InceptionV3`."""
  path = epath.Path(npz_path)
  if not path.exists():
    raise FileNotFoundError(
        f'No Inception weights at {path}; make them with `python -m '
        'bigbigan_jax.evaluation.convert_inception_weights --src <pt_inception .pth> --dst '
        f'{path}`.')
  with path.open('rb') as f, np.load(f) as data:
    flat = {key: data[key] for key in data.files}
  check_params(flat)
  return {'params': traverse_util.unflatten_dict(flat, sep='/')}
