"""Export of a trained run: SavedModel, ONNX and safetensors checked by consumers that run in
their own processes without JAX, and every bad input of the export command."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from bigbigan_jax import inference, train
from bigbigan_jax.export import exporter, weights

CONSUMERS = os.path.join(os.path.dirname(os.path.realpath(__file__)), 'export_consumers')
ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
BATCH_SIZES = (3, 5)


def _consume(script: str, *args: str) -> None:
  env = {**os.environ, 'PYTHONPATH': ROOT, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  result = subprocess.run([sys.executable, os.path.join(CONSUMERS, script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0 and result.stdout.strip().endswith('ok'), (
      result.stdout[-3000:] + result.stderr[-3000:])


def _snapshot(workdir) -> dict[str, tuple[int, int]]:
  """Size and modification time of every file and directory of a run but its exports."""
  out = {}
  for root, dirs, files in os.walk(workdir):
    dirs[:] = [d for d in dirs if os.path.join(root, d) != os.path.join(workdir, 'export')]
    for name in dirs + files:
      stat = os.stat(os.path.join(root, name))
      out[os.path.relpath(os.path.join(root, name), workdir)] = (stat.st_size, stat.st_mtime_ns)
  return out


@pytest.fixture(scope='module')
def run(tiny_run):
  """(workdir, config, state, G's standing variables) of the tiny trained run."""
  workdir, state = tiny_run
  config = train.load_config(workdir)
  model = inference.BigBiGAN(config)
  standing = model.sampling_variables(
      state, jax.random.PRNGKey(config.seed + 2), num_batches=config.standing_stats_batches,
      batch_size=config.batch_size)
  return workdir, config, state, jax.device_get(standing), model


def _inputs(config, batch: int, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  e, r, c = config.encoder.resolution, config.model.resolution, config.data.num_channels
  return {
      'z': rng.standard_normal((batch, config.model.z_dim), np.float32),
      'noise': rng.standard_normal((batch, config.model.z_dim), np.float32),
      'x_e': rng.uniform(-1, 1, (batch, e, e, c)).astype(np.float32),
      'x_d': rng.uniform(-1, 1, (batch, r, r, c)).astype(np.float32),
  }


def _upsampled(config, images):
  e = config.encoder.resolution
  return jax.image.resize(images, (images.shape[0], e, e, images.shape[-1]), 'linear')


def test_saved_model_signatures_match_inference(run, tmp_path):
  workdir, config, state, standing, model = run
  out = exporter.export(str(workdir), 'saved_model', out=str(tmp_path / 'sm'))
  reference = {}
  for batch in BATCH_SIZES:
    inputs, seed = _inputs(config, batch, batch), 10 + batch
    images = model.sample(state.g_ema_params, standing, inputs['z'])
    encoded = model.encode(state.e_params, state.e_batch_stats, inputs['x_e'],
                           jax.random.PRNGKey(seed))
    scores = model.discriminate(state.d_params, state.d_spectral, inputs['x_d'], inputs['z'])
    cases = {
        'generate': ({'z': inputs['z']},
                     {'default': images, 'upsampled': _upsampled(config, images)}),
        'discriminate': ({'x': inputs['x_d'], 'z': inputs['z']}, scores),
    }
    for name in ('encode', 'serving_default'):
      cases[name] = ({'x': inputs['x_e'], 'seed': np.int32(seed)},
                     {**encoded, 'default': encoded['z_sample']})
    for name, (ins, outs) in cases.items():
      reference.update({f'{name}/{batch}/in/{k}': np.asarray(v) for k, v in ins.items()})
      reference.update({f'{name}/{batch}/out/{k}': np.asarray(v) for k, v in outs.items()})
  np.savez(tmp_path / 'reference.npz', **reference)
  _consume('tensorflow_consumer.py', out, tmp_path / 'reference.npz')
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f) == json.loads(config.to_json_best_effort())
  readme = open(os.path.join(out, 'README.txt')).read()
  assert 'generate' in readme and 'encode' in readme and 'discriminate' in readme


def test_onnx_encoder_and_generator_match_inference(run, tmp_path):
  workdir, config, state, standing, model = run
  out = exporter.export(str(workdir), 'onnx', out=str(tmp_path / 'onnx'))
  reference = {}
  for batch in BATCH_SIZES:
    inputs = _inputs(config, batch, 20 + batch)
    images = model.sample(state.g_ema_params, standing, inputs['z'])
    encoded = model.encode(state.e_params, state.e_batch_stats, inputs['x_e'])
    z_sample = encoded['z_mean'] + encoded['z_stdev'] * inputs['noise']
    cases = {
        'generator': ({'z': inputs['z']},
                      {'default': images, 'upsampled': _upsampled(config, images)}),
        'encoder': ({'x': inputs['x_e'], 'noise': inputs['noise']},
                    {**encoded, 'z_sample': z_sample, 'default': z_sample}),
    }
    for name, (ins, outs) in cases.items():
      reference.update({f'{name}/{batch}/in/{k}': np.asarray(v) for k, v in ins.items()})
      reference.update({f'{name}/{batch}/out/{k}': np.asarray(v) for k, v in outs.items()})
  np.savez(tmp_path / 'reference.npz', **reference)
  _consume('onnxruntime_consumer.py', out, tmp_path / 'reference.npz')


def test_safetensors_round_trip_is_exact_and_run_untouched(run, tmp_path):
  source, config, state, standing, _ = run
  workdir = tmp_path / 'run'
  shutil.copytree(source, workdir)
  before = _snapshot(workdir)
  out = exporter.export(str(workdir), 'safetensors')
  assert out == os.path.join(str(workdir), 'export', '4', 'safetensors')
  assert _snapshot(workdir) == before

  expected = {
      'generator': {'params': state.g_ema_params, **standing},
      'encoder': {'params': state.e_params, 'batch_stats': state.e_batch_stats},
      'discriminator': {'params': state.d_params, 'spectral': state.d_spectral},
  }
  loaded_config, trees = weights.load(out)
  assert jax.tree.structure(trees) == jax.tree.structure(jax.device_get(expected))
  for got, want in zip(jax.tree.leaves(trees), jax.tree.leaves(jax.device_get(expected))):
    assert got.dtype == want.dtype and np.array_equal(got, want)
  assert loaded_config.to_dict() == json.loads(config.to_json_best_effort())

  _consume('safetensors_consumer.py', out, tmp_path / 'consumed.npz')
  consumed = np.load(tmp_path / 'consumed.npz')
  flat = weights.flatten(jax.device_get(expected))
  assert sorted(consumed.files) == sorted(flat)
  assert all(np.array_equal(consumed[k], flat[k]) for k in flat)

  # A second export needs --overwrite and replaces the first; the run stays as it was.
  with pytest.raises(exporter.ExportError, match='not empty; pass --overwrite'):
    exporter.export(str(workdir), 'safetensors')
  os.remove(os.path.join(out, 'shapes.json'))
  exporter.export(str(workdir), 'safetensors', overwrite=True)
  assert os.path.exists(os.path.join(out, 'shapes.json'))
  assert _snapshot(workdir) == before


def _broken_run(tmp_path, source, **config_changes):
  """A run directory with `source`'s config.json (changed as asked) and no checkpoints."""
  workdir = tmp_path / 'broken'
  workdir.mkdir()
  config = json.loads((source / 'config.json').read_text())
  config.update(config_changes)
  (workdir / 'config.json').write_text(json.dumps(config))
  return workdir


@pytest.mark.parametrize('case', ['no_run', 'no_checkpoint', 'missing_step', 'unknown_format',
                                  'out_not_empty', 'out_in_checkpoints', 'onnx_bfloat16',
                                  'onnx_dtype_flag', 'unknown_dtype'])
def test_bad_input_is_one_sentence_and_changes_nothing(run, tmp_path, case):
  source = run[0]
  workdir, kwargs = source, {'fmt': 'safetensors', 'out': str(tmp_path / 'out')}
  if case == 'no_run':
    workdir, message = tmp_path, 'No config.json'
  elif case == 'no_checkpoint':
    workdir, message = _broken_run(tmp_path, source), 'No checkpoints in'
  elif case == 'missing_step':
    kwargs['step'], message = 3, r'No checkpoint for step 3 .* have \[2, 4\]'
  elif case == 'unknown_format':
    kwargs['fmt'], message = 'torch', 'not a known format'
  elif case == 'out_not_empty':
    os.makedirs(kwargs['out'])
    with open(os.path.join(kwargs['out'], 'keep.txt'), 'w') as f:
      f.write('mine')
    message = 'exists and is not empty'
  elif case == 'out_in_checkpoints':
    kwargs['out'], message = str(source / 'checkpoints' / 'x'), 'would hold the run'
  elif case == 'onnx_bfloat16':
    workdir = _broken_run(tmp_path, source, dtype='bfloat16')
    kwargs['fmt'], message = 'onnx', 'float32 only'
  elif case == 'onnx_dtype_flag':
    kwargs.update(fmt='onnx', dtype='float16')
    message = 'float32 only'
  else:
    kwargs['dtype'], message = 'float64', 'not supported'
  before = _snapshot(workdir)
  with pytest.raises((exporter.ExportError, FileNotFoundError), match=message) as error:
    exporter.export(str(workdir), **kwargs)
  text = str(error.value)
  assert '\n' not in text and text.endswith('.')
  assert _snapshot(workdir) == before
  if case == 'out_not_empty':
    assert os.listdir(kwargs['out']) == ['keep.txt']
  elif case != 'no_run':
    assert not os.path.exists(kwargs['out'])


def test_command_line_error_exits_non_zero_with_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'bigbigan_jax.export', f'--workdir={tmp_path}', '--format=onnx'],
      capture_output=True, text=True, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT},
      timeout=300)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      f'error: No config.json in {tmp_path}; point --workdir at a training run.']
