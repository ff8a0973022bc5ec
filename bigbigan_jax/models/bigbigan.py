"""The three networks of a BigBiGAN built from one config, checked before anything compiles."""

from typing import NamedTuple, Optional

import jax.numpy as jnp
import ml_collections

from bigbigan_jax.models import discriminator, encoder, generator

DTYPES = ('float32', 'bfloat16', 'float16')


class Models(NamedTuple):
  generator: generator.Generator
  encoder: encoder.Encoder
  discriminator: discriminator.Discriminator


def check_model_config(config: ml_collections.ConfigDict) -> None:
  """Raises a one-sentence ValueError for any model field the networks cannot be built from."""
  if config.dtype not in DTYPES:
    raise ValueError(f'dtype={config.dtype!r} is not supported; use one of {DTYPES}.')
  if config.data.num_channels not in (1, 3):
    raise ValueError(f'data.num_channels={config.data.num_channels} is not supported; use 1 or 3.')
  generator.check_generator_config(config)
  discriminator.check_discriminator_config(config)
  encoder.parse_encoder_name(config.encoder.name)
  if config.encoder.head_depth % 2:
    raise ValueError(f'encoder.head_depth={config.encoder.head_depth} must be even (the head is '
                     'pairs of residual layers).')
  if config.encoder.resolution < 32:
    raise ValueError(f'encoder.resolution={config.encoder.resolution} is too small; use 32 or more.')


def build_models(config: ml_collections.ConfigDict, axis_name: Optional[str] = None) -> Models:
  """G, E and D with activations in `config.dtype`; `axis_name` makes BatchNorm cross-replica."""
  check_model_config(config)
  dtype = jnp.dtype(config.dtype)
  return Models(
      generator=generator.Generator(config, dtype, axis_name),
      encoder=encoder.Encoder(config, dtype, axis_name),
      discriminator=discriminator.Discriminator(config, dtype),
  )
