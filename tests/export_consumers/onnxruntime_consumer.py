"""Runs BigBiGAN's encoder.onnx and generator.onnx with ONNX Runtime against reference outputs,
both directly and through the export folder's bigbigan_onnx.py, and feeds that bad inputs.

python onnxruntime_consumer.py ONNX_DIR REFERENCE.npz BAD_INPUTS.json
The .npz holds `<model>/<batch>/in/<input>` and `<model>/<batch>/out/<output>` arrays, model
being encoder or generator. The .json is a list of [model, {input: [shape, dtype]}, sentence]:
bigbigan_onnx's model called with zeros of those shapes must raise ValueError(sentence). Exits
non-zero with the first mismatch. JAX cannot be imported in this process.
"""

import collections
import json
import os
import sys

sys.modules['jax'] = None  # This process must not use JAX: importing it fails.

import numpy as np
import onnxruntime

OUTPUTS = {
    'encoder': ['z_mean', 'z_stdev', 'z_sample', 'avepool_feat', 'bn_crelu_feat'],
    'generator': ['default'],
}


def check_wrapper(onnx_dir: str, cases, bad) -> None:
  """bigbigan_onnx from the export folder: the reference outputs, fresh or seeded noise, and
  one sentence for each bad input (batch 0 included, which can kill ONNX Runtime)."""
  sys.path.insert(0, onnx_dir)
  import bigbigan_onnx  # pylint: disable=g-import-not-at-top
  models = {'encoder': bigbigan_onnx.Encoder(onnx_dir),
            'generator': bigbigan_onnx.Generator(onnx_dir)}
  for (model, batch), (inputs, expected) in sorted(cases.items()):
    got = models[model](**inputs)
    for key, want in expected.items():
      np.testing.assert_allclose(got[key], want, rtol=1e-4, atol=1e-4,
                                 err_msg=f'bigbigan_onnx {model} {key} at batch {batch}')
  x = next(inputs['x'] for (model, _), (inputs, _) in cases.items() if model == 'encoder')
  seeded = bigbigan_onnx.Encoder(onnx_dir, seed=1)
  first, second = seeded(x), seeded(x)
  if np.allclose(first['z_sample'], second['z_sample']):
    sys.exit('bigbigan_onnx.Encoder draws the same noise at every call')
  np.testing.assert_array_equal(bigbigan_onnx.Encoder(onnx_dir, seed=1)(x)['z_sample'],
                                first['z_sample'])  # The same seed, the same noises.
  np.testing.assert_allclose(models['encoder'](x)['z_mean'], first['z_mean'], rtol=1e-5,
                             atol=1e-6)
  for model, inputs, sentence in bad:
    args = {k: np.zeros(shape, dtype) for k, (shape, dtype) in inputs.items()}
    try:
      models[model](**args)
    except ValueError as e:
      if str(e) != sentence:
        sys.exit(f'{model}{inputs}: error {str(e)!r}; want {sentence!r}')
    else:
      sys.exit(f'{model}{inputs}: no error; want {sentence!r}')


def main(onnx_dir: str, reference_path: str, bad_path: str) -> None:
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
  batch_sizes, errors = collections.defaultdict(set), collections.defaultdict(float)
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
      errors[model] = max(errors[model], float(np.abs(got[key] - want).max()))
  if any(len(b) < 2 for b in batch_sizes.values()) or set(batch_sizes) != set(OUTPUTS):
    sys.exit(f'reference covers {dict(batch_sizes)}; want two batch sizes of each model')
  print('max |onnx - reference|:', ', '.join(f'{k} {v:.2g}' for k, v in errors.items()))
  with open(bad_path) as f:
    check_wrapper(onnx_dir, cases, json.load(f))
  print('ok')


if __name__ == '__main__':
  main(*sys.argv[1:])
