"""Evaluation of a training state: linear probe, k-NN, FID/IS and image grids.

Representation metrics use one E feature, `config.eval.feature` (avepool by default, the
paper's linear-evaluation feature), for both the linear probe and k-NN. Features of the train
split (probe fit, weight decay chosen on a held-out slice of it, k-NN neighbours) and of
`config.data.eval_split` (scored) are streamed to `<workdir>/eval_features/` (local or gs://),
each process writing its own share, and deleted afterwards; process 0 alone reads them for the
probe and k-NN (so the cost does not grow with the process count) and shares the metrics.

The training loop passes a stop check, called between batches, epochs and k-NN chunks: a stop
requested during an evaluation ends it there (its features are deleted, nothing is written).

FID/IS use G's EMA weights with standing statistics and the FID Inception-v3 from a local
weights file (`config.eval.inception_weights` or $BIGBIGAN_INCEPTION_WEIGHTS); nothing is
downloaded. FID compares `config.eval.num_fid_samples` samples with the statistics of the
whole train split at G's resolution, computed once and cached in the workdir.
"""

import functools
import math
import os
import re
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import NamedSharding

from bigbigan_jax import config_checks, data, image_views, inference, parallel, stop_requests
from bigbigan_jax.evaluation import features as features_lib
from bigbigan_jax.evaluation import feature_store, frechet, grids, inception, knn, linear_probe

INCEPTION_ENV = 'BIGBIGAN_INCEPTION_WEIGHTS'
KNN_KS = (1, 25)
FEATURES_DIR = 'eval_features'

Extract = Callable[..., features_lib.Features]
Check = Callable[[], None]


def _no_check() -> None:
  pass


