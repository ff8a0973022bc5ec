"""SavedModel export through jax2tf: a drop-in for the official BigBiGAN TF-Hub module.

Native serialization (StableHLO for CPU, CUDA and TPU) with a polymorphic batch dimension; the
networks' arrays are tf.Variables, so the graph stays small. Signatures, as the official module's
plus `encode_with_seed`:
  generate(z)               -> default, upsampled
  encode(x)                 -> z_mean, z_stdev, z_sample, default, avepool_feat, bn_crelu_feat
  encode_with_seed(x, seed) -> the same, z_sample's noise drawn from PRNGKey(seed)
  discriminate(x, z)        -> score_x, score_z, score_xz
  default(x)                -> default (= encode's z_sample)
  serving_default           =  encode
Every signature checks its inputs' shapes first. The root object is callable (x -> z_sample, what
hub.KerasLayer(path) runs) and has the tf.functions generate(z), encode(x, seed=None) and
discriminate(x, z). Its MetaGraph has the empty tag set, the official module's inference tag set,
so that tf.saved_model.load(path, tags=[]) loads it as well as tf.saved_model.load(path).
"""

import contextlib
import functools
import os

import jax
import tensorflow as tf
from jax.experimental import jax2tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import fingerprinting_utils

from bigbigan_jax.export import networks as networks_lib

