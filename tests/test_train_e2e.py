"""The training program end to end on mock ImageNet: outputs, checkpoints and exact resume."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from etils import epath

from bigbigan_jax import config_checks, default_config, run_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


from conftest import tiny_training_config as tiny, train_on_mock_data as run


@pytest.fixture
def uninterrupted(tiny_run):
  return tiny_run


def test_run_writes_events_grids_checkpoints_and_config(uninterrupted):
  workdir, state = uninterrupted
  assert int(state.step) == 4
  assert list(workdir.glob('events.out.tfevents.*'))
  for kind in ('samples', 'reconstructions'):
    assert (workdir / 'images' / f'{kind}_0000002.png').exists()
    assert (workdir / 'images' / f'{kind}_0000004.png').exists()
  assert run_dir.checkpoint_steps(workdir) == [2, 4]
  assert run_dir.load_config(workdir).num_train_steps == 4


def test_stopped_and_restarted_run_equals_uninterrupted_run(uninterrupted, tmp_path):
  _, expected = uninterrupted
  first = run(tiny(2), tmp_path)
  assert int(first.step) == 2
  resumed = jax.device_get(run(tiny(4), tmp_path))
  assert int(resumed.step) == 4
  jax.tree.map(np.testing.assert_array_equal, resumed, expected)


def test_finished_run_is_not_trained_again(uninterrupted):
  workdir, expected = uninterrupted
  again = jax.device_get(run(tiny(4), workdir))
  jax.tree.map(np.testing.assert_array_equal, again, expected)


@pytest.mark.parametrize('field,value,message', [
    ('batch_size', 6, 'batch_size=6 must be a positive multiple of the device count (4)'),
    ('encoder__name', 'vgg16', "Encoder name 'vgg16' is not supported"),
    ('model__resolution', 96, 'resolution 96 is not supported; use one of 32, 64, 128, 256'),
    ('num_train_steps', 0, 'num_train_steps=0 must be positive'),
    ('optim__d_steps', 0, 'optim.d_steps=0 must be positive'),
    ('loss__reduction', 'max', "loss.reduction='max' is not supported"),
    ('loss__d_augment', 'translation,flip', "loss.d_augment names 'flip'"),
    ('optim__e_lr_schedule', '6000', "optim.e_lr_schedule item '6000' is not STEP:MULT"),
    ('optim__e_lr_schedule', '6000:2,4000:1',
     "optim.e_lr_schedule='6000:2,4000:1' needs steps of 1 or more, in increasing order"),
    ('optim__e_lr_schedule', '6000:0', "optim.e_lr_schedule='6000:0' needs multipliers above 0"),
    ('dtype', 'int8', "dtype='int8' is not supported"),
    ('optim__ema_decay', 1.5, 'optim.ema_decay=1.5 must be in [0, 1)'),
    ('optim__e_ema_decay', 1.0, 'optim.e_ema_decay=1.0 must be in [0, 1)'),
    ('num_grid_images', 10, 'num_grid_images=10 must be a square number'),
    ('encoder__head_depth', 3, 'encoder.head_depth=3 must be even'),
    ('eval__init_bn_batches', -1, 'eval.init_bn_batches=-1 must be 0 or more'),
])
def test_config_validation_errors(field, value, message):
  with pytest.raises(config_checks.ConfigError) as info:
    config_checks.validate(default_config.tiny_config(**{field: value}), num_devices=4)
  assert message in str(info.value)
  assert str(info.value).count('. ') == 0, 'one sentence'


def test_main_reports_a_bad_config_in_one_line_before_compiling(tmp_path):
  cmd = [sys.executable, '-m', 'bigbigan_jax.main', f'--config={REPO}/configs/tiny.py',
         f'--workdir={tmp_path}', '--config.encoder.name=resnet51']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
  assert out.returncode == 1
  assert 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith("error: Encoder name 'resnet51' is not supported")
  assert not (epath.Path(tmp_path) / 'checkpoints').exists()
