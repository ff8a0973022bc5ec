"""Differentiable augmentation of D's image inputs (DiffAugment; Zhao et al., 2020).

Not in BigBiGAN: an option (`loss.d_augment`) for small datasets. D scores augmented real and
generated images alike, each image with its own random draw, and G's gradient flows through
the augmentation. E always sees the unaugmented image, so the (x, E(x)) pairs stay pairs.

- 'translation': shift by up to 1/8 of the image size in each direction, zero-filled.
- 'cutout': zero a square of half the image size centred anywhere in the image (clipped at
  the borders).
"""

import jax
import jax.numpy as jnp
from jax import lax

POLICIES = ('translation', 'cutout')


def parse(spec: str) -> tuple[str, ...]:
  """'translation,cutout' -> ('translation', 'cutout'); '' -> (); unknown names raise."""
  names = tuple(filter(None, (name.strip() for name in spec.split(','))))
  unknown = [name for name in names if name not in POLICIES]
  if unknown:
    raise ValueError(f'loss.d_augment names {", ".join(map(repr, unknown))}; use a comma-separated '
                     f'subset of {", ".join(POLICIES)}, or empty for none.')
  return names


def max_shift(size: int) -> int:
  return size // 8


def draw(key: jax.Array, batch: int, size: int, policies: tuple[str, ...]) -> dict[str, jax.Array]:
  """Per-image random draws for `batch` square images of `size` px: each policy's int32 [batch, 2]
  (row, column) offsets."""
  k_shift, k_cutout = jax.random.split(key)
  out = {}
  if 'translation' in policies:
    s = max_shift(size)
    out['shift'] = jax.random.randint(k_shift, (batch, 2), -s, s + 1)
  if 'cutout' in policies:
    out['cutout_centre'] = jax.random.randint(k_cutout, (batch, 2), 0, size)
  return out


def translate(x: jax.Array, shift: jax.Array) -> jax.Array:
  """out[i, r, c] = x[i, r - shift[i, 0], c - shift[i, 1]], zero outside x."""
  s = max_shift(x.shape[1])
  padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
  crop = lambda image, start: lax.dynamic_slice(image, (start[0], start[1], 0), x.shape[1:])
  return jax.vmap(crop)(padded, s - shift)


def cutout(x: jax.Array, centre: jax.Array) -> jax.Array:
  """Zeroes rows and columns [centre - size/4, centre + size/4) of each image."""
  half = x.shape[1] // 4
  inside = lambda n, c: jnp.abs(jnp.arange(n)[None, :] - c[:, None] + 0.5) < half
  box = inside(x.shape[1], centre[:, 0])[:, :, None] & inside(x.shape[2], centre[:, 1])[:, None, :]
  return jnp.where(box[..., None], jnp.zeros((), x.dtype), x)


def apply(x: jax.Array, draws: dict[str, jax.Array]) -> jax.Array:
  """Augments NHWC images `x` with `draw`'s output for them (policies in POLICIES order)."""
  if 'shift' in draws:
    x = translate(x, draws['shift'])
  if 'cutout_centre' in draws:
    x = cutout(x, draws['cutout_centre'])
  return x
