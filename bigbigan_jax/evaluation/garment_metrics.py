"""Generator metrics for Fashion-MNIST runs that need no download, in the feature space of the
project's own garment classifier (garment_classifier):

  python -m bigbigan_jax.evaluation.garment_metrics --workdir=runs/fashion_mnist [--step=N]

writes `<workdir>/eval_garment_<step>.json` and prints it. The metrics:

- `garment/fd`, `garment/kid` (and `kid_std`): Frechet distance and KID (unbiased MMD^2 with the
  cubic polynomial kernel, mean and std over random subsets; Binkowski et al. 2018) between the
  classifier features of EMA G's samples and of the test split.
- `garment/recon_agreement`: the fraction of test images x whose reconstruction G(E(x)) (from
  E's z_mean) gets the class the classifier gives x; `garment/recon_true_class`: ... gets x's
  true class.

and the numbers that make them readable: `garment/classifier_test_accuracy` (on the 28 px test
split), `garment/baseline_identity_*` (x itself for G(E(x)): agreement 1, true class = the
classifier's accuracy on the images as G sees them), `garment/baseline_shuffled_*` (another test
image for G(E(x)): chance, about 0.1), and `garment/baseline_train_fd` / `_kid` (the train split
in place of G's samples: the floor). Real images are compared as D sees them (E's view at G's
resolution), the view G learns to draw.
"""

import json
import math
import os
import sys
import warnings
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np
import scipy.linalg
from absl import app, flags, logging
from etils import epath

from bigbigan_jax import (config_checks, data, image_views, in_memory, inference, parallel, run_dir,
                          run_log)
from bigbigan_jax.evaluation import frechet, garment_classifier

FASHION_MNIST_DATASETS = ('fashion_mnist_local', 'fashion_mnist')
SPLIT = 'test'
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000

Images = np.ndarray
Predict = Callable[[Images], np.ndarray]


class UsageError(Exception):
  """A problem the user fixes on the command line; printed as one line."""


# Metrics of plain arrays and callables.


def frechet_distance(features1: np.ndarray, features2: np.ndarray) -> float:
  """Frechet distance between Gaussians fitted to two feature sets [N, D]."""
  with warnings.catch_warnings():  # Units a set never activates make its covariance singular.
    warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
    return frechet.frechet_distance(*frechet.statistics(features1),
                                    *frechet.statistics(features2))


def polynomial_mmd2(features1: np.ndarray, features2: np.ndarray) -> float:
  """Unbiased MMD^2 with the kernel k(a, b) = (a.b / D + 1)^3, in float64."""
  x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  m, n, dim = len(x), len(y), x.shape[1]
  if m < 2 or n < 2:
    raise ValueError(f'Unbiased MMD needs at least 2 examples per set, got {m} and {n}.')
  kernel = lambda a, b: (a @ b.T / dim + 1.0) ** 3
  k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
  return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
               + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1)) - 2.0 * k_xy.mean())


def kernel_distance(features1: np.ndarray, features2: np.ndarray, *,
                    num_subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                    seed: int = 0) -> tuple[float, float]:
  """KID: mean and std of `polynomial_mmd2` over `num_subsets` pairs of random subsets of
  min(subset_size, N1, N2) examples of each set (without replacement within a subset)."""
  if num_subsets < 1:
    raise ValueError(f'KID needs num_subsets >= 1, got {num_subsets}.')
  size = min(subset_size, len(features1), len(features2))
  rng = np.random.default_rng(seed)
  values = [polynomial_mmd2(features1[rng.choice(len(features1), size, replace=False)],
                            features2[rng.choice(len(features2), size, replace=False)])
            for _ in range(num_subsets)]
  return float(np.mean(values)), float(np.std(values))


