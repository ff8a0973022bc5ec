"""The training loop: build or restore the state, run the step, log, draw grids, checkpoint.

A run is resumable: the run directory (run_dir) gives the newest checkpoint that restores, and
the input pipeline continues with the batch it would have served next. SIGTERM (preemptible
TPUs) and Ctrl-C save a checkpoint at the next step and stop. Nothing non-finite is ever saved:
a diverged run stops with the newest good checkpoint intact, and so does a run whose checkpoint
save fails.
"""

import itertools
import os
import signal
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from bigbigan_jax import config_checks, data, image_views, parallel, run_dir, run_log, train_step
from bigbigan_jax.evaluation import grids


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
  (Ctrl-C, after saving) and ConfigError; config.json is written just before the first
  checkpoint trained with this config, so a failed or diverged attempt leaves it as it was.
  """
  workdir = run_dir.path(workdir)
  mesh = parallel.make_mesh()
  config_checks.validate(config, mesh.size, jax.process_count())
  run_dir.prepare_workdir(workdir)
  manager = run_dir.checkpoint_manager(workdir, config)
  try:
    return _train(config, workdir, mesh, manager, evaluate_fn)
  finally:
    run_dir.close_quietly(manager)


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
  grid_images = multihost_utils.process_allgather(first_batch['image'][0, :config.num_grid_images],
                                                  tiled=True)
  draw_grids = grids.GridWriter(config, workdir, writer,
                                np.asarray(image_views.to_float(grid_images)))
  step_fn = compile_on_every_process(step_fn, state, first_batch)
  device_batches = itertools.chain([first_batch], device_batches)

  # The config is the run's once a checkpoint trained with it is written.
  checkpoints = run_dir.CheckpointSaver(
      manager, lambda: jax.process_index() == 0 and run_dir.save_config(workdir, config))
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


def _flat(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return out
