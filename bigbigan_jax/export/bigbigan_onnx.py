"""Runs BigBiGAN's encoder.onnx and generator.onnx with ONNX Runtime, checking the inputs first.

bigbigan_jax copies this file into every ONNX export folder; it needs numpy and onnxruntime only.

  sys.path.insert(0, FOLDER); import bigbigan_onnx
  encoder = bigbigan_onnx.Encoder(FOLDER)   # seed=S makes the sequence of noises reproducible
  out = encoder(x)        # x float [N, H, W, C] in [-1, 1] -> {z_mean, z_stdev, z_sample, ...}
  images = bigbigan_onnx.Generator(FOLDER)(z)['default']   # z [N, z_dim] -> [N, R, R, C]

An input of another shape or dtype, a batch of 0 (on which ONNX Runtime can kill the process
with SIGFPE) or a noise batch unlike x's raises ValueError with one sentence.
"""

import os

import numpy as np
import onnxruntime


class Network:
  """One ONNX network: run(**inputs) checks them and returns {output name: array}."""

  def __init__(self, path: str, providers=('CPUExecutionProvider',)):
    self.name = os.path.basename(path)
    self.session = onnxruntime.InferenceSession(path, providers=list(providers))
    self.dims = {i.name: tuple(i.shape[1:]) for i in self.session.get_inputs()}
    self.outputs = [o.name for o in self.session.get_outputs()]

  def check(self, name: str, value, rows=None) -> np.ndarray:
    """`value` as float32 once it has shape [N, *dims], N >= 1 (N = `rows` when given)."""
    value = np.asarray(value)
    if value.dtype.kind != 'f':
      raise ValueError(f'{self.name}: {name} must be a float array (images in [-1, 1]); got '
                       f'{value.dtype}.')
    dims = self.dims[name]
    dims_text = ''.join(f', {d}' for d in dims)
    expected = (f'[N{dims_text}] with N >= 1' if rows is None else
                f'[{rows}{dims_text}], as many rows as x')
    if (value.ndim != len(dims) + 1 or value.shape[1:] != dims or not value.shape[0]
        or rows not in (None, value.shape[0])):
      raise ValueError(f'{self.name}: {name} must have shape {expected}; got '
                       f'{list(value.shape)}.')
    return value.astype(np.float32, copy=False)

  def run(self, **inputs) -> dict[str, np.ndarray]:
    if sorted(inputs) != sorted(self.dims):
      raise ValueError(f'{self.name} takes {", ".join(self.dims)}; got {", ".join(inputs)}.')
    first = next(iter(self.dims))
    checked = {first: self.check(first, inputs[first])}
    rows = len(checked[first])
    checked.update({k: self.check(k, inputs[k], rows) for k in self.dims if k != first})
    return dict(zip(self.outputs, self.session.run(None, checked)))


class Encoder(Network):
  """E: x [N, H, W, C] in [-1, 1] -> z_mean, z_stdev, z_sample, avepool_feat, bn_crelu_feat
  (a deterministic E returns z_mean and the features)."""

  def __init__(self, folder: str, seed=None, providers=('CPUExecutionProvider',)):
    super().__init__(os.path.join(folder, 'encoder.onnx'), providers)
    self.rng = np.random.default_rng(seed)

  def __call__(self, x, noise=None) -> dict[str, np.ndarray]:
    """z_sample = z_mean + z_stdev * noise; fresh standard normal noise when `noise` is None."""
    if 'noise' not in self.dims:
      return self.run(x=x) if noise is None else self.run(x=x, noise=noise)
    if noise is None:
      x = self.check('x', x)
      noise = self.rng.standard_normal((len(x), *self.dims['noise']), np.float32)
    return self.run(x=x, noise=noise)


class Generator(Network):
  """G: z [N, z_dim] ~ N(0, I) -> default [N, R, R, C] in [-1, 1]."""

  def __init__(self, folder: str, providers=('CPUExecutionProvider',)):
    super().__init__(os.path.join(folder, 'generator.onnx'), providers)

  def __call__(self, z) -> dict[str, np.ndarray]:
    return self.run(z=z)
