"""A run's directory on its own: config.json, restoring with fallback and set-aside, and the
checkpoint saver's refusals (what the training program then prints is in test_reliability)."""

import errno
import fcntl
import json
import logging
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bigbigan_jax import default_config, parallel, run_dir
from bigbigan_jax.datasets import sources
from conftest import assert_trees_differ, assert_trees_equal
from test_reliability import _remove_default_item


def test_a_saved_config_gains_settings_added_since_at_their_defaults(tmp_path):
  saved = default_config.tiny_config(num_train_steps=7).to_dict()
  del saved['eval']['init_bn_batches']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  config = run_dir.load_config(tmp_path)
  assert config.num_train_steps == 7  # Saved values win.
  assert config.eval.init_bn_batches == default_config.base_config().eval.init_bn_batches


def test_a_folder_without_config_json_is_named_with_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError,
                     match=re.escape(f'No config.json in {tmp_path}; point --workdir')):
    run_dir.load_config(tmp_path)


def test_reading_a_run_creates_nothing(tmp_path):
  assert run_dir.checkpoint_steps(tmp_path) == []
  run_dir.checkpoint_reader(tmp_path).close()
  assert not list(tmp_path.iterdir())


def _files(directory):
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob('*')) if p.is_file()}


@pytest.fixture
def run_copy(tiny_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_run[0], workdir)
  return workdir, run_dir.load_config(workdir)


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_restored(run_copy):
  workdir, config = run_copy
  _remove_default_item(workdir / 'checkpoints' / '4')
  damaged = _files(workdir / 'checkpoints' / '4')
  manager = run_dir.checkpoint_manager(workdir, config)
  try:
    state = run_dir.restore_or_init(config, parallel.make_mesh(), manager)
    assert int(state.step) == 2
    assert manager.all_steps() == [2]  # Step 4 can be saved again.
  finally:
    manager.close()
  assert not (workdir / 'checkpoints' / '4').exists()
  assert _files(workdir / 'checkpoints' / '4.unreadable') == damaged  # Renamed, not deleted.
  assert run_dir.checkpoint_steps(workdir) == [2]


def test_a_step_set_aside_a_second_time_keeps_both_copies(run_copy):
  workdir, config = run_copy
  earlier = workdir / 'checkpoints' / '4.unreadable'
  shutil.copytree(workdir / 'checkpoints' / '4', earlier)  # Set aside before, trained again since.
  _remove_default_item(workdir / 'checkpoints' / '4')
  damaged, kept = _files(workdir / 'checkpoints' / '4'), _files(earlier)
  manager = run_dir.checkpoint_manager(workdir, config)
  try:
    assert int(run_dir.restore_or_init(config, parallel.make_mesh(), manager).step) == 2
  finally:
    manager.close()
  assert _files(earlier) == kept
  assert _files(workdir / 'checkpoints' / '4.unreadable-2') == damaged


def test_a_transient_read_error_is_retried_and_the_newest_checkpoint_kept(run_copy, monkeypatch):
  workdir, config = run_copy
  restore, calls = run_dir.restore, []

  def fails_once(*args, **kwargs):
    calls.append(args[1])
    if len(calls) == 1:
      raise OSError('Connection reset by peer')
    return restore(*args, **kwargs)

  monkeypatch.setattr(run_dir, 'restore', fails_once)
  monkeypatch.setattr(run_dir, 'RETRY_SECONDS', 0.0)
  manager = run_dir.checkpoint_manager(workdir, config)
  try:
    assert int(run_dir.restore_or_init(config, parallel.make_mesh(), manager).step) == 4
  finally:
    manager.close()
  assert calls == [4, 4] and run_dir.checkpoint_steps(workdir) == [2, 4]


def test_a_checkpoint_only_some_processes_read_stops_with_one_sentence(run_copy, monkeypatch):
  workdir, config = run_copy
  # Process 1 finds the checkpoint damaged (no retry) and so cannot read it.
  monkeypatch.setattr(parallel, 'from_every_process', lambda value: (
      [value, False] if isinstance(value, bool) else [value, run_dir._DAMAGED]))
  manager = run_dir.checkpoint_manager(workdir, config)
  try:
    with pytest.raises(run_dir.TrainingStopped, match=re.escape(
        f'Checkpoint 4 in {workdir}/checkpoints restores on some processes but not on process '
        '1: check that every host reads the same storage, then rerun.')):
      run_dir.restore_or_init(config, parallel.make_mesh(), manager)
  finally:
    manager.close()
  assert run_dir.checkpoint_steps(workdir) == [2, 4]


def test_no_restorable_checkpoint_stops_and_renames_nothing(run_copy):
  workdir, config = run_copy
  for step in (2, 4):
    _remove_default_item(workdir / 'checkpoints' / str(step))
  before = _files(workdir)
  manager = run_dir.checkpoint_manager(workdir, config)
  try:
    message = f'No checkpoint in {workdir}/checkpoints restores (step 4: '
    with pytest.raises(run_dir.TrainingStopped, match=re.escape(message)):
      run_dir.restore_or_init(config, parallel.make_mesh(), manager)
  finally:
    manager.close()
  assert _files(workdir) == before


