"""The training loop: build or restore the state, run the step, log, draw grids, checkpoint.

A run is resumable: the run directory (run_dir) gives the newest checkpoint that restores, and
the input pipeline continues with the batch it would have served next. SIGTERM (preemptible
TPUs) and Ctrl-C, on any process and at any moment, make every process save a checkpoint at the
same step (one or two steps later, or at the next batch of an evaluation in progress) and stop.
Nothing non-finite is ever saved:
a diverged run stops with the newest good checkpoint intact, and so does a run whose checkpoint
save fails.
"""

import itertools
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from bigbigan_jax import (config_checks, data, e_lr_schedule, image_views, parallel, run_dir,
                          run_log, stop_requests, train_step)
from bigbigan_jax.evaluation import grids
from bigbigan_jax.stop_requests import STOP, Agreement, StopRequests


class Stopped(Exception):
  """A stop request was honoured: the newest checkpoint is saved; `state` is the run's state."""

  def __init__(self, message: str, state):
    super().__init__(message)
    self.state = state


class Interrupted(Stopped):
  """Ctrl-C: the checkpoint is saved; main prints the message and exits with 130."""


class Preempted(Stopped):
  """SIGTERM (a preempted host): the checkpoint is saved; main exits with EXIT_PREEMPTED."""


def _stopped(kind: int, step: int, directory, state, saved: bool = True) -> Stopped:
  where = f'the checkpoint is saved in {directory}'
  if not saved:
    where = (f'no step was trained, the newest checkpoint in {directory} is kept' if step else
             'before the first step, nothing was saved')
  if kind == StopRequests.USER:
    return Interrupted(f'Interrupted at step {step}; {where}: rerun the same command to resume.',
                       state)
  return Preempted(f'Stopped at step {step} on a preemption signal; {where}: rerun the same '
                   'command to resume.', state)


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
  Raises run_dir.TrainingStopped (divergence, failed save, no restorable checkpoint), Interrupted
  (Ctrl-C) or Preempted (SIGTERM), every process after the same step and its save, and
  ConfigError; config.json is written just before the first
  checkpoint trained with this config, so a failed or diverged attempt leaves it as it was.
  """
  workdir = run_dir.path(workdir)
  mesh = parallel.make_mesh()
  config_checks.validate(config, mesh.size, jax.process_count())
  run_dir.prepare_workdir(workdir)
  manager = run_dir.checkpoint_manager(workdir, config)
  owner = not STOP.previous  # Else training_command installed it at program start.
  STOP.install()
  try:
    return _train(config, workdir, mesh, manager, evaluate_fn)
  finally:
    run_dir.close_quietly(manager)
    if owner:
      STOP.uninstall()


def _train(config, workdir: epath.Path, mesh, manager: ocp.CheckpointManager,
           evaluate_fn) -> train_step.TrainState:
  run_dir.check_resumed_config(workdir, config, manager)
  state = run_dir.restore_or_init(config, mesh, manager)
  start = int(state.step)
  if start >= config.num_train_steps:
    logging.info('Already trained %d of %d steps; nothing to do.', start, config.num_train_steps)
    return state

  writer, progress = run_log.writer_and_progress(workdir, config.num_train_steps,
                                                 log_only=jax.process_index() > 0)
  step_fn = train_step.make_train_step(config, mesh)
  device_batches = data.train_batches(config, mesh, start_step=start)
  first_batch = next(device_batches)
  agreement = Agreement(mesh)
  kind = agreement.now()  # A stop requested during start-up ends the run before compiling.
  if kind:
    writer.flush()
    raise _stopped(kind, start, manager.directory, state, saved=False)
  step_fn = compile_on_every_process(step_fn, state, first_batch)
  grid_images = multihost_utils.process_allgather(first_batch['image'][0, :config.num_grid_images],
                                                  tiled=True)
  draw_grids = grids.GridWriter(config, workdir, writer,
                                np.asarray(image_views.to_float(grid_images)))
  device_batches = itertools.chain([first_batch], device_batches)

  # The config is the run's once a checkpoint trained with it is written.
  checkpoints = run_dir.CheckpointSaver(
      manager, lambda: jax.process_index() == 0 and run_dir.save_config(workdir, config))
  o = config.optim
  e_schedule = e_lr_schedule.parse(o.e_lr_schedule)

  def learning_rates(step):  # Those of update number `step`.
    e_mult = float(e_lr_schedule.multiplier(o.e_lr_mult, e_schedule, step - 1))
    return {'lr_d': o.d_lr, 'lr_g': o.g_lr, 'lr_e': o.g_lr * e_mult}

  if start == 0:
    writer.write_hparams({k: v for k, v in _flat(config).items()})
  history = []
  logging.info('Training from step %d to %d on %d devices.', start, config.num_train_steps, mesh.size)
  try:
    for step in range(start + 1, config.num_train_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = step_fn(state, next(device_batches))
      kind = agreement.lagged()
      history.append((step, metrics))
      progress(step)
      checkpoints.check_for_errors()
      last = step == config.num_train_steps
      stopping = kind and not last  # At the last step the run finishes as usual.
      if step % config.log_every_steps == 0 or last:
        bad_step, means = _mean_metrics(history)
        if bad_step is not None:
          bad = ', '.join(f'{k}={v}' for k, v in sorted(means.items())[:3])
          raise checkpoints.diverged(f'{bad} at step {bad_step}')
        writer.write_scalars(step, {**means, **learning_rates(step)})
        history = []
      if (step % config.image_every_steps == 0 or last) and not stopping:
        with progress.timed('grids'):
          draw_grids(state, step)
      if evaluate_fn is not None and config.eval.every_steps and not stopping and (
          step % config.eval.every_steps == 0 or last):
        with progress.timed('eval'):
          cut_by = stop_requests.evaluate_unless_stopped(evaluate_fn, state, step, writer, agreement)
        if cut_by:  # The step's checkpoint is saved and the run stops, at the last step too.
          kind, stopping = cut_by, True
      if step % config.checkpoint_every_steps == 0 or last or stopping:
        checkpoints.save(step, state)
      if stopping:
        checkpoints.check_for_errors(wait=True)
        logging.warning('Stopping at step %d on a stop request; checkpoint saved.', step)
        raise _stopped(kind, step, manager.directory, state)
    checkpoints.check_for_errors(wait=True)
  finally:
    writer.flush()
  return state


def compile_on_every_process(step_fn, state, batch):
  """The step compiled before its first call. With several processes none starts training
  before all have compiled: a host still compiling would stall the first collective."""
  start = time.time()
  compiled = step_fn.lower(state, batch).compile()
  logging.info('Compiled the train step in %.0f s.', time.time() - start)
  parallel.barrier('train step compiled')
  return compiled


def _flat(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return out
