"""Reads a BigBiGAN safetensors export the way a PyTorch port would: safetensors + numpy.

python safetensors_consumer.py EXPORT_DIR OUT.npz
Checks every tensor against shapes.json and the config, loads the export back into parameter
trees with bigbigan_jax.export.weights (JAX cannot be imported in this process) and writes
every loaded array to OUT.npz under its flat name, for the caller to compare with the run.
"""

import json
import os
import sys

sys.modules['jax'] = None  # This process must not use JAX: importing it fails.

import numpy as np
from safetensors import safe_open

from bigbigan_jax.export import weights


def main(export_dir: str, out_path: str) -> None:
  with open(os.path.join(export_dir, 'shapes.json')) as f:
    shapes = json.load(f)
  with safe_open(os.path.join(export_dir, weights.FILE), framework='numpy') as f:
    names = set(f.keys())
    metadata = f.metadata()
    for name in names:
      if list(f.get_slice(name).get_shape()) != shapes.get(name):
        sys.exit(f'{name}: shape {f.get_slice(name).get_shape()} != shapes.json {shapes.get(name)}')
  if names != set(shapes):
    sys.exit(f'names differ from shapes.json: {sorted(names ^ set(shapes))}')
  with open(os.path.join(export_dir, 'config.json')) as f:
    if json.loads(metadata['config']) != json.load(f):
      sys.exit('the config in the file header differs from config.json')
  config, trees = weights.load(export_dir)
  if sorted(trees) != ['discriminator', 'encoder', 'generator']:
    sys.exit(f'networks {sorted(trees)}')
  z_dim = config.model.z_dim
  if trees['generator']['params']['stem']['kernel'].shape[0] * (len(
      [k for k in trees['generator']['params'] if k.startswith('block')]) + 1) != z_dim:
    sys.exit('the generator stem does not read one hierarchical chunk of z')
  np.savez(out_path, **weights.flatten(trees))
  print('ok')


if __name__ == '__main__':
  main(*sys.argv[1:])
