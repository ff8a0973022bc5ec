"""Batches as the networks see them: uint8 pixels to E's float view and D's view, on the device.

The input pipeline ships uint8 images at E's resolution (a quarter of float32's bytes); these
functions run inside the jitted programs that consume them. JAX only, no TensorFlow.
"""

import jax
import jax.numpy as jnp


def to_float(images: jax.Array) -> jax.Array:
  """E's view: uint8 pixels [0, 255] to float32 in [-1, 1]; float images pass through."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images.astype(jnp.float32)


def d_view(images: jax.Array, resolution: int) -> jax.Array:
  """D's view of E views [..., R, R, C]: the same when R is D's resolution, 2x2 average-pooled
  when R is twice it, else an antialiased bilinear resize."""
  *lead, e_resolution, _, channels = images.shape
  if e_resolution == resolution:
    return images
  if e_resolution == 2 * resolution:
    blocks = images.reshape(*lead, resolution, 2, resolution, 2, channels)
    return jnp.mean(blocks, axis=(-4, -2))
  return jax.image.resize(images, (*lead, resolution, resolution, channels), 'linear',
                          antialias=True)


def views(images: jax.Array, resolution: int) -> tuple[jax.Array, jax.Array]:
  """(E's view, D's view at `resolution`) of uint8 or float images."""
  x_e = to_float(images)
  return x_e, d_view(x_e, resolution)
