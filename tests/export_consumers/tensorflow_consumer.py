"""Loads a BigBiGAN SavedModel with TensorFlow only and checks it against reference outputs.

python tensorflow_consumer.py SAVED_MODEL_DIR REFERENCE.npz
The .npz holds `<signature>/<batch>/in/<input>` and `<signature>/<batch>/out/<output>` arrays.
Exits non-zero with the first mismatch. JAX cannot be imported in this process.
"""

import collections
import sys

sys.modules['jax'] = None  # This process must not use JAX: importing it fails.

import numpy as np
import tensorflow as tf

# Signature names, inputs and output keys of the official module (SPEC.md section 6), with
# serving_default for the TF1 module's `default` and a seed for encode's sampling noise.
SIGNATURES = {
    'generate': (('z',), ('default', 'upsampled')),
    'encode': (('seed', 'x'), ('avepool_feat', 'bn_crelu_feat', 'default', 'z_mean', 'z_sample',
                               'z_stdev')),
    'serving_default': (('seed', 'x'), ('avepool_feat', 'bn_crelu_feat', 'default', 'z_mean',
                                        'z_sample', 'z_stdev')),
    'discriminate': (('x', 'z'), ('score_x', 'score_xz', 'score_z')),
}


def main(saved_model_dir: str, reference_path: str) -> None:
  module = tf.saved_model.load(saved_model_dir)
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

  reference = np.load(reference_path)
  cases = collections.defaultdict(lambda: ({}, {}))
  for key in reference.files:
    signature, batch, kind, name = key.split('/')
    cases[signature, int(batch)][kind == 'out'][name] = reference[key]
  batch_sizes = collections.defaultdict(set)
  for (signature, batch), (inputs, expected) in sorted(cases.items()):
    batch_sizes[signature].add(batch)
    got = module.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    for key, want in expected.items():
      value = got[key].numpy()
      if value.dtype != np.float32:
        sys.exit(f'{signature}[{key}] has dtype {value.dtype}, want float32')
      np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-4,
                                 err_msg=f'{signature}[{key}] at batch {batch}')
  if any(len(b) < 2 for b in batch_sizes.values()) or set(batch_sizes) != set(SIGNATURES):
    sys.exit(f'reference covers {dict(batch_sizes)}; want two batch sizes of every signature')
  print('ok')


if __name__ == '__main__':
  main(*sys.argv[1:])