def _missing_fields(workdir, step):
  reader = run_dir.checkpoint_reader(workdir)
  try:
    return sorted(run_dir._missing_fields(run_dir._saved_tree(reader, step)))
  finally:
    reader.close()


def test_a_checkpoint_from_before_the_encoder_ema_restores_with_copies_of_e(tiny_run, tmp_path):
  workdir, state = tiny_run
  config = run_dir.load_config(workdir)
  old = {name: value for name, value in vars(jax.device_get(state)).items()
         if name not in run_dir.ADDED_FIELDS}
  old_run = tmp_path / 'old'
  with ocp.CheckpointManager(old_run / 'checkpoints') as writer:
    writer.save(4, args=ocp.args.StandardSave(old))
  assert _missing_fields(old_run, 4) == sorted(run_dir.ADDED_FIELDS)
  restored = run_dir.read_checkpoint(old_run, 4, config, parallel.make_mesh())
  pointer = lambda x: x.addressable_shards[0].data.unsafe_buffer_pointer()
  for name, source in run_dir.ADDED_FIELDS.items():
    assert_trees_equal(getattr(restored, name), old[source])
    # Buffers of their own: the step donates the state.
    jax.tree.map(lambda a, b: pointer(a) != pointer(b) or pytest.fail(f'{name} shares {source}'),
                 getattr(restored, name), getattr(restored, source))
  assert_trees_equal(restored.d_params, old['d_params'])
  # The tiny run's own checkpoints hold an EMA of E that differs from E.
  assert _missing_fields(workdir, 4) == []
  assert_trees_differ(state.e_ema_params, state.e_params)


@pytest.fixture
def manager(tmp_path):
  manager = ocp.CheckpointManager(tmp_path / 'checkpoints')
  yield manager
  run_dir.close_quietly(manager)


def test_the_saver_saves_finite_states_and_refuses_non_finite_ones(tmp_path, manager):
  first_saves = []
  saver = run_dir.CheckpointSaver(manager, lambda: first_saves.append(True))
  finite = {'w': jnp.ones(3), 'step': jnp.int32(1)}
  saver.save(1, finite)
  saver.save(2, finite)
  saver.check_for_errors(wait=True)
  assert first_saves == [True]  # Once, before the first save.
  with pytest.raises(run_dir.TrainingStopped) as info:
    saver.save(3, {'w': jnp.array([1.0, jnp.nan, 0.0]), 'step': jnp.int32(3)})
  assert str(info.value) == (
      'Training diverged: the state at step 3 holds non-finite values; nothing non-finite was '
      f'saved and the newest good checkpoint is step 2 in {tmp_path}/checkpoints: resume from it '
      'with lower learning rates (e.g. --config.optim.d_lr=... --config.allow_changes=optim).')
  assert manager.all_steps() == [1, 2]


def test_a_failed_save_is_one_sentence_naming_the_newest_good_checkpoint(tmp_path, manager,
                                                                         monkeypatch):
  saver = run_dir.CheckpointSaver(manager)

  def disk_full(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(manager, 'save', disk_full)
  with pytest.raises(run_dir.TrainingStopped) as info:
    saver.save(1, {'w': jnp.ones(3)})
  assert str(info.value) == (
      'Saving the checkpoint at step 1 failed ([Errno 28] No space left on device); no earlier '
      f'checkpoint exists in {tmp_path}/checkpoints: fix the cause (e.g. free disk space) and '
      'rerun the same command to resume.')


def test_a_failed_close_is_a_warning(caplog):
  class FailingManager:
    def close(self):
      raise OSError(5, 'Input/output error')

  with caplog.at_level(logging.WARNING):
    run_dir.close_quietly(FailingManager())
  assert 'Closing the checkpoint manager: [Errno 5] Input/output error' in caplog.text


def test_the_initial_state_is_seeded_and_matches_the_abstract_state():
  config = default_config.tiny_config()
  mesh = parallel.make_mesh()
  state = run_dir.initial_state(config, mesh)
  abstract = run_dir.abstract_state(config, mesh)
  assert int(state.step) == 0
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(state) == shapes(abstract)
  jax.tree.map(np.testing.assert_array_equal, state, run_dir.initial_state(config, mesh))


@pytest.mark.parametrize('code', [errno.ENOSYS, errno.EOPNOTSUPP])
def test_data_preparation_goes_on_where_the_file_system_has_no_locks(tmp_path, monkeypatch, code):
  """Lustre mounted without flock raises ENOSYS: prepare without the lock (process 0 first)."""
  def no_locks(*args):
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(fcntl, 'flock', no_locks)
  with sources._file_lock(tmp_path):
    pass