class Evaluator:
  """`evaluator(state, step, writer=None, between_batches=None)` runs every evaluation and
  returns flat float metrics; `between_batches()` may raise to end it early.

  Construction checks what evaluation needs of the config (config_checks.ConfigError, on any
  device count) and loads the Inception weights.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike):
    self.config = config
    self.workdir = epath.Path(workdir)
    self.mesh = parallel.make_mesh()
    config_checks.validate_eval(config, self.mesh.size)
    self.extractor = features_lib.FeatureExtractor(config, self.mesh)
    self.model = inference.BigBiGAN(config)
    self.inception = self._inception_variables()
    self._net = inception.InceptionV3()
    replicated = NamedSharding(self.mesh, parallel.REPLICATED)
    self._real_inception = jax.jit(self._real_inception_impl, out_shardings=replicated)
    self._fake_inception = jax.jit(self._fake_inception_impl, out_shardings=replicated)

  def __call__(self, state, step: int, writer: Optional[Any] = None,
               between_batches: Optional[Check] = None) -> dict[str, float]:
    check = between_batches or _no_check
    encoder = functools.partial(self.extractor.encoder, state.e_ema_params,
                                state.e_ema_batch_stats)
    metrics = self._representation(str(step), encoder, check)
    standing = self.model.sampling_variables(state)
    if self.inception is not None:
      metrics.update(_timed('FID/IS', self._fid_and_is, state.g_ema_params, standing, check))
    self._grids(state, standing, step, writer)
    if writer is not None:
      writer.write_scalars(step, metrics)
      writer.flush()
    return metrics

  def raw_pixels(self) -> dict[str, float]:
    """Probe and k-NN metrics of the flattened pixels of D's view (the baseline row)."""
    return self._representation('raw_pixels', self.extractor.raw_pixels)

  def _representation(self, tag: str, extract: Extract, check: Check = _no_check
                      ) -> dict[str, float]:
    """Each process writes its share of the features; process 0 reads them all once for the
    probe and k-NN while the others wait, and every process returns its metrics."""
    c = self.config
    root = self.workdir / FEATURES_DIR / tag
    directory = root / f'process_{jax.process_index()}'
    directory.rmtree(missing_ok=True)  # Left by an interrupted evaluation.
    try:
      _timed(f'{c.data.train_split} features', extract, c.data.train_split, directory / 'train',
             num_examples=c.eval.num_train_examples, between_batches=check)
      _timed(f'{c.data.eval_split} features', extract, c.data.eval_split, directory / 'test',
             num_examples=c.eval.num_eval_examples, between_batches=check)
      parallel.barrier('evaluation features written')
      every = [root / f'process_{i}' for i in range(jax.process_count())]

      def probe_and_knn(between):
        metrics = _probe_and_knn(features_lib.Features.open_all([d / 'train' for d in every]),
                                 features_lib.Features.open_all([d / 'test' for d in every]), c,
                                 between)
        return {name: float(value) for name, value in metrics.items()}

      return stop_requests.on_process_zero(probe_and_knn, check)
    finally:  # Process 0 has read the others' features once on_process_zero has returned.
      directory.rmtree(missing_ok=True)
      feature_store.remove_empty_directories(root, root.parent)

  def _inception_variables(self) -> Optional[dict[str, Any]]:
    if not self.config.eval.num_fid_samples:
      logging.info('FID/IS skipped: config.eval.num_fid_samples is 0.')
      return None
    path = self.config.eval.inception_weights or os.environ.get(INCEPTION_ENV, '')
    if not path:
      logging.info('FID/IS skipped: no Inception weights; set --config.eval.inception_weights '
                   'or $%s to a .npz made by bigbigan_jax.evaluation.convert_inception_weights.',
                   INCEPTION_ENV)
      return None
    return parallel.replicate(self.mesh, inception.load_params(path))

  def _real_inception_impl(self, variables, batch):
    _, x_d = image_views.views(batch['image'], self.config.model.resolution)
    return self._net.apply(variables, x_d)[0], batch['mask']

  def _fake_inception_impl(self, g_params, standing, variables, key):
    z = jax.random.normal(key, (self.config.eval.batch_size, self.config.model.z_dim))
    z = jax.lax.with_sharding_constraint(z, NamedSharding(self.mesh, parallel.EVAL_BATCH))
    return self._net.apply(variables, self.model.sample(g_params, standing, z))

  def _fid_and_is(self, g_params, standing, check: Check) -> dict[str, float]:
    count = self.config.eval.num_fid_samples
    stats, logits = frechet.RunningStatistics(), []
    keys = jax.random.split(jax.random.PRNGKey(self.config.seed + 3),
                            math.ceil(count / self.config.eval.batch_size))
    for key in keys:
      pool, batch_logits = jax.device_get(
          self._fake_inception(g_params, standing, self.inception, key))
      keep = min(len(pool), count - stats.count)
      stats.update(pool[:keep])
      logits.append(batch_logits[:keep])
      check()
    score, score_std = frechet.inception_score(np.concatenate(logits))
    fid = frechet.frechet_distance(*stats.result(), *self._reference_statistics(check))
    return {'fid': fid, 'inception_score': score, 'inception_score_std': score_std}

  def _reference_statistics(self, check: Check) -> tuple[np.ndarray, np.ndarray]:
    """Inception statistics of the whole train split at G's resolution, cached."""
    split = self.config.data.train_split
    path = self.workdir / f'fid_reference_{re.sub(r"[^A-Za-z0-9_.-]", "_", split)}.npz'
    if path.exists():
      return frechet.load_statistics(path)
    logging.info('Computing FID reference statistics of %s into %s.', split, path)
    batches = data.eval_batches(self.config, split, self.config.eval.batch_size)
    stats = frechet.RunningStatistics()
    for batch in parallel.prefetch_to_mesh(self.mesh, batches, self.config.data.prefetch,
                                           parallel.EVAL_BATCH):
      pool, mask = jax.device_get(self._real_inception(self.inception, batch))
      stats.update(pool[mask > 0])
      check()
    mu, sigma = stats.result()
    if jax.process_index() == 0:
      frechet.save_statistics(path, mu, sigma)
    return mu, sigma

  @functools.cached_property
  def _grid_images(self) -> dict[str, np.ndarray]:
    """The first `num_grid_images` eval images, the same on every process."""
    n = self.config.num_grid_images
    return next(data.eval_batches(self.config, self.config.data.eval_split, n,
                                  num_examples=n, process_index=0, process_count=1))

  def _grids(self, state, standing, step: int, writer: Optional[Any]) -> None:
    """Sample, reconstruction and latent-interpolation grids of EMA G (E's z_mean)."""
    n, z_dim = self.config.num_grid_images, self.config.model.z_dim
    rows = math.isqrt(n)
    real_e, real_d = map(np.asarray, image_views.views(self._grid_images['image'],
                                                      self.config.model.resolution))
    z = jax.random.normal(jax.random.PRNGKey(self.config.seed + 1), (n, z_dim))
    samples = self.model.sample(state.g_ema_params, standing, z)
    recon = self.model.reconstruct(state.g_ema_params, standing, state.e_ema_params,
                                   state.e_ema_batch_stats, real_e)
    z_real = np.asarray(
        self.model.encode(state.e_ema_params, state.e_ema_batch_stats, real_e)['z_mean'])
    path = grids.interpolation_grid(z_real[:rows], np.roll(z_real, -rows, axis=0)[:rows], rows)
    interpolations = self.model.sample(state.g_ema_params, standing, path)
    images = {
        'eval_samples': grids.image_grid(np.asarray(samples)),
        'eval_reconstructions': grids.side_by_side(real_d, np.asarray(recon)),
        'eval_interpolations': grids.image_grid(np.asarray(interpolations), ncols=rows),
    }
    if jax.process_index() == 0:
      for name, grid in images.items():
        grids.save_png(self.workdir / 'images' / f'{name}_{step:07d}.png', grid)
    if writer is not None:
      writer.write_images(step, {name: grid[None] for name, grid in images.items()})


def _probe_and_knn(train_features: features_lib.Features, test_features: features_lib.Features,
                   config: ml_collections.ConfigDict, check: Check) -> dict[str, float]:
  num_classes = max(train_features.num_classes, test_features.num_classes)
  train_store, test_store = train_features.store, test_features.store
  probe = _timed('linear probe', linear_probe.train_and_evaluate, train_store, test_store,
                 num_classes=num_classes, epochs=config.eval.probe_epochs, seed=config.seed,
                 between_epochs=check)
  metrics = {'probe/top1': probe['top1'], 'probe/top5': probe['top5'],
             'probe/weight_decay': probe['weight_decay'],
             'num_train_examples': float(len(train_store)),
             'num_eval_examples': float(len(test_store))}
  for metric in knn.METRICS:
    accuracy = _timed(f'{metric} k-NN', knn.knn_accuracy_from_stores, train_store, test_store,
                      num_classes=num_classes, ks=KNN_KS, metric=metric, between_chunks=check)
    metrics.update({f'knn/{metric}_k{k}': value for k, value in accuracy.items()})
  return metrics


def _timed(what: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
  start = time.time()
  result = fn(*args, **kwargs)
  logging.info('Evaluation: %s took %.1f s.', what, time.time() - start)
  return result


def periodic_evaluator(config: ml_collections.ConfigDict,
                       workdir: str | os.PathLike) -> Optional[Evaluator]:
  """The training loop's `evaluate_fn`, or None when eval.every_steps is 0."""
  return Evaluator(config, workdir) if config.eval.every_steps else None
