"""SavedModel export through jax2tf: a tf.Module mirroring the official BigBiGAN TF-Hub module.

Native serialization (StableHLO for CPU, CUDA and TPU) with a polymorphic batch dimension; the
networks' arrays are tf.Variables, so the graph stays small. Signatures:
  generate(z)          -> default, upsampled
  encode(x, seed)      -> z_mean, z_stdev, z_sample, default, avepool_feat, bn_crelu_feat
  discriminate(x, z)   -> score_x, score_z, score_xz
  serving_default      =  encode
"""

import functools
import os

import tensorflow as tf
from jax.experimental import jax2tf

from bigbigan_jax.export import networks as networks_lib

PLATFORMS = ('cpu', 'cuda', 'tpu')
README = """\
BigBiGAN SavedModel exported by bigbigan_jax from step {step} (config.json beside this file).
Load with tf.saved_model.load(path); call module.signatures[NAME](**inputs) -> dict of tensors.
Every input and output is float32 unless noted; N is any batch size.

generate      z [N, {z}] ~ N(0, I)
              -> default [N, {r}, {r}, {c}] in [-1, 1] (G's EMA weights, standing BN statistics)
                 upsampled [N, {e}, {e}, {c}] (default bilinearly resized to E's resolution)
encode        x [N, {e}, {e}, {c}] in [-1, 1], seed int32 scalar (draws z_sample's noise)
serving_default (same as encode)
              -> z_mean, z_stdev, z_sample, default (= z_sample) [N, {z}]
                 avepool_feat [N, {f}], bn_crelu_feat [N, {f2}]
discriminate  x [N, {r}, {r}, {c}] in [-1, 1], z [N, {z}]
              -> score_x, score_z, score_xz [N] (raw logits)
"""


def _variables(tree, prefix: str):
  """The numpy tree as non-trainable tf.Variables named by their path."""
  if isinstance(tree, dict):
    return {k: _variables(v, f'{prefix}/{k}') for k, v in tree.items()}
  return tf.Variable(tree, trainable=False, name=prefix)


def readme(networks: networks_lib.Networks, feature_dim: int) -> str:
  config = networks.config
  return README.format(step=networks.step, z=config.model.z_dim, r=config.model.resolution,
                       e=config.encoder.resolution, c=config.data.num_channels, f=feature_dim,
                       f2=2 * feature_dim)


def build_module(networks: networks_lib.Networks) -> tf.Module:
  """The tf.Module with tf.functions generate, encode and discriminate (batch polymorphic)."""
  config = networks.config
  functions = networks_lib.Functions(config)
  shapes = networks_lib.input_shapes(config)
  convert = functools.partial(jax2tf.convert, with_gradient=False,
                              native_serialization_platforms=PLATFORMS)
  batch = '(b, ...)'
  generate = convert(functions.generate, polymorphic_shapes=[None, batch])
  encode = convert(functions.encode, polymorphic_shapes=[None, batch, None])
  discriminate = convert(functions.discriminate, polymorphic_shapes=[None, batch, batch])

  module = tf.Module()
  module.generator_variables = _variables(networks.generator, 'generator')
  module.encoder_variables = _variables(networks.encoder, 'encoder')
  module.discriminator_variables = _variables(networks.discriminator, 'discriminator')
  spec = lambda name, shape, dtype=tf.float32: tf.TensorSpec(shape, dtype, name=name)
  module.generate = tf.function(
      lambda z: generate(module.generator_variables, z),
      input_signature=[spec('z', (None, *shapes['z']))], autograph=False)
  module.encode = tf.function(
      lambda x, seed: encode(module.encoder_variables, x, seed),
      input_signature=[spec('x', (None, *shapes['x_encoder'])), spec('seed', (), tf.int32)],
      autograph=False)
  module.discriminate = tf.function(
      lambda x, z: discriminate(module.discriminator_variables, x, z),
      input_signature=[spec('x', (None, *shapes['x_discriminator'])),
                       spec('z', (None, *shapes['z']))], autograph=False)
  return module


def write(networks: networks_lib.Networks, out_dir: str) -> None:
  """Writes the SavedModel, config.json and README.txt into `out_dir` (an empty directory)."""
  module = build_module(networks)
  encode = module.encode.get_concrete_function()
  signatures = {
      'generate': module.generate.get_concrete_function(),
      'encode': encode,
      'discriminate': module.discriminate.get_concrete_function(),
      'serving_default': encode,
  }
  tf.saved_model.save(module, out_dir, signatures=signatures)
  feature_dim = encode.structured_outputs['avepool_feat'].shape[-1]
  with open(os.path.join(out_dir, 'README.txt'), 'w') as f:
    f.write(readme(networks, feature_dim))
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    f.write(networks.config.to_json_best_effort(indent=2))
