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


class Stopped(Exception):
  """A stop request was honoured: the newest checkpoint is saved; `state` is the run's state."""

  def __init__(self, message: str, state):
    super().__init__(message)
    self.state = state


class Interrupted(Stopped):
  """Ctrl-C: the checkpoint is saved; main prints the message and exits with 130."""


class Preempted(Stopped):
  """SIGTERM (a preempted host): the checkpoint is saved; main exits with EXIT_PREEMPTED."""


class StopRequests:
  """SIGTERM and the first Ctrl-C, recorded from the moment `install` runs (program start).

  A second Ctrl-C interrupts at once. Processes combine their requests (`Agreement`), so every
  process stops after the same step. XLA's preemption notifier is not used: it misses a signal
  that arrives before the first step of a resumed run.
  """
  PREEMPTED, USER = 1, 2

  def __init__(self):
    self.local = 0
    self.previous = {}

  def install(self) -> None:
    """Takes SIGTERM and SIGINT; again after jax.distributed.initialize, which takes SIGTERM."""
    for signum in (signal.SIGTERM, signal.SIGINT):
      if signum == signal.SIGINT and self.local == self.USER:
        continue  # The next Ctrl-C interrupts at once.
      previous = signal.signal(signum, self)
      if previous is not self:
        self.previous.setdefault(signum, previous)

  def __call__(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      self.local = self.USER
      signal.signal(signal.SIGINT, signal.default_int_handler)
    else:
      self.local = max(self.local, self.PREEMPTED)

  def uninstall(self) -> None:
    for signum, handler in self.previous.items():
      signal.signal(signum, handler)
    self.previous = {}
    self.local = 0


STOP = StopRequests()


class Agreement:
  """The stop requests of all processes, combined by a small all-reduce each step.

  `lagged()` dispatches the combination of this step's requests and returns the previous
  step's, so every process reads the same value at the same step and the steps never wait on it.
  """

  def __init__(self, mesh):
    self.multi = jax.process_count() > 1
    self.pending = None
    if self.multi:
      self.size = mesh.size
      self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(parallel.AXIS))
      self.combine = jax.jit(jax.numpy.max, out_shardings=jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec()))

  def _dispatch(self):
    flags = np.full((self.size,), STOP.local, np.int32)
    return self.combine(jax.make_array_from_callback((self.size,), self.sharding,
                                                     lambda index: flags[index]))

  def now(self) -> int:
    """Waits for every process's request (start-up, before compiling the step)."""
    if not self.multi:
      return STOP.local
    parallel.barrier('stop requests at start-up')
    return int(np.asarray(self._dispatch().addressable_data(0)))

  def lagged(self) -> int:
    if not self.multi:
      return STOP.local
    previous, self.pending = self.pending, self._dispatch()
    return 0 if previous is None else int(np.asarray(previous.addressable_data(0)))


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
        writer.write_scalars(step, {**means, **learning_rates})
        history = []
      if (step % config.image_every_steps == 0 or last) and not stopping:
        with progress.timed('grids'):
          draw_grids(state, step)
      if evaluate_fn is not None and config.eval.every_steps and not stopping and (
          step % config.eval.every_steps == 0 or last):
        with progress.timed('eval'):
          cut_by = _evaluate_unless_stopped(evaluate_fn, state, step, writer, agreement)
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


class _EvaluationStopped(Exception):

  def __init__(self, kind: int):
    super().__init__(kind)
    self.kind = kind


def _evaluate_unless_stopped(evaluate_fn, state, step: int, writer, agreement: Agreement) -> int:
  """Runs the evaluation; a stop requested meanwhile ends it between two of its batches, at the
  same batch on every process, and is returned (0: it ran to the end)."""

  def between_batches():
    kind = agreement.lagged()
    if kind:
      raise _EvaluationStopped(kind)

  try:
    evaluate_fn(state, step, writer, between_batches)
  except _EvaluationStopped as e:
    logging.warning('Evaluation at step %d cut short by a stop request.', step)
    return e.kind
  return 0


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
