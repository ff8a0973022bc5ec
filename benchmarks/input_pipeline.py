"""Speed of the training input pipeline on a folder of ImageNet-sized JPEGs it writes.

  python benchmarks/input_pipeline.py --threads=1,2 --images=512

For each tf.data thread count: images/s, images/s per thread, and CPU-seconds per image (the
process's user + system time over the images served, so other load on the machine does not
count). The config is the paper's training preprocessing (inception crop + flip, E at 256 px)
with a small shuffle buffer; the JPEGs are 400-500 x 350-375 like ImageNet's typical photos.
"""

import os
import pathlib
import tempfile
import time

import numpy as np
from absl import app, flags, logging
from PIL import Image

from bigbigan_jax import default_config, input_pipeline

FLAGS = flags.FLAGS
flags.DEFINE_list('threads', ['1', '2'], 'tf.data thread counts to measure (0: all cores).')
flags.DEFINE_integer('images', 512, 'JPEGs in the folder.')
flags.DEFINE_integer('batches', 12, 'Timed batches per thread count (after 2 warm-up batches).')
flags.DEFINE_integer('batch_size', 64, 'Images per update batch (d_steps 1: two per element).')
flags.DEFINE_string('folder', '', 'Folder for the JPEGs (default: a temporary one).')


def write_jpegs(root: pathlib.Path, count: int) -> None:
  """Smooth random photos with grain, quality 90, in 10 class folders of train/."""
  rng = np.random.default_rng(0)
  for i in range(count):
    width, height = int(rng.integers(400, 501)), int(rng.integers(350, 376))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    freq = rng.uniform(0.005, 0.05, 3)
    base = np.stack([127 + 100 * np.sin(freq[c] * xx + phase[c]) * np.cos(freq[c] * yy)
                     for c in range(3)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    folder = root / 'train' / f'class{i % 10}'
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / f'{i}.jpg', quality=90)


def measure(folder: pathlib.Path, threads: int) -> dict[str, float]:
  c = default_config.base_config()
  c.data.dataset = f'folder:{folder}'
  c.data.shuffle_buffer = 256
  c.data.tf_threads = threads
  c.batch_size = FLAGS.batch_size
  c.optim.d_steps = 1
  per_element = 2 * FLAGS.batch_size
  batches = input_pipeline.train_iterator(c, process_index=0, process_count=1)
  for _ in range(2):
    next(batches)
  cpu, wall = time.process_time(), time.perf_counter()
  for _ in range(FLAGS.batches):
    next(batches)
  cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
  images = FLAGS.batches * per_element
  return {'images_per_s': images / wall, 'cpu_s_per_image': cpu / images}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(FLAGS.folder or tmp)
    if not (folder / 'train').exists():
      write_jpegs(folder, FLAGS.images)
    print(f'{FLAGS.images} JPEGs in {folder}; {os.cpu_count()} cores; batch {FLAGS.batch_size} '
          f'x 2 updates per element')
    for threads in map(int, FLAGS.threads):
      r = measure(folder, threads)
      used = threads or os.cpu_count()
      print(f'tf_threads {threads}: {r["images_per_s"]:.0f} images/s, '
            f'{r["images_per_s"] / used:.0f} per thread, '
            f'{1000 * r["cpu_s_per_image"]:.2f} CPU-ms per image')


if __name__ == '__main__':
  app.run(main)
