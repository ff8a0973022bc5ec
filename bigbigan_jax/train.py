"""The training loop: build or restore the state, run the step, log, draw grids, checkpoint.

A run is resumable: the newest checkpoint in `<workdir>/checkpoints` that restores is used
(unreadable newer ones are set aside, never deleted) and the input pipeline continues with the
batch it would have served next. SIGTERM (preemptible TPUs) and Ctrl-C save a checkpoint at the
next step and stop. Nothing non-finite is ever saved: a diverged run stops with the newest good
checkpoint intact, and so does a run whose checkpoint save fails.
"""

import itertools
import json
import os
import signal
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from bigbigan_jax import (config_checks, data, default_config, image_views, inference, parallel,
                          run_log, train_step)
from bigbigan_jax.evaluation import grids

STANDING_STATS_BATCH = 256  # G forward passes for standing statistics run replicated.


class TrainingStopped(Exception):
  """A run that cannot go on (divergence, a failed save, no restorable checkpoint); main prints
  the message alone."""


class Interrupted(Exception):
  """Ctrl-C: the checkpoint is saved; main prints the message and exits with 130."""


class _StopSignals:
  """Records SIGTERM and the first Ctrl-C; the loop checkpoints and stops at the next step.

  A second Ctrl-C interrupts at once. With several processes, SIGTERM is left to JAX's
  preemption notifier, which makes every process agree on the step to save at (a per-process
  flag would leave the others waiting at the save's barrier), and Ctrl-C is passed on to it.
  """

  def __init__(self, multi_process: bool):
    self.multi_process = multi_process
    self.received = None
    signums = (signal.SIGINT,) if multi_process else (signal.SIGTERM, signal.SIGINT)
    self.previous = {signum: signal.signal(signum, self) for signum in signums}

  def __call__(self, signum, frame):
    del frame
    self.received = signum
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      if self.multi_process:
        os.kill(os.getpid(), signal.SIGTERM)

  def stop_at(self, step: int, manager: ocp.CheckpointManager) -> bool:
    """Whether to checkpoint and stop after `step` (called at every step by every process)."""
    if self.multi_process:
      return manager.reached_preemption(step)
    return self.received is not None or manager.reached_preemption(step)

  def restore_handlers(self) -> None:
    for signum, handler in self.previous.items():
      signal.signal(signum, handler)


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


# What orbax raises for a checkpoint with missing or damaged files: OSError, ValueError and
# KeyError for its own checks, and a bare Exception wrapping tensorstore's read errors.
UNREADABLE_CHECKPOINT = Exception


def restore_or_init(config, mesh, manager: ocp.CheckpointManager) -> train_step.TrainState:
  """The newest checkpoint that restores, or the initial state when there is none.

  Newer checkpoints that fail to restore are renamed `<step>.unreadable` (so that training can
  save that step again) with a warning; nothing is deleted.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return initial_state(config, mesh)
  problems = []
  for step in steps:
    logging.info('Restoring checkpoint at step %d from %s.', step, manager.directory)
    # A reader of its own per attempt: a failed restore leaves a manager's item layout wrong.
    reader = ocp.CheckpointManager(manager.directory,
                                   options=ocp.CheckpointManagerOptions(read_only=True))
    try:
      state = restore(reader, step, config, mesh)
    except UNREADABLE_CHECKPOINT as e:
      problems.append((step, _first_line(e)))
      logging.warning('Checkpoint %d in %s cannot be restored (%s: %s); trying the one before.',
                      step, manager.directory, type(e).__name__, _first_line(e))
      continue
    finally:
      reader.close()
    _set_aside(manager, [bad for bad, _ in problems])
    return state
  raise TrainingStopped(
      f'No checkpoint in {manager.directory} restores (step {problems[0][0]}: '
      f'{problems[0][1]}); nothing was deleted: restore a copy of the run or start a new '
      f'--workdir.')


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip('.')


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  if not steps:
    return
  if jax.process_index() == 0:
    for step in steps:
      path = epath.Path(manager.directory) / str(step)
      path.rename(path.parent / f'{step}.unreadable')
      logging.warning('Renamed the unreadable checkpoint %s to %s.unreadable.', path, step)
  multihost_utils.sync_global_devices('checkpoints set aside')
  manager.reload()


def save_config(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))


def prepare_workdir(workdir: epath.Path) -> None:
  """Creates the workdir, or says in one sentence why it cannot be used."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f'.write_test_{jax.process_index()}'  # One per process of a pod.
    probe.write_text('')
    probe.unlink()
  except (FileExistsError, NotADirectoryError) as e:
    raise config_checks.ConfigError(
        f'--workdir={workdir} cannot be a directory ({e.strerror}: {e.filename}); '
        f'pass a directory path.') from None
  except PermissionError as e:
    raise config_checks.ConfigError(
        f'--workdir={workdir} is not writable ({e.strerror}: {e.filename}); pass a '
        f'directory you can write to.') from None


