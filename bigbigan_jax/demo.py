"""The embedded default from start to answer (`make demo`):

  python -m bigbigan_jax.demo --config=configs/fashion_mnist.py [--workdir=...]

Trains exactly like `python -m bigbigan_jax.main` with the same flags (a rerun resumes, or finds
the run trained), then evaluates E after training, E at initialisation and the raw pixels with
a quick linear probe (fit on QUICK_PROBE_EXAMPLES train images, scored on the whole eval split)
and ends with three lines: what E learnt, against both baselines, and where the images are.
"""

import os

from absl import app, flags

from bigbigan_jax import main as training_main

FLAGS = flags.FLAGS
QUICK_PROBE_EXAMPLES = 10_000
QUICK_PROBE = (f'num_train_examples={QUICK_PROBE_EXAMPLES}',)


def summary(step: int, trained: dict, init: dict, pixels: dict, feature: str, image_dir: str,
            eval_split: str) -> str:
  """Three lines for a person: E's probe and 1-NN after training, the baselines, the images."""
  pct = lambda metrics, key: f'{100 * metrics[key]:.1f}%'
  return '\n'.join([
      f'E after {step} steps: linear probe {pct(trained, "probe/top1")} top-1 (1-NN '
      f'{pct(trained, "knn/cosine_k1")}), {feature} features, probe fit on '
      f'{trained["num_train_examples"]:,} train images, scored on {eval_split}.',
      f'Baselines, same protocol: raw pixels {pct(pixels, "probe/top1")} (1-NN '
      f'{pct(pixels, "knn/cosine_k1")}), E at initialisation {pct(init, "probe/top1")} (1-NN '
      f'{pct(init, "knn/cosine_k1")}).',
      f'Images: {os.path.join(image_dir, f"samples_{step:07d}.png")} and '
      f'{os.path.join(image_dir, f"reconstructions_{step:07d}.png")}.',
  ])


def main(argv):
  training_main.main(argv)
  from bigbigan_jax.evaluation import run_evaluation  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  workdir = FLAGS.workdir or os.path.join('runs', config.name)
  evaluate = lambda **kwargs: run_evaluation.evaluate_run(workdir, settings=QUICK_PROBE,
                                                          **kwargs)[1]
  trained = evaluate(step=config.num_train_steps)
  init, pixels = evaluate(init=True), evaluate(raw_pixels=True)
  print(summary(config.num_train_steps, trained, init, pixels, config.eval.feature,
                os.path.join(workdir, 'images'), config.data.eval_split), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=training_main.parse_flags)
