"""ONNX Runtime against the SavedModel of one export (e.g. export_paper_config.py's), without JAX.

  python benchmarks/compare_exports.py [/tmp/bigbigan_export_bench]

Runs `encoder.onnx` (noise 0) and the SavedModel's `encode` on the same batch of 16 images and
`generator.onnx` and `generate` on the same latents, prints the largest differences, and times
`encoder.onnx` on the batch (one untimed call, then three timed).
"""

import os
import sys
import time

sys.modules['jax'] = None  # Only TensorFlow and ONNX Runtime read the files here.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(export_dir: str = '/tmp/bigbigan_export_bench') -> None:
  module = tf.saved_model.load(os.path.join(export_dir, 'saved_model'))
  session = lambda name: onnxruntime.InferenceSession(
      os.path.join(export_dir, 'onnx', name), providers=['CPUExecutionProvider'])
  encoder, generator = session('encoder.onnx'), session('generator.onnx')
  size = encoder.get_inputs()[0].shape[1]
  z_dim = generator.get_inputs()[0].shape[1]
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (16, size, size, 3)).astype(np.float32)
  inputs = {'x': x, 'noise': np.zeros((16, z_dim), np.float32)}

  want = module.signatures['encode_with_seed'](x=x, seed=tf.constant(0))
  t = time.perf_counter()
  got = encoder.run(None, inputs)
  first = time.perf_counter() - t
  times = []
  for _ in range(3):
    t = time.perf_counter()
    encoder.run(None, inputs)
    times.append(time.perf_counter() - t)
  for output, value in zip(encoder.get_outputs(), got):
    if output.name != 'z_sample':  # The SavedModel's comes from a seed, the ONNX one from noise.
      ref = want[output.name].numpy()
      print(f'encode {output.name}: max |onnx - saved_model| {np.abs(value - ref).max():.2g} '
            f'(max |value| {np.abs(ref).max():.3g})')
  print(f'encoder.onnx batch 16: first call {first:.2f} s, then {np.median(times):.2f} s median / '
        f'{min(times):.2f} s best of 3 = {16 / min(times):.1f} images/s')
  z = rng.standard_normal((2, z_dim)).astype(np.float32)
  images = generator.run(None, {'z': z})[0]
  ref = module.signatures['generate'](z=z)['default'].numpy()
  print(f'generate default: max |onnx - saved_model| {np.abs(images - ref).max():.2g}')


if __name__ == '__main__':
  main(*sys.argv[1:])