def check_resumed_config(workdir: epath.Path, config: ml_collections.ConfigDict,
                         manager: ocp.CheckpointManager) -> None:
  """A run with checkpoints may only resume with the config it saved (see allow_changes)."""
  if manager.latest_step() is None or not (workdir / 'config.json').exists():
    return
  config_checks.validate_resume(load_config(workdir), config)


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class _Checkpoints:
  """Saves only finite states, and turns a failed save into TrainingStopped."""

  def __init__(self, manager: ocp.CheckpointManager, before_first_save: Callable[[], None]):
    self.manager = manager
    self.last_good = manager.latest_step()
    self.pending = None  # Step of a save that may still be running.
    self.before_first_save = before_first_save

  def save(self, step: int, state: train_step.TrainState) -> None:
    if not bool(_all_finite(state)):
      raise self.diverged(f'the state at step {step} holds non-finite values')
    self.check_for_errors()
    if self.before_first_save is not None:
      self.before_first_save()
      self.before_first_save = None
    try:
      self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    except OSError as e:
      raise self.failed(step, e) from None
    self.pending = step

  def check_for_errors(self, wait: bool = False) -> None:
    """Raises TrainingStopped if a background save failed; `wait` blocks until saves end."""
    try:
      if wait:
        self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except (OSError, ValueError, RuntimeError) as e:
      raise self.failed(self.pending, e) from None
    if self.pending is not None and not self.manager.is_saving_in_progress():
      self.last_good, self.pending = self.pending, None

  def diverged(self, what: str) -> TrainingStopped:
    return TrainingStopped(
        f'Training diverged: {what}; nothing non-finite was saved and {self.newest()}: resume '
        f'from it with lower learning rates (e.g. --config.optim.d_lr=... '
        f'--config.allow_changes=optim).')

  def failed(self, step, error: BaseException) -> TrainingStopped:
    return TrainingStopped(
        f'Saving the checkpoint at step {step} failed ({_first_line(error)}); {self.newest()}: '
        f'fix the cause (e.g. free disk space) and rerun the same command to resume.')

  def newest(self) -> str:
    if self.last_good is None:
      return f'no earlier checkpoint exists in {self.manager.directory}'
    return f'the newest good checkpoint is step {self.last_good} in {self.manager.directory}'


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
    """The grid's real images as D sees them (2x2-pooled when E's resolution is twice D's)."""
    return image_views.d_view(self.real, self.config.model.resolution)


def _mean_metrics(history: list[tuple[int, dict[str, jax.Array]]]) -> dict[str, float]:
  """Means over the steps since the last log; a non-finite value stops the run."""
  fetched = jax.device_get([metrics for _, metrics in history])
  for (step, _), metrics in zip(history, fetched):
    bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
      return step, bad
  return None, {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       evaluate_fn: Optional[Any] = None) -> train_step.TrainState:
  """Trains until `config.num_train_steps` E/G updates; returns the final state.

  `evaluate_fn(state, step, writer)`, if given, runs every `config.eval.every_steps`.
  Raises TrainingStopped (divergence, failed save, no restorable checkpoint), Interrupted
  (Ctrl-C, after saving) and ConfigError; config.json is written just before the first
  checkpoint trained with this config, so a failed or diverged attempt leaves it as it was.
  """
  workdir = epath.Path(workdir if '://' in workdir else os.path.abspath(workdir))  # orbax wants absolute.
  mesh = parallel.make_mesh()
  config_checks.validate(config, mesh.size, jax.process_count())
  prepare_workdir(workdir)
  manager = checkpoint_manager(workdir, config)
  try:
    return _train(config, workdir, mesh, manager, evaluate_fn)
  finally:
    _close_quietly(manager)