PLATFORMS = ('cpu', 'cuda', 'tpu')
README = """\
BigBiGAN SavedModel exported by bigbigan_jax from step {step} (config.json beside this file).
A drop-in for the official TF-Hub module (tfhub.dev/deepmind/bigbigan-*): load it with
hub.load(path), hub.load(path, tags=[]) or tf.saved_model.load(path); call
module.signatures[NAME](**inputs) -> dict of tensors. hub.KerasLayer(path) gives z_sample of x;
hub.KerasLayer(path, signature=NAME, output_key=KEY) one output of a signature.
Every input and output is float32 unless noted; N >= 1 is any batch size. Images are NHWC in
[-1, 1] (uint8 pixels: x = pixels / 127.5 - 1); inputs of another shape stop with one sentence.

generate          z [N, {z}] ~ N(0, I)
                  -> default [N, {r}, {r}, {c}] in [-1, 1] (G's EMA weights, standing BN statistics)
                     upsampled [N, {e}, {e}, {c}] (default bilinearly resized to E's resolution)
encode            x [N, {e}, {e}, {c}]
serving_default   (same as encode)
                  -> z_mean, z_stdev, z_sample, default (= z_sample) [N, {z}]
                     avepool_feat [N, {f}], bn_crelu_feat [N, {f2}]
                  z_sample = z_mean + z_stdev * noise, with fresh noise at every call.
encode_with_seed  x [N, {e}, {e}, {c}], seed int32 scalar
                  -> as encode, with the noise drawn from seed: the same seed gives the same
                     noise, row by row, in every call, so give each batch its own seed (e.g.
                     its index) when encoding a data set batch by batch.
default           x [N, {e}, {e}, {c}] -> default (= encode's z_sample) [N, {z}]
discriminate      x [N, {r}, {r}, {c}], z [N, {z}] (as many rows as x)
                  -> score_x, score_z, score_xz [N] (raw logits)

The module's tf.functions module.generate(z), module.encode(x) or
module.encode(x, seed=tf.constant(SEED)) and module.discriminate(x, z) are the same networks.
There is no `train` tag set (TF2 SavedModels hold one MetaGraph).
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


def _shape_text(shape: tf.Tensor) -> tf.Tensor:
  return tf.strings.join(['[', tf.strings.reduce_join(tf.strings.as_string(shape),
                                                      separator=', '), ']'])


def _shape(value: tf.Tensor) -> tf.Tensor:
  return tf.raw_ops.Shape(input=value)  # tf.shape folds a fully known declared shape.


def _checked(value: tf.Tensor, ok: tf.Tensor, where: str, name: str, expected,
             static_shape) -> tf.Tensor:
  """`value` of `static_shape`, once an assertion that `ok` holds has run (it fails with one
  sentence). A restored tf.function traces its body again with the caller's shapes: the static
  shape is set past a reshape that hides them, lest a wrong one fail at tracing, in many lines."""
  message = tf.strings.join([f'{where}: {name} must have shape ', expected, '; got ',
                             _shape_text(_shape(value)), '.'])
  with tf.control_dependencies([tf.debugging.Assert(ok, [message])]):
    shape = _shape(value)
    hidden = tf.reshape(value, tf.boolean_mask(shape, tf.ones_like(shape, tf.bool)))
  hidden.set_shape(static_shape)
  return hidden


def check_batch(value: tf.Tensor, where: str, name: str, dims, rows=None) -> tf.Tensor:
  """`value` checked to have shape [N, *dims], N >= 1 (N = `rows` when given), as a tensor of
  static shape [None, *dims]."""
  shape = _shape(value)
  rank = len(dims) + 1
  padded = tf.concat([shape, tf.fill([rank], -1)], 0)[:rank]  # Any rank compares.
  ok = tf.logical_and(tf.equal(tf.size(shape), rank),
                      tf.reduce_all(tf.equal(padded[1:], tf.constant(dims, tf.int32))))
  dims_text = ''.join(f', {d}' for d in dims)
  if rows is None:
    ok = tf.logical_and(ok, padded[0] >= 1)
    expected = f'[N{dims_text}] with N >= 1'
  else:
    ok = tf.logical_and(ok, tf.equal(padded[0], rows))
    expected = tf.strings.join(['[', tf.strings.as_string(rows), f'{dims_text}], as many rows '
                                'as x'])
  return _checked(value, ok, where, name, expected, (None, *dims))


def check_scalar(value: tf.Tensor, where: str, name: str) -> tf.Tensor:
  """`value` (declared of unknown shape: TensorFlow folds a check of a declared scalar's shape
  away) checked to be a scalar, as a tensor of static shape []."""
  return _checked(value, tf.equal(tf.size(_shape(value)), 0), where, name, '[] (a scalar)', ())


@contextlib.contextmanager
def _portable_locations():
  """Source locations in the lowered modules name files without their directories, so that no
  path of this machine gets into the export."""
  options = {'jax_include_full_tracebacks_in_locations': False,
             'jax_hlo_source_file_canonicalization_regex': '.*/'}
  saved = {name: jax.config.values[name] for name in options}
  try:
    for name, value in options.items():
      jax.config.update(name, value)
    yield
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)


def build_module(networks: networks_lib.Networks) -> tf.Module:
  """The tf.Module with tf.functions generate, encode, encode_with_seed, discriminate and
  __call__ (batch polymorphic). They take inputs of any shape, so that every input reaches the
  checks (TensorFlow's own matching of declared shapes would answer first, in many lines)."""
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

  def generate_checked(z):
    return generate(module.generator_variables, check_batch(z, 'generate', 'z', shapes['z']))

  def encode_with_seed(x, seed):
    x = check_batch(x, 'encode', 'x', shapes['x_encoder'])
    return encode(module.encoder_variables, x, check_scalar(seed, 'encode', 'seed'))

  def encode_fresh(x, seed=None):
    if seed is None:  # Fresh noise at every call, as the official module draws it.
      seed = tf.random.uniform((), maxval=tf.int32.max, dtype=tf.int32)
    return module.encode_with_seed(x, seed)

  def discriminate_checked(x, z):
    x = check_batch(x, 'discriminate', 'x', shapes['x_discriminator'])
    z = check_batch(z, 'discriminate', 'z', shapes['z'], rows=_shape(x)[0])
    return discriminate(module.discriminator_variables, x, z)

  function = functools.partial(tf.function, autograph=False)
  x, z, seed = _any_shape('x'), _any_shape('z'), _any_shape('seed', tf.int32)
  module.generate = function(generate_checked, input_signature=[z])
  module.encode_with_seed = function(encode_with_seed, input_signature=[x, seed])
  module.encode = function(encode_fresh)
  module.encode.get_concrete_function(x)
  module.encode.get_concrete_function(x, seed)
  module.discriminate = function(discriminate_checked, input_signature=[x, z])
  module.__call__ = function(lambda x: module.encode(x)['z_sample'], input_signature=[x])
  return module


def _any_shape(name: str, dtype=tf.float32) -> tf.TensorSpec:
  return tf.TensorSpec(None, dtype, name=name)


def signatures(module: tf.Module, config) -> dict[str, tf.types.experimental.ConcreteFunction]:
  """The signatures, with the official module's declared shapes, calling the module's functions.
  `seed` is declared of any shape: TensorFlow would fold a check of a declared scalar away."""
  shapes = networks_lib.input_shapes(config)
  z, seed = tf.TensorSpec((None, *shapes['z'])), _any_shape('seed', tf.int32)
  x, x_d = (tf.TensorSpec((None, *shapes[k])) for k in ('x_encoder', 'x_discriminator'))
  concrete = lambda fn, *specs: tf.function(
      fn, input_signature=list(specs), autograph=False).get_concrete_function()
  encode = concrete(lambda x: module.encode(x), x)  # pylint: disable=unnecessary-lambda
  return {
      'generate': concrete(lambda z: module.generate(z), z),  # pylint: disable=unnecessary-lambda
      'encode': encode,
      'encode_with_seed': concrete(lambda x, seed: module.encode_with_seed(x, seed), x, seed),
      'discriminate': concrete(lambda x, z: module.discriminate(x, z), x_d, z),
      'default': concrete(lambda x: {'default': module.encode(x)['z_sample']}, x),
      'serving_default': encode,
  }


def _untag(out_dir: str) -> None:
  """Gives the one MetaGraph the empty tag set (tf.saved_model.save writes {'serve'})."""
  path = os.path.join(out_dir, 'saved_model.pb')
  proto = saved_model_pb2.SavedModel()
  with open(path, 'rb') as f:
    proto.ParseFromString(f.read())
  del proto.meta_graphs[0].meta_info_def.tags[:]
  with open(path, 'wb') as f:
    f.write(proto.SerializeToString())
  fingerprinting_utils.write_fingerprint(out_dir)


def write(networks: networks_lib.Networks, out_dir: str) -> None:
  """Writes the SavedModel, config.json and README.txt into `out_dir` (an empty directory)."""
  with _portable_locations():
    module = build_module(networks)
    named = signatures(module, networks.config)
    tf.saved_model.save(module, out_dir, signatures=named)
  _untag(out_dir)
  feature_dim = named['encode'].structured_outputs['avepool_feat'].shape[-1]
  with open(os.path.join(out_dir, 'README.txt'), 'w') as f:
    f.write(readme(networks, feature_dim))
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    f.write(networks_lib.config_json(networks.config))
