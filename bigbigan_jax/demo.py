"""The embedded default from start to answer (`make demo`):

  python -m bigbigan_jax.demo --config=configs/fashion_mnist.py [--workdir=...]

Trains exactly like `python -m bigbigan_jax.main` with the same flags (a rerun resumes, or finds
the run trained), then evaluates E after training, E at initialisation and the raw pixels with a
quick linear probe and ends with three lines: what E learnt, against both baselines, and where
the images are; a Fashion-MNIST run adds a line of G numbers (evaluation/garment_metrics.py).
"""

import os

from absl import app, flags

from bigbigan_jax import main as training_main

FLAGS = flags.FLAGS


def main(argv):
  training_main.main(argv)
  # pylint: disable=g-import-not-at-top
  from bigbigan_jax.evaluation import garment_metrics, run_evaluation
  workdir = FLAGS.workdir or os.path.join('runs', FLAGS.config.name)
  print(run_evaluation.quick_summary(workdir, FLAGS.config.num_train_steps), flush=True)
  if FLAGS.config.data.dataset in garment_metrics.FASHION_MNIST_DATASETS:
    metrics = garment_metrics.evaluate_run(workdir, step=FLAGS.config.num_train_steps)[1]
    print(garment_metrics.summary_line(metrics), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=training_main.parse_flags)
