"""Runs BigBiGAN's encoder.onnx and generator.onnx with ONNX Runtime against reference outputs.

python onnxruntime_consumer.py ONNX_DIR REFERENCE.npz
The .npz holds `<model>/<batch>/in/<input>` and `<model>/<batch>/out/<output>` arrays, model
being encoder or generator. Exits non-zero with the first mismatch. JAX cannot be imported in this process.
"""

import collections
import os
import sys

sys.modules['jax'] = None  # This process must not use JAX: importing it fails.

import numpy as np
import onnxruntime

OUTPUTS = {
    'encoder': ['z_mean', 'z_stdev', 'z_sample', 'avepool_feat', 'bn_crelu_feat'],
    'generator': ['default'],
}


def main(onnx_dir: str, reference_path: str) -> None:
  reference = np.load(reference_path)
  cases = collections.defaultdict(lambda: ({}, {}))
  for key in reference.files:
    model, batch, kind, name = key.split('/')
    cases[model, int(batch)][kind == 'out'][name] = reference[key]
  sessions = {}
  for model, outputs in OUTPUTS.items():
    session = onnxruntime.InferenceSession(os.path.join(onnx_dir, f'{model}.onnx'),
                                           providers=['CPUExecutionProvider'])
    if [o.name for o in session.get_outputs()] != outputs:
      sys.exit(f'{model}.onnx outputs {[o.name for o in session.get_outputs()]}, want {outputs}')
    if any(not isinstance(i.shape[0], str) for i in session.get_inputs()):
      sys.exit(f'{model}.onnx has a fixed batch axis: {[i.shape for i in session.get_inputs()]}')
    sessions[model] = session
  batch_sizes = collections.defaultdict(set)
  for (model, batch), (inputs, expected) in sorted(cases.items()):
    batch_sizes[model].add(batch)
    session = sessions[model]
    if sorted(i.name for i in session.get_inputs()) != sorted(inputs):
      sys.exit(f'{model}.onnx inputs {[i.name for i in session.get_inputs()]}, '
               f'want {sorted(inputs)}')
    got = dict(zip(OUTPUTS[model], session.run(None, inputs)))
    for key, want in expected.items():
      np.testing.assert_allclose(got[key], want, rtol=1e-4, atol=1e-4,
                                 err_msg=f'{model}.onnx {key} at batch {batch}')
  if any(len(b) < 2 for b in batch_sizes.values()) or set(batch_sizes) != set(OUTPUTS):
    sys.exit(f'reference covers {dict(batch_sizes)}; want two batch sizes of each model')
  print('ok')


if __name__ == '__main__':
  main(*sys.argv[1:])
