"""A run's directory: `config.json` and `checkpoints/`, read and written the same way by the
training loop, evaluation and export (none of which needs the loop to read a run).

The newest checkpoint that restores is used; unreadable newer ones are set aside
(`<step>.unreadable`; `-2` and on for a step set aside again), never deleted. Nothing
non-finite is ever saved, and a failed save stops the run with one sentence naming the newest
good checkpoint. config.json holds the config a run trained with; loading it fills in
settings added since at their defaults, and restoring a checkpoint fills in state fields added
since (ADDED_FIELDS).
"""

import dataclasses
import json
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from bigbigan_jax import config_checks, default_config, parallel, train_step


class TrainingStopped(Exception):
  """A run that cannot go on (divergence, a failed save, no restorable checkpoint); main prints
  the message alone."""


def path(workdir: str) -> epath.Path:
  """`workdir` as orbax wants it: absolute (local paths) or a URL such as gs://..."""
  return epath.Path(workdir if '://' in workdir else os.path.abspath(workdir))


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


# The config.


def save_config(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved beside its checkpoints; settings added since take their defaults."""
  config_path = epath.Path(workdir) / 'config.json'
  if not config_path.exists():
    raise FileNotFoundError(f'No config.json in {workdir}; point --workdir at a training run.')
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  _fill_missing(config, default_config.base_config())
  return config


def _fill_missing(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(config[key],
                                                                     ml_collections.ConfigDict):
      _fill_missing(config[key], value)


def check_resumed_config(workdir: epath.Path, config: ml_collections.ConfigDict,
                         manager: ocp.CheckpointManager) -> None:
  """A run with checkpoints may only resume with the config it saved (see allow_changes)."""
  if manager.latest_step() is None or not (workdir / 'config.json').exists():
    return
  config_checks.validate_resume(load_config(workdir), config)


# The checkpoints.


def checkpoint_manager(workdir: epath.Path,
                       config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints)
  return ocp.CheckpointManager(workdir / 'checkpoints', options=options)


def checkpoint_reader(workdir: epath.Path) -> ocp.CheckpointManager:
  """A manager of `<workdir>/checkpoints` for restoring only; it creates nothing."""
  return ocp.CheckpointManager(workdir / 'checkpoints',
                               options=ocp.CheckpointManagerOptions(create=False))


class MissingCheckpoint(ValueError):
  """The run has no checkpoint, or none for the step asked for."""


def chosen_step(workdir: epath.Path, step: Optional[int], if_none: str) -> int:
  """`step` (default the newest) after checking that `workdir` has a checkpoint for it;
  `if_none` ends the sentence for a run without checkpoints."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise MissingCheckpoint(f'No checkpoints in {workdir}/checkpoints; {if_none}.')
  if step is not None and step not in steps:
    raise MissingCheckpoint(f'No checkpoint for step {step} in {workdir}/checkpoints; have {steps}.')
  return steps[-1] if step is None else step


def read_checkpoint(workdir: epath.Path, step: int, config, mesh) -> train_step.TrainState:
  """Checkpoint `step` of `workdir`, restored without writing anything."""
  logging.info('Restoring checkpoint %d from %s/checkpoints.', step, workdir)
  manager = checkpoint_reader(workdir)
  try:
    return restore(manager, step, config, mesh)
  finally:
    manager.close()


def checkpoint_steps(workdir: epath.Path) -> list[int]:
  """The steps of the checkpoints in `workdir` (read from the folder names, without orbax)."""
  directory = workdir / 'checkpoints'
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def abstract_state(config: ml_collections.ConfigDict, mesh) -> Any:
  """Shapes, dtypes and (replicated) shardings of a TrainState, allocating nothing."""
  shapes = jax.eval_shape(lambda: train_step.init_state(config, jax.random.PRNGKey(0)))
  sharding = jax.sharding.NamedSharding(mesh, parallel.REPLICATED)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def initial_state(config: ml_collections.ConfigDict, mesh) -> train_step.TrainState:
  """The state at step 0 (seeded by config.seed), replicated over `mesh`."""
  return train_step.make_initial_state(config, mesh)(jax.random.PRNGKey(config.seed))


# TrainState fields that checkpoints of older versions lack: each restores as a copy of another.
ADDED_FIELDS = {'e_ema_params': 'e_params', 'e_ema_batch_stats': 'e_batch_stats'}


def restore(manager: ocp.CheckpointManager, step: int, config, mesh) -> train_step.TrainState:
  target = abstract_state(config, mesh)
  saved = _saved_tree(manager, step)
  _check_shapes(saved, target, step)
  missing = _missing_fields(saved)
  if not missing:
    return manager.restore(step, args=ocp.args.StandardRestore(target))
  kept = {f.name: getattr(target, f.name) for f in dataclasses.fields(target)
          if f.name not in missing}
  restored = manager.restore(step, args=ocp.args.StandardRestore(kept))
  logging.info('Checkpoint %d predates %s; filled in as copies of %s.', step, ', '.join(missing),
               ', '.join(ADDED_FIELDS[name] for name in missing))
  return train_step.TrainState(**restored, **{
      name: jax.tree.map(jnp.copy, restored[ADDED_FIELDS[name]]) for name in missing})


def _saved_tree(manager: ocp.CheckpointManager, step: int) -> Optional[dict]:
  """The checkpoint's tree of array metadata, or None where it cannot be read (the restore
  itself then reports what is wrong)."""
  try:
    saved = ocp.StandardCheckpointHandler().metadata(
        epath.Path(manager.directory) / str(step) / 'default')
  except UNREADABLE_CHECKPOINT:
    return None
  return getattr(saved, 'tree', saved)


def _missing_fields(saved: Optional[dict]) -> list[str]:
  """The ADDED_FIELDS a checkpoint's metadata tree lacks (none where it could not be read)."""
  return [] if saved is None else [name for name in ADDED_FIELDS if name not in saved]


def _check_shapes(saved: Optional[dict], target: Any, step: int) -> None:
  """A ValueError naming the first array whose saved shape differs from the config's, before
  orbax starts reading (a restore that fails inside orbax leaves its reads behind)."""
  if saved is None:
    return
  by_path = lambda tree: {jax.tree_util.keystr(path, simple=True, separator='/'): leaf
                          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  expected = by_path(target)
  for path, leaf in by_path(saved).items():
    shape = tuple(getattr(leaf, 'shape', ()) or ())
    if path in expected and shape != tuple(expected[path].shape):
      raise ValueError(f'checkpoint {step} holds {path} of shape {shape}, where this config '
                       f'makes {tuple(expected[path].shape)}')


# What orbax raises for a checkpoint with missing or damaged files: OSError, ValueError and
# KeyError for its own checks, and a bare Exception wrapping tensorstore's read errors.
UNREADABLE_CHECKPOINT = Exception


RESTORE_ATTEMPTS = 3  # A transient read error (GCS, NFS) passes within a few tries.
RETRY_SECONDS = 2.0
# Orbax's own checks of a checkpoint's files: no retry.
DAMAGED_CHECKPOINT = (FileNotFoundError, KeyError, ValueError)


def restore_or_init(config, mesh, manager: ocp.CheckpointManager) -> train_step.TrainState:
  """The newest checkpoint that restores, or the initial state when there is none.

  Every process tries each step (RESTORE_ATTEMPTS times) and the outcomes are combined: a
  checkpoint that no process can read is renamed `<step>.unreadable` (so that training can save
  that step again) with a warning, nothing is deleted; one that some processes read and others
  not stops the run with one sentence. Every process takes the same decisions.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return initial_state(config, mesh)
  problems = []
  for step in steps:
    state, problem = _try_restore(manager, step, config, mesh)
    readable = [bool(x) for x in parallel.from_every_process(problem is None)]
    if all(readable):
      _set_aside(manager, [bad for bad, _ in problems])
      return state
    if any(readable):
      failed = [i for i, ok in enumerate(readable) if not ok]
      raise TrainingStopped(
          f'Checkpoint {step} in {manager.directory} restores on some processes but not on '
          f'process{"es" if len(failed) > 1 else ""} {", ".join(map(str, failed))}'
          f'{f" ({problem})" if problem else ""}: check that every host reads the same '
          f'storage, then rerun.')
    problems.append((step, problem))
    logging.warning('Checkpoint %d in %s cannot be restored by any process (%s); trying the '
                    'one before.', step, manager.directory, problem)
  raise TrainingStopped(
      f'No checkpoint in {manager.directory} restores (step {problems[0][0]}: '
      f'{problems[0][1]}); nothing was deleted: restore a copy of the run or start a new '
      f'--workdir.')


def _try_restore(manager, step: int, config, mesh):
  """(state, None) or (None, the last error's first line) after up to RESTORE_ATTEMPTS tries.

  The processes read independently and compare outcomes after each attempt: while one
  process's read failed for a reason that may pass, every process reads again.
  """
  for attempt in range(RESTORE_ATTEMPTS):
    if attempt:
      time.sleep(RETRY_SECONDS * attempt)
    logging.info('Restoring checkpoint at step %d from %s.', step, manager.directory)
    # A reader of its own per attempt (a failed restore leaves a manager's item layout wrong),
    # reading without orbax's barriers: a process whose read failed would never reach them.
    me = jax.process_index()
    reader = ocp.CheckpointManager(manager.directory, options=ocp.CheckpointManagerOptions(
        read_only=True, save_interval_steps=0, create=False,  # Set as read_only wants: no warning.
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me})))
    state, problem, outcome = None, None, _READ
    try:
      state = restore(reader, step, config, mesh)
    except UNREADABLE_CHECKPOINT as e:
      problem = f'{type(e).__name__}: {_first_line(e)}'
      outcome = _DAMAGED if isinstance(e, DAMAGED_CHECKPOINT) else _FAILED
      logging.warning('Restoring checkpoint %d failed (attempt %d of %d): %s', step, attempt + 1,
                      RESTORE_ATTEMPTS, problem)
    finally:
      reader.close()
    outcomes = parallel.from_every_process(outcome)
    if _FAILED not in outcomes:
      break
  return state, problem


_READ, _FAILED, _DAMAGED = 0, 1, 2  # A damaged checkpoint (orbax's own checks) is not retried.


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip('.')


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  if not steps:
    return
  if jax.process_index() == 0:
    for step in steps:
      step_dir = epath.Path(manager.directory) / str(step)
      aside, copies = step_dir.parent / f'{step}.unreadable', 1
      while aside.exists():  # This step was set aside before and trained again since.
        copies += 1
        aside = step_dir.parent / f'{step}.unreadable-{copies}'
      step_dir.rename(aside)
      logging.warning('Renamed the unreadable checkpoint %s to %s.', step_dir, aside.name)
  parallel.barrier('checkpoints set aside')
  manager.reload()


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class CheckpointSaver:
  """Saves only finite states, and turns a failed save into TrainingStopped.

  `before_first_save` runs once, just before the first save (the loop writes config.json then).
  """

  def __init__(self, manager: ocp.CheckpointManager,
               before_first_save: Optional[Callable[[], None]] = None):
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


def close_quietly(manager: ocp.CheckpointManager) -> None:
  """Closes the manager; a save error was already reported (or is being raised)."""
  try:
    manager.close()
  except (OSError, ValueError, RuntimeError) as e:
    logging.warning('Closing the checkpoint manager: %s', _first_line(e))
