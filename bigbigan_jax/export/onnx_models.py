"""ONNX export through jax2onnx: encoder.onnx and generator.onnx with a dynamic batch axis.

The networks' arrays become initializers. The encoder takes x and, for a stochastic E, the
noise of z_sample = z_mean + z_stdev * noise (ONNX has no generator of JAX's random numbers).
The SavedModel's aliases are left out (an ONNX value has one name): encode's `default` is
z_sample, and generate's `upsampled` is a resize of `default`; a deterministic E returns only
z_mean of the three latent outputs (its z_sample is z_mean and its z_stdev 0). ONNX graphs cannot
raise errors, so the folder also gets bigbigan_onnx.py, which checks the inputs before running.
"""

import contextlib
import io
import logging
import os
import shutil
import warnings

import jax2onnx
import onnx
from jax2onnx.plugins.flax.linen import avg_pool, max_pool

from bigbigan_jax.export import networks as networks_lib

README = """\
BigBiGAN ONNX networks exported by bigbigan_jax from step {step} (config.json beside this file).
Inputs and outputs are float32 NHWC; the first axis (batch, N >= 1) is dynamic. Images are in
[-1, 1] (uint8 pixels: x = pixels / 127.5 - 1).

encoder.onnx    x [N, {e}, {e}, {c}]{noise}
                -> {latents} [N, {z}], avepool_feat [N, {f}], bn_crelu_feat [N, {f2}]
generator.onnx  z [N, {z}] ~ N(0, I)
                -> default [N, {r}, {r}, {c}] in [-1, 1] (G's EMA weights, standing BN statistics)

ONNX Runtime does not check the inputs: a batch of 0 can kill the process (SIGFPE) and a noise
batch of 1 is broadcast over x's. bigbigan_onnx.py (numpy and onnxruntime only) checks them and
raises ValueError with one sentence:
  import sys; sys.path.insert(0, FOLDER); import bigbigan_onnx
  encoder = bigbigan_onnx.Encoder(FOLDER)           # seed=S: a reproducible sequence of noises
  out = encoder(x)                                  # dict; fresh noise at every call, or noise=...
  images = bigbigan_onnx.Generator(FOLDER)(z)['default']
PyTorch: encoder(x.permute(0, 2, 3, 1).numpy()) for NCHW tensors, torch.from_numpy(out[...]).
"""
WRAPPER = 'bigbigan_onnx.py'  # Copied from this package into the export folder.
FEATURES = ('avepool_feat', 'bn_crelu_feat')
BATCH = 'N'  # The dynamic batch axis.


def encoder_outputs(config) -> tuple[str, ...]:
  latents = ('z_mean', 'z_stdev', 'z_sample') if config.encoder.stochastic else ('z_mean',)
  return latents + FEATURES
NOISE_README = ', noise [N, {z}] (z_sample = z_mean + z_stdev * noise)'


@contextlib.contextmanager
def _quiet_conversion():
  """jax2onnx's flax.linen pooling rewrites accept keyword arguments only, and our layers pass
  window and strides positionally: turn them off, so pooling converts through lax.reduce_window.
  The converter's debugging prints and deprecation warnings stay off the console."""
  plugins = (max_pool.MaxPoolPlugin, avg_pool.AvgPoolPlugin)
  saved = [p.__dict__['binding_specs'] for p in plugins]
  loggers = [logging.getLogger(name) for name in ('jax2onnx', 'onnx_ir')]
  levels = [logger.level for logger in loggers]
  try:
    for p in plugins:
      p.binding_specs = classmethod(lambda cls: [])
    for logger in loggers:
      logger.setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
      warnings.simplefilter('ignore', DeprecationWarning)
      yield
  finally:
    for p, spec in zip(plugins, saved):
      p.binding_specs = spec
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def _convert(fn, inputs, input_names, output_names, name) -> onnx.ModelProto:
  model = jax2onnx.to_onnx(fn, inputs, model_name=name, input_names=input_names,
                           output_names=output_names)
  # Intermediate shape annotations are partly in the converter's NCHW layout; ONNX Runtime
  # infers its own, so leave them out rather than have it warn about every mismatch.
  model.graph.ClearField('value_info')
  return model


def check_expressible(config) -> None:
  if config.dtype != 'float32':
    raise networks_lib.ExportError(
        f'The ONNX export computes in float32 only and this run computes in {config.dtype}; '
        'pass --dtype=float32 to export it in float32.')


def encoder_model(networks: networks_lib.Networks) -> onnx.ModelProto:
  """E with its running statistics: x (and noise for a stochastic E) -> encoder_outputs."""
  config = networks.config
  check_expressible(config)
  functions = networks_lib.Functions(config)
  shapes = networks_lib.input_shapes(config)
  outputs = encoder_outputs(config)

  def encode(x, *noise):
    out = functions.encode_with_noise(networks.encoder, x, noise[0] if noise else None)
    return tuple(out[k] for k in outputs)

  inputs, names = [(BATCH, *shapes['x_encoder'])], ['x']
  if config.encoder.stochastic:
    inputs, names = inputs + [(BATCH, *shapes['z'])], names + ['noise']
  with _quiet_conversion():
    return _convert(encode, inputs, names, list(outputs), 'bigbigan_encoder')


def generator_model(networks: networks_lib.Networks) -> onnx.ModelProto:
  """G's EMA weights with standing statistics: z -> default."""
  check_expressible(networks.config)
  functions = networks_lib.Functions(networks.config)
  z_shape = networks_lib.input_shapes(networks.config)['z']
  generate = lambda z: (functions.sample(networks.generator, z),)
  with _quiet_conversion():
    return _convert(generate, [(BATCH, *z_shape)], ['z'], ['default'], 'bigbigan_generator')


def write(networks: networks_lib.Networks, out_dir: str) -> None:
  """Writes encoder.onnx, generator.onnx, config.json, README.txt and bigbigan_onnx.py into
  `out_dir`."""
  encoder = encoder_model(networks)
  onnx.save(encoder, os.path.join(out_dir, 'encoder.onnx'))
  onnx.save(generator_model(networks), os.path.join(out_dir, 'generator.onnx'))
  feature_dim = next(o for o in encoder.graph.output if o.name == 'avepool_feat')
  feature_dim = feature_dim.type.tensor_type.shape.dim[-1].dim_value
  c = networks.config
  text = README.format(
      step=networks.step, z=c.model.z_dim, r=c.model.resolution, e=c.encoder.resolution,
      c=c.data.num_channels, f=feature_dim, f2=2 * feature_dim,
      latents=', '.join(o for o in encoder_outputs(c) if o not in FEATURES),
      noise=NOISE_README.format(z=c.model.z_dim) if c.encoder.stochastic else '')
  with open(os.path.join(out_dir, 'README.txt'), 'w') as f:
    f.write(text)
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    f.write(networks_lib.config_json(c))
  shutil.copyfile(os.path.join(os.path.dirname(__file__), WRAPPER), os.path.join(out_dir, WRAPPER))
