"""The training loop: build or restore the state, run the step, log, draw grids, checkpoint.

A run is resumable: the newest checkpoint in `<workdir>/checkpoints` is restored and the input
pipeline continues with the batch it would have served next. SIGTERM (preemptible TPUs) saves
a checkpoint at the next step and stops.
"""

import itertools
import json
import os
import signal
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
from jax.experimental import multihost_utils

from bigbigan_jax import (config_checks, default_config, inference, input_pipeline, parallel,
                          train_step)
from bigbigan_jax import image_views
from bigbigan_jax.evaluation import grids

STANDING_STATS_BATCH = 256  # G forward passes for standing statistics run replicated.


class _StopFlag:
  """Set by SIGTERM; the loop checkpoints and stops at the next step."""

  def __init__(self):
    self.requested = False

  def __call__(self, signum, frame):
    del signum, frame
    self.requested = True


def checkpoint_manager(workdir: epath.Path, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints)
  return ocp.CheckpointManager(workdir / 'checkpoints', options=options)


def abstract_state(config: ml_collections.ConfigDict, mesh) -> Any:
  """Shapes, dtypes and (replicated) shardings of a TrainState, allocating nothing."""
  shapes = jax.eval_shape(lambda: train_step.init_state(config, jax.random.PRNGKey(0)))
  sharding = jax.sharding.NamedSharding(mesh, parallel.REPLICATED)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def initial_state(config: ml_collections.ConfigDict, mesh) -> train_step.TrainState:
  """The state at step 0 (seeded by config.seed), replicated over `mesh`."""
  init = jax.jit(lambda key: train_step.init_state(config, key),
                 out_shardings=jax.sharding.NamedSharding(mesh, parallel.REPLICATED))
  return init(jax.random.PRNGKey(config.seed))


def restore(manager: ocp.CheckpointManager, step: int, config, mesh) -> train_step.TrainState:
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state(config, mesh)))


def restore_or_init(config, mesh, manager: ocp.CheckpointManager) -> train_step.TrainState:
  latest = manager.latest_step()
  if latest is None:
    return initial_state(config, mesh)
  logging.info('Restoring checkpoint at step %d from %s.', latest, manager.directory)
  return restore(manager, latest, config, mesh)


def save_config(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))


class GridWriter:
  """Sample grids of the EMA generator (fixed z) and reconstruction grids of fixed images."""

  def __init__(self, config, workdir: epath.Path, writer, real_images: np.ndarray):
    self.config, self.writer = config, writer
    self.image_dir = workdir / 'images'
    self.model = inference.BigBiGAN(config)
    n = config.num_grid_images
    self.z = jax.random.normal(jax.random.PRNGKey(config.seed + 1), (n, config.model.z_dim))
    # Every process must feed the same images to the replicated computation.
    self.real = np.asarray(multihost_utils.broadcast_one_to_all(real_images[:n]))

  def __call__(self, state: train_step.TrainState, step: int) -> None:
    standing = self.model.sampling_variables(
        state, jax.random.PRNGKey(self.config.seed + 2),
        num_batches=self.config.standing_stats_batches,
        batch_size=min(self.config.batch_size, STANDING_STATS_BATCH))
    samples = np.asarray(self.model.sample(state.g_ema_params, standing, self.z))
    recon = np.asarray(self.model.reconstruct(state.g_ema_params, standing, state.e_params,
                                              state.e_batch_stats, self.real))
    real_d = np.asarray(self.real_at_d_resolution())
    grid_s = grids.image_grid(samples)
    grid_r = grids.side_by_side(real_d, recon)
    self.writer.write_images(step, {'samples': grid_s[None], 'reconstructions': grid_r[None]})
    if jax.process_index() == 0:
      grids.save_png(self.image_dir / f'samples_{step:07d}.png', grid_s)
      grids.save_png(self.image_dir / f'reconstructions_{step:07d}.png', grid_r)

  def real_at_d_resolution(self):
    r = self.config.model.resolution
    return jax.image.resize(self.real, (self.real.shape[0], r, r, self.real.shape[-1]), 'linear')


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
  stacked = jax.device_get(history)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       evaluate_fn: Optional[Any] = None) -> train_step.TrainState:
  """Trains until `config.num_train_steps` E/G updates; returns the final state.

  `evaluate_fn(state, step, writer)`, if given, runs every `config.eval.every_steps`.
  """
  workdir = epath.Path(workdir if '://' in workdir else os.path.abspath(workdir))  # orbax wants absolute.
  mesh = parallel.make_mesh()
  config_checks.validate(config, mesh.size, jax.process_count())
  if jax.process_index() == 0:
    save_config(workdir, config)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  manager = checkpoint_manager(workdir, config)
  state = restore_or_init(config, mesh, manager)
  start = int(state.step)
  if start >= config.num_train_steps:
    logging.info('Already trained %d of %d steps; nothing to do.', start, config.num_train_steps)
    manager.close()
    return state

  step_fn = train_step.make_train_step(config, mesh)
  batches = input_pipeline.train_iterator(config, start_step=start)
  first = next(batches)
  draw_grids = GridWriter(config, workdir, writer, np.asarray(image_views.to_float(first['image'][0])))
  device_batches = parallel.prefetch_to_mesh(mesh, itertools.chain([first], batches), config.data.prefetch)

  stop = _StopFlag()
  previous_handler = signal.signal(signal.SIGTERM, stop)
  progress = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer)
  learning_rates = {'lr_d': config.optim.d_lr, 'lr_g': config.optim.g_lr,
                    'lr_e': config.optim.g_lr * config.optim.e_lr_mult}
  if start == 0:
    writer.write_hparams({k: v for k, v in _flat(config).items()})
  history = []
  logging.info('Training from step %d to %d on %d devices.', start, config.num_train_steps, mesh.size)
  try:
    for step in range(start + 1, config.num_train_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = step_fn(state, next(device_batches))
      history.append(metrics)
      progress(step)
      last = step == config.num_train_steps
      if step % config.log_every_steps == 0 or last:
        writer.write_scalars(step, {**_mean_metrics(history), **learning_rates})
        history = []
      if step % config.image_every_steps == 0 or last:
        with progress.timed('grids'):
          draw_grids(state, step)
      if evaluate_fn is not None and config.eval.every_steps and (
          step % config.eval.every_steps == 0 or last):
        with progress.timed('eval'):
          evaluate_fn(state, step, writer)
      preempted = stop.requested or manager.reached_preemption(step)
      if step % config.checkpoint_every_steps == 0 or last or preempted:
        manager.save(step, args=ocp.args.StandardSave(state), force=True)
      if preempted:
        logging.warning('Stopping at step %d on a preemption signal; checkpoint saved.', step)
        break
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
    manager.wait_until_finished()
    manager.close()
    writer.flush()
  return state


def _flat(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return out


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved beside its checkpoints; settings added since take their defaults."""
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'No config.json in {workdir}; point --workdir at a training run.')
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  _fill_missing(config, default_config.base_config())
  return config


def _fill_missing(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(config[key],
                                                                     ml_collections.ConfigDict):
      _fill_missing(config[key], value)