def batched(fn: Callable[[Images], np.ndarray], images: Images, batch_size: int) -> np.ndarray:
  """fn applied to `images` in batches of `batch_size` (the last one may be smaller)."""
  if not len(images):
    raise ValueError('Cannot evaluate on 0 images.')
  return np.concatenate([np.asarray(fn(images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])


def reconstruction_agreement(predict: Predict, reconstruct: Callable[[Images], Images],
                             images: Images, labels: np.ndarray, *,
                             real_view: Callable[[Images], Images] = lambda x: x,
                             batch_size: int = 500) -> dict[str, float]:
  """How often predict(reconstruct(x)) equals predict(real_view(x)) ('agreement') and x's label
  ('true_class'), over `images` in batches."""
  labels = np.asarray(labels)
  if len(labels) != len(images):
    raise ValueError(f'{len(images)} images but {len(labels)} labels.')
  real = batched(lambda x: predict(real_view(x)), images, batch_size)
  recon = batched(lambda x: predict(reconstruct(x)), images, batch_size)
  return {'agreement': float(np.mean(recon == real)), 'true_class': float(np.mean(recon == labels))}


def shuffled_agreement(predicted: np.ndarray, labels: np.ndarray,
                       seed: int = 0) -> dict[str, float]:
  """`reconstruction_agreement` of a random pairing: another test image's prediction in place of
  G(E(x))'s (chance level)."""
  predicted, labels = np.asarray(predicted), np.asarray(labels)
  partner = predicted[np.random.default_rng(seed).permutation(len(predicted))]
  return {'agreement': float(np.mean(partner == predicted)),
          'true_class': float(np.mean(partner == labels))}


# A run's metrics.


def check_fashion_mnist(config: ml_collections.ConfigDict, workdir) -> None:
  if config.data.dataset not in FASHION_MNIST_DATASETS:
    raise UsageError(f'{workdir} trained on {config.data.dataset!r}; the garment metrics need a '
                     f'Fashion-MNIST run ({" or ".join(FASHION_MNIST_DATASETS)}).')
  if config.data.num_channels != 1:
    raise UsageError(f'{workdir} draws {config.data.num_channels}-channel images; the garment '
                     'classifier takes grayscale (data.num_channels=1) runs only.')


def _restore(config, workdir: epath.Path, mesh, step: Optional[int]):
  try:
    step = run_dir.chosen_step(workdir, step, 'train first')
  except run_dir.MissingCheckpoint as e:
    raise UsageError(str(e)) from None
  return step, run_dir.read_checkpoint(workdir, step, config, mesh)


def _split(config, name: str, batch_size: int, num_examples: int = 0):
  """(E's view uint8 [N, R_E, R_E, 1], labels) of a split, as the evaluator reads it."""
  images, labels = [], []
  for batch in data.eval_batches(config, name, batch_size, num_examples=num_examples,
                                 process_index=0, process_count=1):
    keep = batch['mask'] > 0
    images.append(batch['image'][keep])
    labels.append(batch['label'][keep])
  return np.concatenate(images), np.concatenate(labels)


def run_metrics(workdir, *, step: Optional[int] = None, num_samples: int = 10_000,
                num_test_examples: int = 0, cache_dir: Optional[str] = None,
                classifier_settings: garment_classifier.Settings = garment_classifier.Settings()
                ) -> tuple[int, dict[str, float]]:
  """(step, flat float metrics) of a Fashion-MNIST run's checkpoint (default the newest), with
  `num_samples` G samples and as many train images for the baseline, against the first
  `num_test_examples` (0: all) test images.

  The classifier is cached in `cache_dir`, default the run's in-memory data cache folder.
  """
  if num_samples < 2:
    raise UsageError(f'--num_samples={num_samples} must be at least 2.')
  if num_test_examples == 1 or num_test_examples < 0:
    raise UsageError(f'--num_test_examples={num_test_examples} must be 0 (all) or at least 2.')
  if not os.path.isdir(os.fspath(workdir)) and '://' not in os.fspath(workdir):
    raise UsageError(f'--workdir={workdir} does not exist; point it at a training run.')
  workdir = run_dir.path(os.fspath(workdir))
  config = run_dir.load_config(workdir)
  check_fashion_mnist(config, workdir)
  mesh = parallel.make_mesh()
  config_checks.validate_eval(config, mesh.size)
  step, state = _restore(config, workdir, mesh, step)
  cache_dir = cache_dir or os.fspath(in_memory.cache_path(config, SPLIT).parent)
  classifier = garment_classifier.trained(cache_dir, classifier_settings)
  model = inference.BigBiGAN(config)
  standing = model.sampling_variables(state)
  batch_size = config.eval.batch_size
  d_view = jax.jit(lambda x: image_views.views(x, config.model.resolution)[1])

  test_images, test_labels = _split(config, SPLIT, batch_size, num_test_examples)
  train_images = _split(config, config.data.train_split, batch_size, num_examples=num_samples)[0]
  test_features = batched(lambda x: classifier.features(d_view(x)), test_images, batch_size)
  train_features = batched(lambda x: classifier.features(d_view(x)), train_images, batch_size)

  keys = jax.random.split(jax.random.PRNGKey(config.seed + 3), math.ceil(num_samples / batch_size))
  sample = lambda key: model.sample(state.g_ema_params, standing,
                                    jax.random.normal(key, (batch_size, config.model.z_dim)))
  sample_features = np.concatenate([classifier.features(sample(k)) for k in keys])[:num_samples]

  reconstruct = lambda x: model.reconstruct(state.g_ema_params, standing, state.e_ema_params,
                                            state.e_ema_batch_stats, image_views.to_float(x))
  recon = reconstruction_agreement(classifier.predict, reconstruct, test_images, test_labels,
                                   real_view=d_view, batch_size=batch_size)
  real_predicted = batched(lambda x: classifier.predict(d_view(x)), test_images, batch_size)
  shuffled = shuffled_agreement(real_predicted, test_labels, seed=config.seed)
  kid, kid_std = kernel_distance(sample_features, test_features, seed=config.seed)
  train_kid, train_kid_std = kernel_distance(train_features, test_features, seed=config.seed)
  return step, {
      'garment/fd': frechet_distance(sample_features, test_features),
      'garment/kid': kid,
      'garment/kid_std': kid_std,
      'garment/recon_agreement': recon['agreement'],
      'garment/recon_true_class': recon['true_class'],
      'garment/classifier_test_accuracy': classifier.test_accuracy,
      'garment/baseline_identity_agreement': 1.0,
      'garment/baseline_identity_true_class': float(np.mean(real_predicted == test_labels)),
      'garment/baseline_shuffled_agreement': shuffled['agreement'],
      'garment/baseline_shuffled_true_class': shuffled['true_class'],
      'garment/baseline_train_fd': frechet_distance(train_features, test_features),
      'garment/baseline_train_kid': train_kid,
      'garment/baseline_train_kid_std': train_kid_std,
      'garment/num_samples': float(len(sample_features)),
      'garment/num_test_examples': float(len(test_images)),
  }


def evaluate_run(workdir, *, step: Optional[int] = None, **kwargs
                 ) -> tuple[epath.Path, dict[str, float]]:
  """`run_metrics`, written to `<workdir>/eval_garment_<step>.json`; returns (path, metrics)."""
  step, metrics = run_metrics(workdir, step=step, **kwargs)
  path = run_dir.path(os.fspath(workdir)) / f'eval_garment_{step}.json'
  if jax.process_index() == 0:
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + '\n')
  logging.info('Wrote %s.', path)
  return path, metrics


def summary_line(metrics: dict[str, float]) -> str:
  """The G numbers in one line for a person, each beside its baseline."""
  pct = lambda key: f'{100 * metrics[key]:.1f}%'
  return (f'G: Frechet distance {metrics["garment/fd"]:.1f} to the test split in garment-'
          f'classifier features (train split: {metrics["garment/baseline_train_fd"]:.2f}); '
          f'G(E(x)) keeps the class of x {pct("garment/recon_agreement")} of the time (a shuffled '
          f'pairing: {pct("garment/baseline_shuffled_agreement")}), the true class '
          f'{pct("garment/recon_true_class")} (classifier test accuracy '
          f'{pct("garment/classifier_test_accuracy")}).')


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  run_log.quiet_library_logs(FLAGS.verbosity)
  try:
    path, metrics = evaluate_run(FLAGS.workdir, step=FLAGS.step, num_samples=FLAGS.num_samples,
                                 num_test_examples=FLAGS.num_test_examples)
  except (UsageError, config_checks.ConfigError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  print(json.dumps(metrics, indent=2, sort_keys=True))
  print(summary_line(metrics))
  print(f'Wrote {path}.')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Run directory holding config.json and checkpoints/.')
  flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate; default the newest.')
  flags.DEFINE_integer('num_samples', 10_000, 'G samples (and train images for the baseline) '
                       'compared with the test split.')
  flags.DEFINE_integer('num_test_examples', 0, 'Test images compared (the first ones); 0: all.')
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
