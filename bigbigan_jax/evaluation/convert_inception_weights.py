"""Converts pytorch-fid's Inception weights to the .npz that `inception.load_params` reads.

  python -m bigbigan_jax.evaluation.convert_inception_weights \
      --src pt_inception-2015-12-05-6726825d.pth --dst inception_fid.npz

Needs PyTorch (only here, imported inside `main`). Conv kernels go from OIHW to HWIO and the
classifier matrix is transposed; BatchNorm running statistics become 'mean' and 'var'.
"""

import argparse
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

from bigbigan_jax.evaluation import inception

# (torch layer, torch parameter) -> (Flax module, Flax parameter).
_LEAF_NAMES = {
    ('conv', 'weight'): ('conv', 'kernel'),
    ('bn', 'weight'): ('bn', 'scale'),
    ('bn', 'bias'): ('bn', 'bias'),
    ('bn', 'running_mean'): ('bn', 'mean'),
    ('bn', 'running_var'): ('bn', 'var'),
    ('fc', 'weight'): ('fc', 'kernel'),
    ('fc', 'bias'): ('fc', 'bias'),
}


def flax_name(torch_name: str) -> str:
  """'Mixed_5b.branch1x1.conv.weight' -> 'Mixed_5b/branch1x1/conv/kernel'."""
  *scope, layer, leaf = torch_name.split('.')
  if (layer, leaf) not in _LEAF_NAMES:
    raise ValueError(f'Unexpected parameter {torch_name!r} in the PyTorch state dict.')
  return '/'.join(scope + list(_LEAF_NAMES[layer, leaf]))


def flax_layout(torch_name: str, value: np.ndarray) -> np.ndarray:
  """Conv kernels OIHW -> HWIO and dense [out, in] -> [in, out]; others unchanged."""
  value = np.asarray(value, np.float32)
  if torch_name.endswith('conv.weight'):
    return value.transpose(2, 3, 1, 0)
  if torch_name == 'fc.weight':
    return value.T
  return value


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """PyTorch FID Inception state dict (numpy values) -> checked flat Flax params."""
  flat = {flax_name(name): flax_layout(name, value) for name, value in state_dict.items()
          if not name.endswith('num_batches_tracked')}
  inception.check_params(flat)
  return flat


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--src', required=True, help='pytorch-fid pt_inception-*.pth file.')
  parser.add_argument('--dst', required=True, help='Output .npz path.')
  args = parser.parse_args(argv)
  try:
    import torch  # pylint: disable=g-import-not-at-top  (only the converter needs PyTorch)
  except ImportError as e:
    raise SystemExit('The converter needs PyTorch to read the .pth file: pip install torch.') from e
  state_dict = torch.load(args.src, map_location='cpu', weights_only=True)
  flat = convert_state_dict({name: tensor.numpy() for name, tensor in state_dict.items()})
  inception.save_params({'params': traverse_util.unflatten_dict(flat, sep='/')}, args.dst)
  print(f'Wrote {len(flat)} arrays to {args.dst}.')


if __name__ == '__main__':
  main()