def _train(config, workdir: epath.Path, mesh, manager: ocp.CheckpointManager,
           evaluate_fn) -> train_step.TrainState:
  check_resumed_config(workdir, config, manager)
  state = restore_or_init(config, mesh, manager)
  start = int(state.step)
  if start >= config.num_train_steps:
    logging.info('Already trained %d of %d steps; nothing to do.', start, config.num_train_steps)
    return state

  writer, progress = run_log.writer_and_progress(workdir, config.num_train_steps,
                                                 log_only=jax.process_index() > 0)
  step_fn = train_step.make_train_step(config, mesh)
  device_batches = data.train_batches(config, mesh, start_step=start)
  first_batch = next(device_batches)
  grid_images = multihost_utils.process_allgather(first_batch['image'][0, :config.num_grid_images],
                                                  tiled=True)
  draw_grids = GridWriter(config, workdir, writer, np.asarray(image_views.to_float(grid_images)))
  step_fn = compile_on_every_process(step_fn, state, first_batch)
  device_batches = itertools.chain([first_batch], device_batches)

  # The config is the run's once a checkpoint trained with it is written.
  checkpoints = _Checkpoints(
      manager, lambda: jax.process_index() == 0 and save_config(workdir, config))
  learning_rates = {'lr_d': config.optim.d_lr, 'lr_g': config.optim.g_lr,
                    'lr_e': config.optim.g_lr * config.optim.e_lr_mult}
  if start == 0:
    writer.write_hparams({k: v for k, v in _flat(config).items()})
  history = []
  logging.info('Training from step %d to %d on %d devices.', start, config.num_train_steps, mesh.size)
  stop = _StopSignals(multi_process=jax.process_count() > 1)
  try:
    for step in range(start + 1, config.num_train_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = step_fn(state, next(device_batches))
      history.append((step, metrics))
      progress(step)
      checkpoints.check_for_errors()
      last = step == config.num_train_steps
      if step % config.log_every_steps == 0 or last:
        bad_step, means = _mean_metrics(history)
        if bad_step is not None:
          bad = ', '.join(f'{k}={v}' for k, v in sorted(means.items())[:3])
          raise checkpoints.diverged(f'{bad} at step {bad_step}')
        writer.write_scalars(step, {**means, **learning_rates})
        history = []
      if step % config.image_every_steps == 0 or last:
        with progress.timed('grids'):
          draw_grids(state, step)
      if evaluate_fn is not None and config.eval.every_steps and (
          step % config.eval.every_steps == 0 or last):
        with progress.timed('eval'):
          evaluate_fn(state, step, writer)
      preempted = stop.stop_at(step, manager)
      if step % config.checkpoint_every_steps == 0 or last or preempted:
        checkpoints.save(step, state)
      if preempted:
        checkpoints.check_for_errors(wait=True)
        if stop.received == signal.SIGINT:
          raise Interrupted(f'Interrupted at step {step}; the checkpoint is saved in '
                            f'{manager.directory}: rerun the same command to resume.')
        logging.warning('Stopping at step %d on a preemption signal; checkpoint saved.', step)
        break
    checkpoints.check_for_errors(wait=True)
  finally:
    stop.restore_handlers()
    writer.flush()
  return state


def compile_on_every_process(step_fn, state, batch):
  """The step compiled before its first call. With several processes none starts training
  before all have compiled: a host still compiling would stall the first collective."""
  start = time.time()
  compiled = step_fn.lower(state, batch).compile()
  logging.info('Compiled the train step in %.0f s.', time.time() - start)
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes('train step compiled')
  return compiled


def _close_quietly(manager: ocp.CheckpointManager) -> None:
  """Closes the manager; a save error was already reported (or is being raised)."""
  try:
    manager.close()
  except (OSError, ValueError, RuntimeError) as e:
    logging.warning('Closing the checkpoint manager: %s', _first_line(e))


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
