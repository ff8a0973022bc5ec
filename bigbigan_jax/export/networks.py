"""The networks an export hands over, and the pure functions every format converts.

G uses its EMA parameters with standing BatchNorm statistics (the same ones the training grids
and evaluation sample with), E its running statistics, D its stored spectral-norm vectors.
"""

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from etils import epath

from bigbigan_jax import inference, parallel, run_dir
from bigbigan_jax.models import bigbigan


class ExportError(Exception):
  """A problem the user fixes on the command line; printed as one sentence."""


@dataclasses.dataclass(frozen=True)
class Networks:
  """One checkpoint's inference variables as numpy trees (flax variable dicts)."""
  config: ml_collections.ConfigDict
  step: int
  generator: dict[str, Any]  # {'params', 'spectral', 'batch_stats'} (EMA, standing statistics)
  encoder: dict[str, Any]  # {'params', 'batch_stats'}
  discriminator: dict[str, Any]  # {'params', 'spectral'}

  def trees(self) -> dict[str, dict[str, Any]]:
    return {'generator': self.generator, 'encoder': self.encoder,
            'discriminator': self.discriminator}


def from_state(config: ml_collections.ConfigDict, state, step: int) -> Networks:
  """The exported networks of a TrainState; standing statistics as the training grids draw them."""
  standing = inference.BigBiGAN(config).sampling_variables(state)
  host = lambda tree: jax.tree.map(np.asarray, jax.device_get(tree))
  return Networks(
      config=config, step=step,
      generator=host({'params': state.g_ema_params, **standing}),
      encoder=host({'params': state.e_ema_params, 'batch_stats': state.e_ema_batch_stats}),
      discriminator=host({'params': state.d_params, 'spectral': state.d_spectral}))


def load_config(workdir: epath.Path, dtype: Optional[str] = None) -> ml_collections.ConfigDict:
  """The run's config; `dtype` replaces its activation dtype for the export."""
  config = run_dir.load_config(workdir)
  if dtype is not None:
    config.dtype = dtype
  try:
    bigbigan.check_model_config(config)
  except ValueError as e:
    raise ExportError(str(e)) from None
  return config


def resolve_step(workdir: epath.Path, step: Optional[int] = None) -> int:
  """`step` (default the newest) after checking that `workdir` has a checkpoint for it."""
  try:
    return run_dir.chosen_step(workdir, step, 'train the run first')
  except run_dir.MissingCheckpoint as e:
    raise ExportError(str(e)) from None


def from_checkpoint(workdir: epath.Path, config: ml_collections.ConfigDict,
                    step: int) -> Networks:
  """The networks of `workdir`'s checkpoint `step`, restored without writing anything."""
  state = run_dir.read_checkpoint(workdir, step, config, parallel.make_mesh())
  return from_state(config, state, step)


class Functions:
  """generate / encode / discriminate of one config as pure functions of (variables, inputs)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.models = bigbigan.build_models(config)

  def sample(self, variables, z) -> jax.Array:
    return self.models.generator.apply(variables, z, train=False)

  def generate(self, variables, z) -> dict[str, jax.Array]:
    """G(z) at G's resolution and bilinearly resized to E's (the signature's `upsampled`)."""
    images = self.sample(variables, z)
    size = self.config.encoder.resolution
    upsampled = jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]),
                                 'linear')
    return {'default': images, 'upsampled': upsampled}

  def encode(self, variables, x, seed) -> dict[str, jax.Array]:
    """E(x) with z_sample's noise drawn from PRNGKey(seed), as inference.BigBiGAN.encode."""
    out = self.models.encoder.apply(variables, x, train=False,
                                    rngs={'sample': jax.random.PRNGKey(seed)})
    return {**out, 'default': out['z_sample']}

  def encode_with_noise(self, variables, x, noise) -> dict[str, jax.Array]:
    """E(x) with z_sample = z_mean + z_stdev * noise (z_mean when `noise` is None)."""
    return self.models.encoder.apply(variables, x, train=False, noise=noise)

  def discriminate(self, variables, x, z) -> dict[str, jax.Array]:
    return self.models.discriminator.apply(variables, x, z, train=False)


def _portable(value):
  """`value` with each absolute path (also after a 'name:' prefix) cut to its last component."""
  if isinstance(value, dict):
    return {k: _portable(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_portable(v) for v in value]
  if not isinstance(value, str):
    return value
  head, sep, path = ('', '', value) if value.startswith(('/', '~')) else value.partition(':')
  if path.startswith(('/', '~')):
    return head + sep + os.path.basename(path.rstrip('/'))
  return value


def config_json(config: ml_collections.ConfigDict) -> str:
  """The config as an export's config.json: paths of the exporting machine (a data_dir, the
  Inception weights) keep only their last component."""
  return json.dumps(_portable(json.loads(config.to_json_best_effort())), indent=2) + '\n'


def input_shapes(config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  """Per-example shapes of the inputs: z, E's images, D's (and G's) images."""
  c, r, e = config.data.num_channels, config.model.resolution, config.encoder.resolution
  return {'z': (config.model.z_dim,), 'x_encoder': (e, e, c), 'x_discriminator': (r, r, c)}

