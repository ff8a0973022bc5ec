"""What the training program does when things go wrong: flag errors through `python -m
bigbigan_jax.main`, the rest through training_command.run, which main runs once flags parse.

Each case asserts the one-sentence message, the exit code, and that the run's earlier
checkpoints and config.json are intact.
"""

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from conftest import run_together, tiny_training_config
from PIL import Image

from bigbigan_jax import data, input_pipeline, parallel, run_dir, training_command
from bigbigan_jax.datasets import idx_files
from bigbigan_jax.evaluation import evaluator
from test_input_pipeline import _write_idx as write_idx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = f'{REPO}/configs/tiny.py'


def run_main(workdir, steps=4, **overrides):
  """training_command.run's exit code and message for the tiny run's settings with `overrides` (keys as in
  default_config.tiny_config), on mock data; (0, '') when it ends normally."""
  config = tiny_training_config(steps, **overrides)
  try:
    with tfds.testing.mock_data(num_examples=64):
      training_command.run(config, str(workdir))
  except SystemExit as e:
    return (1, e.code) if isinstance(e.code, str) else (e.code, '')
  return 0, ''


def one_sentence(message):
  assert '\n' not in message and 'Traceback' not in message
  assert message.startswith('error: ')
  return message


def snapshot(workdir):
  """The bytes of config.json and of every checkpoint file, by path."""
  return {str(p.relative_to(workdir)): p.read_bytes()
          for p in sorted(workdir.rglob('*')) if p.is_file() and
          (p.name == 'config.json' or 'checkpoints' in p.parts)}


@pytest.fixture
def run_copy(tiny_run, tmp_path):
  """A copy of the 4-step tiny run (checkpoints 2 and 4) that a test may change."""
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_run[0], workdir)
  return workdir


@pytest.mark.parametrize('args,message', [
    (['--config=configs/nope.py'], 'cannot load the config file configs/nope.py (No such file'),
    ([f'--config={TINY}', '--config.batch_sizee=8'],
     '--config.batch_sizee is not a config field; did you mean batch_size?'),
    ([f'--config={REPO}/configs/fashion_mnist.py:stepz=10'],
     "Unknown config argument 'stepz'; it takes steps."),
    ([f'--config={TINY}:anything=1'], "Unknown config argument 'anything'; it takes none."),
])
def test_bad_config_flags_are_one_sentence(args, message):
  # A fresh process: absl registers --config.<field> flags once per process. It exits before
  # importing JAX, so this is quick.
  out = subprocess.run([sys.executable, '-m', 'bigbigan_jax.main', *args], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
  assert out.returncode == 1
  assert message in one_sentence(out.stderr.strip())


@pytest.mark.parametrize('value', ['nan', 'inf', '-1e-4', '0'])
def test_non_finite_or_non_positive_learning_rates_are_rejected(tmp_path, value):
  code, text = run_main(tmp_path, optim__d_lr=float(value))
  assert code == 1
  assert 'optim.d_lr=' in one_sentence(text) and 'must be positive and finite' in text
  assert not list(tmp_path.iterdir())


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / 'taken').write_text('not a directory')
  for workdir in ('taken', 'taken/run'):
    code, text = run_main(tmp_path / workdir)
    assert code == 1
    assert f'--workdir={tmp_path / workdir} cannot be a directory' in one_sentence(text)
  assert (tmp_path / 'taken').read_text() == 'not a directory'


def test_divergence_stops_before_saving_and_keeps_the_good_checkpoints(run_copy):
  before = snapshot(run_copy)
  code, text = run_main(run_copy, steps=12, optim__d_lr=1e6, optim__g_lr=1e6,
                        allow_changes='optim')
  assert code == 1
  assert 'Training diverged' in one_sentence(text)
  assert f'the newest good checkpoint is step 4 in {run_copy}/checkpoints' in text
  assert run_dir.checkpoint_steps(run_copy) == [2, 4]
  assert snapshot(run_copy) == before  # config.json too: the diverged settings are not kept.


def test_resume_with_a_changed_architecture_keeps_the_run(run_copy):
  before = snapshot(run_copy)
  code, text = run_main(run_copy, model__g_ch=8)
  assert code == 1
  assert 'trained with a different config (model.g_ch=4 -> 8)' in one_sentence(text)
  assert '--config.allow_changes=model.g_ch' in text
  # Forced through, the restore fails on every checkpoint, which are all left as they were.
  code, text = run_main(run_copy, model__g_ch=8, allow_changes='model.g_ch')
  assert code == 1
  assert f'No checkpoint in {run_copy}/checkpoints restores' in one_sentence(text)
  # Found in the checkpoint's metadata, before orbax reads an array.
  assert re.search(r'checkpoint 4 holds \S*generator\S* of shape \(.*\), where this config '
                   r'makes \(', text), text
  assert snapshot(run_copy) == before


