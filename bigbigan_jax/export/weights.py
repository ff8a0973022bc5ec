"""safetensors export of every array of the exported networks, and its loader (no JAX needed).

`networks.safetensors` holds one tensor per array, named `<network>/<collection>/<module path>`,
e.g. `generator/params/block2/conv1/kernel` (HWIO), `generator/spectral/block2/conv1/u` (the
spectral-norm vector), `generator/batch_stats/block2/bn1/bn/mean` (standing statistics).
`config.json` is the run's config, `shapes.json` maps every name to its shape and `README.txt`
says all this to whoever gets the folder.
"""

import json
import os
from typing import Any

import ml_collections
import numpy as np
from safetensors import numpy as safetensors_numpy

FILE = 'networks.safetensors'
NETWORKS = ('generator', 'encoder', 'discriminator')
README = """\
BigBiGAN weights exported by bigbigan_jax from step {step}: networks.safetensors (one tensor per
array), config.json (the run's config, with the sizes of every network) and shapes.json (name ->
shape). Names are <network>/<collection>/<module path>:
  generator/params/...          G's EMA weights; conv kernels HWIO, dense kernels [in, out]
  generator/spectral/...        the spectral-norm vectors u: the model divides a kernel by
                                sigma = v . (W u), W = kernel as a matrix [-1, out],
                                v = W u / sqrt(|W u|^2 + model.sn_eps)
  generator/batch_stats/...     G's standing BatchNorm statistics (mean, var)
  encoder/params/..., encoder/batch_stats/...      E with its running statistics
  discriminator/params/..., discriminator/spectral/...  D
Read it with safetensors.numpy.load_file(path) or safetensors.torch.load_file(path), or with
bigbigan_jax.export.weights.load(folder) -> (config, trees) (numpy, no JAX needed). To run the
networks without porting them, export the run as ONNX (python -m bigbigan_jax.export
--format=onnx): its folder's bigbigan_onnx.py runs them with ONNX Runtime, numpy in and out.
"""


def flatten(trees: dict[str, Any], prefix: str = '') -> dict[str, np.ndarray]:
  """Nested dicts of arrays -> {'a/b/c': array}."""
  out = {}
  for key, value in trees.items():
    if '/' in key:
      raise ValueError(f'Variable name {key!r} contains "/", which flat names use as separator.')
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(flatten(value, f'{name}/'))
    else:
      out[name] = np.asarray(value, order='C')  # (ascontiguousarray would make scalars 1-D.)
  return out


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for name, value in flat.items():
    *parents, leaf = name.split('/')
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def write(trees: dict[str, Any], config_json: str, step: int, out_dir: str) -> None:
  """Writes networks.safetensors, config.json (`config_json`), shapes.json and README.txt into
  `out_dir`."""
  flat = flatten(trees)
  metadata = {'format': 'bigbigan_jax', 'step': str(step), 'config': config_json}
  safetensors_numpy.save_file(flat, os.path.join(out_dir, FILE), metadata=metadata)
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    f.write(config_json)
  lines = [f'  {json.dumps(name)}: {list(a.shape)}' for name, a in sorted(flat.items())]
  with open(os.path.join(out_dir, 'shapes.json'), 'w') as f:
    f.write('{\n' + ',\n'.join(lines) + '\n}\n')
  with open(os.path.join(out_dir, 'README.txt'), 'w') as f:
    f.write(README.format(step=step))


def load(directory: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """(config, {'generator': variables, 'encoder': ..., 'discriminator': ...}) of an export.

  The variables are flax variable dicts of numpy arrays, ready for the models' `apply`.
  """
  flat = safetensors_numpy.load_file(os.path.join(directory, FILE))
  with open(os.path.join(directory, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  return config, unflatten(flat)
