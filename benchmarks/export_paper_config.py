"""Export time, file sizes and SavedModel `encode` throughput for the paper config on this machine.

  python benchmarks/export_paper_config.py [--formats=saved_model,onnx,safetensors]
      [--standing_batches=1 --standing_batch_size=16] [--out=/tmp/bigbigan_export_bench]

configs/imagenet128.py (ResNet-50 E at 256 px, ch 96 G and D) with its randomly initialised
state (run_dir.initial_state, no training), exported in float32. G's standing statistics take
`--standing_batches` x `--standing_batch_size` latents here (the config's 16 x 256 is timed per
batch below), and each format's time is that of exporter.write_atomically on the networks. The
SavedModel is then loaded with TensorFlow and `encode` is timed on batches of 16 images.
"""

import os
import shutil
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from bigbigan_jax import parallel, run_dir  # noqa: E402
from bigbigan_jax.export import exporter, networks  # noqa: E402
from configs import imagenet128  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list('formats', list(exporter.FORMATS), 'Formats to export.')
flags.DEFINE_integer('standing_batches', 1, 'Batches of z for G standing statistics.')
flags.DEFINE_integer('standing_batch_size', 16, 'Latents per standing-statistics batch.')
flags.DEFINE_string('out', '/tmp/bigbigan_export_bench', 'Scratch directory (replaced).')
flags.DEFINE_integer('encode_batch', 16, 'Batch of images for the encode throughput.')
flags.DEFINE_integer('encode_repeats', 3, 'Timed encode calls after one warm-up call.')


def _size_mib(path: str) -> float:
  if os.path.isfile(path):
    return os.path.getsize(path) / 2**20
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files) / 2**20


def _encode_throughput(saved_model_dir: str, config) -> str:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  t = time.perf_counter()
  module = tf.saved_model.load(saved_model_dir)
  load_s = time.perf_counter() - t
  e, c = config.encoder.resolution, config.data.num_channels
  x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (FLAGS.encode_batch, e, e, c)),
                  tf.float32)
  encode = module.signatures['encode_with_seed']
  t = time.perf_counter()
  encode(x=x, seed=tf.constant(0))['z_mean'].numpy()
  first_s = time.perf_counter() - t
  times = []
  for i in range(FLAGS.encode_repeats):
    t = time.perf_counter()
    encode(x=x, seed=tf.constant(i))['z_mean'].numpy()
    times.append(time.perf_counter() - t)
  best = min(times)
  return (f'SavedModel load {load_s:.1f} s; encode batch {FLAGS.encode_batch} at {e} px: first '
          f'call {first_s:.1f} s, then {np.median(times):.2f} s median / {best:.2f} s best of '
          f'{len(times)} = {FLAGS.encode_batch / best:.1f} images/s')


def main(argv):
  del argv
  config = imagenet128.get_config()
  config.dtype = 'float32'
  config.standing_stats_batches = FLAGS.standing_batches
  config.batch_size = FLAGS.standing_batch_size  # Only the standing batch reads it here.
  print(f'{jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} CPUs',
        flush=True)
  t = time.perf_counter()
  state = run_dir.initial_state(config, parallel.make_mesh())
  jax.block_until_ready(state)
  print(f'initial state: {time.perf_counter() - t:.1f} s', flush=True)
  t = time.perf_counter()
  nets = networks.from_state(config, state, 0)
  del state
  print(f'networks (standing statistics {FLAGS.standing_batches} x {FLAGS.standing_batch_size}): '
        f'{time.perf_counter() - t:.1f} s', flush=True)
  shutil.rmtree(FLAGS.out, ignore_errors=True)
  for fmt in FLAGS.formats:
    out = os.path.join(FLAGS.out, fmt)
    write, check = exporter.writer(fmt)
    check(config)
    t = time.perf_counter()
    exporter.write_atomically(lambda d: write(nets, d), out)
    files = ', '.join(f'{f} {_size_mib(os.path.join(out, f)):.0f} MiB'
                      for f in sorted(os.listdir(out)) if _size_mib(os.path.join(out, f)) >= 1)
    print(f'{fmt}: {time.perf_counter() - t:.1f} s, {_size_mib(out):.0f} MiB ({files})', flush=True)
    if fmt == 'saved_model':
      print(_encode_throughput(out, config), flush=True)


if __name__ == '__main__':
  app.run(main)