def test_bookkeeping_changes_resume_without_asking(run_copy):
  code, text = run_main(run_copy, steps=6, checkpoint_every_steps=3)
  assert (code, text) == (0, '')
  assert run_dir.checkpoint_steps(run_copy) == [2, 4, 6]


def _truncate_a_data_file(step_dir):
  data = max((p for p in step_dir.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 3])


def _remove_metadata(step_dir):
  for p in step_dir.rglob('_METADATA'):
    p.unlink()


def _remove_default_item(step_dir):
  shutil.rmtree(step_dir / 'default')


@pytest.mark.parametrize('damage', [_truncate_a_data_file, _remove_metadata, _remove_default_item])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tiny_run, run_copy, damage):
  damage(run_copy / 'checkpoints' / '4')
  code, text = run_main(run_copy)
  assert (code, text) == (0, '')
  assert (run_copy / 'checkpoints' / '4.unreadable').is_dir()  # Set aside, not deleted.
  config = run_dir.load_config(run_copy)
  manager = run_dir.checkpoint_manager(run_copy, config)
  retrained = jax.device_get(run_dir.restore(manager, 4, config, parallel.make_mesh()))
  manager.close()
  jax.tree.map(np.testing.assert_array_equal, retrained, tiny_run[1])


def test_no_restorable_checkpoint_is_one_sentence_and_deletes_nothing(run_copy):
  for step in (2, 4):
    _remove_default_item(run_copy / 'checkpoints' / str(step))
  before = snapshot(run_copy)
  code, text = run_main(run_copy, steps=6)
  assert code == 1
  assert f'No checkpoint in {run_copy}/checkpoints restores' in one_sentence(text)
  assert snapshot(run_copy) == before


def test_a_failed_save_stops_the_run_with_earlier_checkpoints_intact(run_copy, monkeypatch):
  save = ocp.CheckpointManager.save

  def disk_full_at_step_6(self, step, *args, **kwargs):
    if step == 6:
      raise OSError(28, 'No space left on device')
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', disk_full_at_step_6)
  before = snapshot(run_copy)
  code, text = run_main(run_copy, steps=8)
  assert code == 1
  assert 'Saving the checkpoint at step 6 failed ([Errno 28] No space left on device)' in one_sentence(text)
  assert 'the newest good checkpoint is step 4' in text
  assert run_dir.checkpoint_steps(run_copy) == [2, 4]
  assert {k: v for k, v in snapshot(run_copy).items() if k != 'config.json'} == {
      k: v for k, v in before.items() if k != 'config.json'}


def test_a_failed_background_save_stops_the_run(run_copy, monkeypatch):
  def background_failure(self):
    if self.latest_step() == 6:
      raise OSError(28, 'No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, 'check_for_errors', background_failure)
  code, text = run_main(run_copy, steps=10)
  assert code == 1
  assert 'Saving the checkpoint at step 6 failed' in one_sentence(text)
  assert max(run_dir.checkpoint_steps(run_copy)) <= 6


@pytest.mark.parametrize('signum,code', [(signal.SIGINT, training_command.EXIT_INTERRUPTED),
                                         (signal.SIGTERM, training_command.EXIT_PREEMPTED)])
def test_a_signal_saves_the_step_and_stops(run_copy, monkeypatch, capsys, signum, code):
  train_iterator = input_pipeline.train_iterator

  def signal_at_the_seventh_batch(*args, **kwargs):
    for i, batch in enumerate(train_iterator(*args, **kwargs)):
      if i == 6:
        os.kill(os.getpid(), signum)
      yield batch

  monkeypatch.setattr(input_pipeline, 'train_iterator', signal_at_the_seventh_batch)
  # What the process had before (a pytest-xdist worker may start with SIGINT ignored).
  handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
  assert run_main(run_copy, steps=20) == (code, '')
  # The signal arrives while later batches are prefetched: the run stops at the next step.
  stopped = run_dir.checkpoint_steps(run_copy)[-1]
  assert 4 < stopped < 20
  reason = 'Interrupted' if signum == signal.SIGINT else 'Stopped'
  suffix = '' if signum == signal.SIGINT else ' on a preemption signal'
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      f'{reason} at step {stopped}{suffix}; the checkpoint is saved in {run_copy}/checkpoints: '
      f'rerun the same command to resume.')
  assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers


