"""Loads a BigBiGAN SavedModel with TensorFlow only, runs it as code written for the official
TF-Hub module does, and checks it against reference outputs and bad inputs.

python tensorflow_consumer.py SAVED_MODEL_DIR REFERENCE.npz BAD_INPUTS.json
The .npz holds `<signature>/<batch>/in/<input>` and `<signature>/<batch>/out/<output>` arrays.
The .json has `bad`, a list of [signature, {input: [shape, dtype]}, sentence] (a call with zeros
of those shapes must fail with that sentence), and `forbidden`, strings (the exporting machine's
paths) that no error may contain. Exits non-zero at the first failed check; prints
`tensorflow_hub ok` when tensorflow_hub was installed and ran the official usage too, then `ok`.
JAX cannot be imported in this process.
"""

import collections
import json
import sys

sys.modules['jax'] = None  # This process must not use JAX: importing it fails.

import numpy as np
import tensorflow as tf

ENCODE = ('avepool_feat', 'bn_crelu_feat', 'default', 'z_mean', 'z_sample', 'z_stdev')
# Signature names, inputs and output keys: the official module's (SPEC.md section 6), with
# serving_default = encode (TF2's default key) and encode_with_seed for reproducible noise.
SIGNATURES = {
    'generate': (('z',), ('default', 'upsampled')),
    'encode': (('x',), ENCODE),
    'encode_with_seed': (('seed', 'x'), ENCODE),
    'serving_default': (('x',), ENCODE),
    'default': (('x',), ('default',)),
    'discriminate': (('x', 'z'), ('score_x', 'score_xz', 'score_z')),
}
FRESH = ('encode', 'serving_default', 'default')  # z_sample's noise is new at every call.


def close(got, want, what: str) -> None:
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4, err_msg=what)


def check_signatures(module) -> None:
  if set(module.signatures.keys()) != set(SIGNATURES):
    sys.exit(f'signatures {sorted(module.signatures.keys())} != {sorted(SIGNATURES)}')
  for name, (inputs, outputs) in SIGNATURES.items():
    fn = module.signatures[name]
    got_inputs = tuple(sorted(fn.structured_input_signature[1]))
    got_outputs = tuple(sorted(fn.structured_outputs))
    if (got_inputs, got_outputs) != (inputs, outputs):
      sys.exit(f'{name}: inputs {got_inputs}, outputs {got_outputs}; want {inputs}, {outputs}')
    if any(spec.shape.rank and spec.shape[0] is not None
           for spec in fn.structured_input_signature[1].values()):
      sys.exit(f'{name}: the batch dimension is not polymorphic')


def check_reference(module, reference) -> dict:
  """Every signature at every batch size against the reference; returns
  {(signature, batch): (inputs, outputs)}."""
  cases = collections.defaultdict(lambda: ({}, {}))
  for key in reference.files:
    signature, batch, kind, name = key.split('/')
    cases[signature, int(batch)][kind == 'out'][name] = reference[key]
  batch_sizes, errors = collections.defaultdict(set), collections.defaultdict(float)
  for (signature, batch), (inputs, expected) in sorted(cases.items()):
    batch_sizes[signature].add(batch)
    fn = module.signatures[signature]
    got = fn(**{k: tf.constant(v) for k, v in inputs.items()})
    for key, value in got.items():
      if value.dtype != tf.float32:
        sys.exit(f'{signature}[{key}] has dtype {value.dtype}, want float32')
    for key, want in expected.items():
      close(got[key], want, f'{signature}[{key}] at batch {batch}')
      errors[signature] = max(errors[signature], float(np.abs(got[key].numpy() - want).max()))
    again = fn(**{k: tf.constant(v) for k, v in inputs.items()})
    latent = 'default' if signature == 'default' else 'z_sample'
    if signature in FRESH:
      mean, stdev = (cases['encode', batch][1][k] for k in ('z_mean', 'z_stdev'))
      noise = [(g[latent].numpy() - mean) / stdev for g in (got, again)]
      if np.allclose(noise[0], noise[1]) or not all(np.abs(n).max() < 10 for n in noise):
        sys.exit(f'{signature}: z_sample noise is not fresh standard normal noise at each call')
    elif any(not np.array_equal(got[k], again[k]) for k in got):
      sys.exit(f'{signature}: a second call with the same inputs gave other outputs')
  if any(len(b) < 2 for b in batch_sizes.values()) or set(batch_sizes) != set(SIGNATURES):
    sys.exit(f'reference covers {dict(batch_sizes)}; want two batch sizes of every signature')
  print('max |signature - reference|:', ', '.join(f'{k} {v:.2g}' for k, v in errors.items()))
  return cases