def test_a_stop_during_an_evaluation_ends_it_at_the_next_batch(run_copy, monkeypatch):
  eval_batches, pulled, probes = data.eval_batches, [], []

  def signal_at_the_second_batch(*args, **kwargs):
    for batch in eval_batches(*args, **kwargs):
      pulled.append(batch)
      if len(pulled) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(data, 'eval_batches', signal_at_the_second_batch)
  monkeypatch.setattr(evaluator.linear_probe, 'train_and_evaluate',
                      lambda *a, **k: probes.append(a))
  assert run_main(run_copy, steps=8, eval__every_steps=2) == (training_command.EXIT_PREEMPTED, '')
  # Resumed at step 4, the evaluation at step 6 was cut: its train split (64 mock examples, 8
  # batches of 8) ended at the batch after the signal plus data.prefetch (2) batches read ahead,
  # before the probe; step 6 was saved and its features deleted.
  assert len(pulled) <= 2 + 1 + 2 and not probes
  assert run_dir.checkpoint_steps(run_copy)[-1] == 6
  assert not (run_copy / evaluator.FEATURES_DIR).exists()


def _image_folder(root, images_per_class=2):
  for split in ('train', 'test'):
    for label in ('a', 'b'):
      (root / split / label).mkdir(parents=True)
      for i in range(images_per_class):
        Image.fromarray(np.full((40, 36, 3), 60 * i, np.uint8)).save(root / split / label / f'{i}.jpg')
  return root


@pytest.mark.parametrize('dataset,split,message', [
    ('no_such_dataset', 'train', "data.dataset='no_such_dataset' is not a TFDS dataset"),
    ('folder:{tmp}/missing', 'train', 'The image folder {tmp}/missing does not exist'),
    ('folder:{tmp}/empty', 'train', 'The image folder {tmp}/empty holds no images'),
    ('folder:{tmp}/images', 'trian', "has no split 'trian'; it has test, train"),
])
def test_a_dataset_that_cannot_be_read_is_one_sentence(tmp_path, dataset, split, message):
  (tmp_path / 'empty' / 'train' / 'a').mkdir(parents=True)
  _image_folder(tmp_path / 'images')
  code, text = run_main(tmp_path / 'run', data__dataset=dataset.format(tmp=tmp_path),
                        data__train_split=split)
  assert code == 1
  assert message.format(tmp=tmp_path) in one_sentence(text)
  assert not list((tmp_path / 'run').glob('checkpoints/*')) + list((tmp_path / 'run').glob('*.json'))


def test_two_processes_preparing_one_fresh_data_dir_both_succeed(tmp_path):
  source = tmp_path / 'idx'
  source.mkdir()
  for split, n in (('train', 20), ('t10k', 8)):
    write_idx(source / f'{split}-images-idx3-ubyte.gz', np.zeros((n, 28, 28), np.uint8))
    write_idx(source / f'{split}-labels-idx1-ubyte.gz', np.arange(n) % 10)
  count = ('from bigbigan_jax import default_config, input_pipeline; '
           'c = default_config.tiny_config(data__dataset="fashion_mnist_local", '
           f'data__data_dir="{tmp_path / "tfds"}"); '
           'print(input_pipeline.num_examples(c, "train"))')
  env = {**os.environ, idx_files.DIR_ENV_VAR: str(source), 'JAX_PLATFORMS': 'cpu'}
  for code, out, err in run_together([[sys.executable, '-c', count]] * 2, env, 300):
    assert code == 0, err[-2000:]
    assert out.split()[-1] == '20'  # After TFDS's own lines.


def test_undecodable_images_in_a_folder_are_skipped_and_named(tmp_path, caplog):
  root = _image_folder(tmp_path / 'images', images_per_class=5)
  (root / 'train' / 'a' / 'broken.jpg').write_bytes(b'not an image')
  whole = (root / 'train' / 'b' / '1.jpg').read_bytes()
  (root / 'train' / 'b' / 'truncated.jpg').write_bytes(whole[:len(whole) // 2])
  config = tiny_training_config(4, data__dataset=f'folder:{root}', batch_size=4)
  # 12 files, 10 decodable: 6 steps of 8 images cross 4 epochs.
  batches = list(itertools.islice(input_pipeline.train_iterator(config), 6))
  assert [b['image'].shape for b in batches] == [(2, 4, 32, 32, 3)] * 6
  named = [r.getMessage() for r in caplog.records if 'cannot be decoded:' in r.getMessage()]
  assert len(named) == input_pipeline.MAX_NAMED_SKIPS
  assert {m.split(': ')[1].split(' (')[0].rsplit('/', 1)[-1] for m in named[:2]} == {
      'broken.jpg', 'truncated.jpg'}
  assert named[0].endswith('(1 so far).') and named[2].endswith('(3 so far).')