def check_bad_inputs(module, bad, forbidden) -> None:
  """Each bad call fails with its one sentence, before the networks run: through the signature
  and through the tf.function (or the callable root) that does the same."""
  functions = {'generate': module.generate, 'encode': module.encode, 'default': module,
               'serving_default': module.encode, 'encode_with_seed': module.encode,
               'discriminate': module.discriminate}
  for signature, inputs, sentence in bad:
    args = {k: tf.zeros(shape, dtype) for k, (shape, dtype) in inputs.items()}
    for name, fn in ((signature, module.signatures[signature]),
                     (f'{signature} tf.function', functions[signature])):
      try:
        fn(**args)
      except tf.errors.InvalidArgumentError as e:
        text = str(e)
        if sentence not in text or any(f in text for f in forbidden):
          sys.exit(f'{name}{inputs}: error {text!r}; want {sentence!r} and no machine path')
      else:
        sys.exit(f'{name}{inputs}: no error; want {sentence!r}')


def official_usage_tf(path: str, x, z, x_d, want) -> None:
  """The official module's usage written with tf.saved_model.load (what hub.load calls)."""
  for module in (tf.saved_model.load(path), tf.saved_model.load(path, tags=[])):
    e = module.signatures['encode'](x=x)
    close(e['z_mean'], want['z_mean'], 'encode(x=x) z_mean')
    if module.signatures['default'](x=x)['default'].shape != e['z_sample'].shape:
      sys.exit('default(x=x) is not z_sample-shaped')
    close(module.signatures['generate'](z=z)['default'], want['images'], 'generate(z=z)')
    close(module.signatures['discriminate'](x=x_d, z=z)['score_xz'], want['score_xz'],
          'discriminate(x=x, z=z)')
    close(module.signatures['encode'](x)['z_mean'], want['z_mean'], 'encode(x)')  # KerasLayer's.
    if module(x).shape != e['z_sample'].shape:  # hub.KerasLayer(path) calls the root object.
      sys.exit(f'module(x) has shape {module(x).shape}')
    # The tf.functions: encode's seed is optional.
    close(module.encode(x)['z_mean'], want['z_mean'], 'module.encode(x)')
    close(module.encode(x, seed=tf.constant(want['seed']))['z_sample'], want['z_sample'],
          'module.encode(x, seed=seed)')
    close(module.generate(z)['default'], want['images'], 'module.generate(z)')
    close(module.discriminate(x_d, z)['score_x'], want['score_x'], 'module.discriminate(x, z)')


def official_usage_hub(path: str, x, z, x_d, want) -> None:
  """The official module's usage through tensorflow_hub, unchanged but for the path."""
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  module = hub.load(path)
  e = module.signatures['encode'](x=x)
  d = module.signatures['default'](x=x)['default']
  g = module.signatures['generate'](z=z)
  s = module.signatures['discriminate'](x=x_d, z=z)
  close(e['z_mean'], want['z_mean'], 'hub encode')
  close(g['default'], want['images'], 'hub generate')
  close(s['score_z'], want['score_z'], 'hub discriminate')
  if d.shape != e['z_sample'].shape:
    sys.exit(f'hub default has shape {d.shape}')
  module = hub.load(path, tags=[])
  close(module.signatures['encode'](x=x)['avepool_feat'], want['avepool_feat'], 'tags=[]')
  encoder = hub.KerasLayer(path, signature='encode', signature_outputs_as_dict=True)
  outputs = encoder(x)
  if sorted(outputs) != sorted(ENCODE):
    sys.exit(f'KerasLayer(signature="encode") outputs {sorted(outputs)}')
  close(outputs['bn_crelu_feat'], want['bn_crelu_feat'], 'KerasLayer encode')
  close(hub.KerasLayer(path, signature='encode', output_key='z_mean')(x), want['z_mean'],
        'KerasLayer output_key')
  close(hub.KerasLayer(path, signature='generate', output_key='default')(z), want['images'],
        'KerasLayer generate')
  if hub.KerasLayer(path)(x).shape != e['z_sample'].shape:
    sys.exit('hub.KerasLayer(path)(x) is not z_sample')


def main(saved_model_dir: str, reference_path: str, bad_path: str) -> None:
  module = tf.saved_model.load(saved_model_dir)
  check_signatures(module)
  cases = check_reference(module, np.load(reference_path))
  with open(bad_path) as f:
    bad = json.load(f)
  check_bad_inputs(module, bad['bad'], bad['forbidden'])

  batch = min(b for signature, b in cases if signature == 'generate')
  (e_in, e_out), (d_in, d_out) = cases['encode_with_seed', batch], cases['discriminate', batch]
  want = {**e_out, **d_out, 'images': cases['generate', batch][1]['default'],
          'seed': e_in['seed']}
  x, x_d, z = (tf.constant(a) for a in (e_in['x'], d_in['x'], d_in['z']))
  official_usage_tf(saved_model_dir, x, z, x_d, want)
  try:
    import tensorflow_hub  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    print('tensorflow_hub not installed')
  else:
    official_usage_hub(saved_model_dir, x, z, x_d, want)
    print('tensorflow_hub ok')
  print('ok')


if __name__ == '__main__':
  main(*sys.argv[1:])
