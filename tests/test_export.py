"""Export of a trained run: SavedModel, ONNX and safetensors checked by consumers that run in
their own processes without JAX (the SavedModel as code written for the official TF-Hub module
runs it), bad inputs of the exported networks and of the export command, and no path of this
machine in any exported file."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from bigbigan_jax import inference, run_dir
from bigbigan_jax.export import exporter, weights

CONSUMERS = os.path.join(os.path.dirname(os.path.realpath(__file__)), 'export_consumers')
ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
BATCH_SIZES = (3, 5)


def _consume(script: str, *args: str) -> str:
  """The consumer's output, once it has printed `ok` last and exited 0."""
  env = {**os.environ, 'PYTHONPATH': ROOT, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  result = subprocess.run([sys.executable, os.path.join(CONSUMERS, script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0 and result.stdout.strip().endswith('ok'), (
      result.stdout[-3000:] + result.stderr[-3000:])
  return result.stdout


def _machine_paths(*extra) -> list[str]:
  """This checkout's, the home directory's and `extra` paths (none of them may be exported).
  The home directory ends in a separator: HOME=/root is also in variable names like root_conv."""
  home = os.path.join(os.path.expanduser('~'), '')
  return [p for p in (ROOT, home, *map(str, extra)) if len(p) > 1]


def _assert_portable(out: str, *extra) -> None:
  """Every file of the export folder `out` is free of this machine's paths; it has a README."""
  forbidden = _machine_paths(*extra)
  for root, _, files in os.walk(out):
    for name in files:
      with open(os.path.join(root, name), 'rb') as f:
        data = f.read()
      found = [p for p in forbidden if p.encode() in data]
      assert not found, f'{os.path.join(root, name)} holds {found}'
  assert os.path.isfile(os.path.join(out, 'README.txt'))


def _bad_inputs(config, onnx: bool) -> list:
  """[network, {input: [shape, dtype]}, the sentence the call must fail with]."""
  z, e, r, c = (config.model.z_dim, config.encoder.resolution, config.model.resolution,
                config.data.num_channels)
  f32 = 'float32'
  if onnx:
    x, g = 'encoder.onnx: x must', 'generator.onnx: z must'
    cases = [
        ('generator', {'z': ((0, z), f32)},
         f'{g} have shape [N, {z}] with N >= 1; got [0, {z}].'),
        ('generator', {'z': ((4, 120), f32)},
         f'{g} have shape [N, {z}] with N >= 1; got [4, 120].'),
        ('encoder', {'x': ((4, e, e, c), f32), 'noise': ((1, z), f32)},
         f'encoder.onnx: noise must have shape [4, {z}], as many rows as x; got [1, {z}].'),
        ('encoder', {'x': ((0, e, e, c), f32)},
         f'{x} have shape [N, {e}, {e}, {c}] with N >= 1; got [0, {e}, {e}, {c}].'),
        ('encoder', {'x': ((2, e, e, c + 1), f32)},
         f'{x} have shape [N, {e}, {e}, {c}] with N >= 1; got [2, {e}, {e}, {c + 1}].'),
        ('encoder', {'x': ((2, e, e, c), 'uint8')},
         f'{x} be a float array (images in [-1, 1]); got uint8.'),
    ]
  else:
    x_e = f'x must have shape [N, {e}, {e}, {c}] with N >= 1; got'
    cases = [
        ('generate', {'z': ((4, 120), f32)},
         f'generate: z must have shape [N, {z}] with N >= 1; got [4, 120].'),
        ('generate', {'z': ((0, z), f32)},
         f'generate: z must have shape [N, {z}] with N >= 1; got [0, {z}].'),
        ('generate', {'z': ((z,), f32)},
         f'generate: z must have shape [N, {z}] with N >= 1; got [{z}].'),
        ('encode', {'x': ((2, e // 2, e // 2, c), f32)},
         f'encode: {x_e} [2, {e // 2}, {e // 2}, {c}].'),
        ('encode', {'x': ((2, e, e, 1), f32)}, f'encode: {x_e} [2, {e}, {e}, 1].'),
        ('serving_default', {'x': ((e, e, c), f32)}, f'encode: {x_e} [{e}, {e}, {c}].'),
        ('default', {'x': ((0, e, e, c), f32)}, f'encode: {x_e} [0, {e}, {e}, {c}].'),
        ('encode_with_seed', {'x': ((2, e, e, c), f32), 'seed': ((2,), 'int32')},
         'encode: seed must have shape [] (a scalar); got [2].'),
        ('discriminate', {'x': ((3, r, r, c), f32), 'z': ((2, z), f32)},
         f'discriminate: z must have shape [3, {z}], as many rows as x; got [2, {z}].'),
        ('discriminate', {'x': ((2, r, r, c), f32), 'z': ((2, 120), f32)},
         f'discriminate: z must have shape [2, {z}], as many rows as x; got [2, 120].'),
        ('discriminate', {'x': ((2, r // 2, r // 2, c), f32), 'z': ((2, z), f32)},
         f'discriminate: x must have shape [N, {r}, {r}, {c}] with N >= 1; got '
         f'[2, {r // 2}, {r // 2}, {c}].'),
    ]
  return [[net, {k: [list(shape), dtype] for k, (shape, dtype) in ins.items()}, sentence]
          for net, ins, sentence in cases]


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
  config = run_dir.load_config(workdir)
  standing = inference.BigBiGAN(config).sampling_variables(
      state, jax.random.PRNGKey(config.seed + 2), num_batches=config.standing_stats_batches,
      batch_size=min(config.batch_size, inference.STANDING_STATS_BATCH))
  return workdir, config, state, jax.device_get(standing)


@pytest.fixture(scope='module')
def reference(run):
  """Per batch size: inputs and the outputs of the project's own inference functions."""
  _, config, state, standing = run
  model = inference.BigBiGAN(config)
  e, r, c = config.encoder.resolution, config.model.resolution, config.data.num_channels
  out = {}
  for batch in BATCH_SIZES:
    rng = np.random.default_rng(batch)
    z = rng.standard_normal((batch, config.model.z_dim), np.float32)
    x_e = rng.uniform(-1, 1, (batch, e, e, c)).astype(np.float32)
    x_d = rng.uniform(-1, 1, (batch, r, r, c)).astype(np.float32)
    seed = np.int32(10 + batch)
    images = model.sample(state.g_ema_params, standing, z)
    out[batch] = jax.device_get({
        'z': z, 'x_e': x_e, 'x_d': x_d, 'seed': seed,
        'noise': rng.standard_normal((batch, config.model.z_dim), np.float32),
        'images': images,
        'upsampled': jax.image.resize(images, (batch, e, e, c), 'linear'),
        'encoded': model.encode(state.e_ema_params, state.e_ema_batch_stats, x_e),
        'encoded_seed': model.encode(state.e_ema_params, state.e_ema_batch_stats, x_e,
                                     jax.random.PRNGKey(seed)),
        'scores': model.discriminate(state.d_params, state.d_spectral, x_d, z),
    })
  return out


def _save_cases(path, cases_by_batch) -> None:
  """Writes {batch: {name: (inputs, outputs)}} as `<name>/<batch>/{in,out}/<key>` arrays."""
  arrays = {}
  for batch, cases in cases_by_batch.items():
    for name, (ins, outs) in cases.items():
      arrays.update({f'{name}/{batch}/in/{k}': np.asarray(v) for k, v in ins.items()})
      arrays.update({f'{name}/{batch}/out/{k}': np.asarray(v) for k, v in outs.items()})
  np.savez(path, **arrays)


@pytest.fixture(scope='module')
def saved_model(run, reference, tmp_path_factory):
  """(export folder, consumer output) of the SavedModel export, run by tensorflow_consumer.py."""
  workdir, config = run[:2]
  tmp_path = tmp_path_factory.mktemp('saved_model')
  out = exporter.export(str(workdir), 'saved_model', out=str(tmp_path / 'sm'))
  cases = {}
  for batch, ref in reference.items():
    encoded = {k: v for k, v in ref['encoded_seed'].items() if k != 'z_sample'}
    seeded = {**ref['encoded_seed'], 'default': ref['encoded_seed']['z_sample']}
    cases[batch] = {
        'generate': ({'z': ref['z']}, {'default': ref['images'], 'upsampled': ref['upsampled']}),
        'encode': ({'x': ref['x_e']}, encoded),  # z_sample's noise is fresh: checked apart.
        'serving_default': ({'x': ref['x_e']}, encoded),
        'default': ({'x': ref['x_e']}, {}),
        'encode_with_seed': ({'x': ref['x_e'], 'seed': ref['seed']}, seeded),
        'discriminate': ({'x': ref['x_d'], 'z': ref['z']}, ref['scores']),
    }
  _save_cases(tmp_path / 'reference.npz', cases)
  bad = {'bad': _bad_inputs(config, onnx=False),
         'forbidden': _machine_paths(os.path.abspath(workdir))}
  (tmp_path / 'bad.json').write_text(json.dumps(bad))
  return out, _consume('tensorflow_consumer.py', out, tmp_path / 'reference.npz',
                       tmp_path / 'bad.json')


def test_saved_model_is_the_official_module_and_matches_inference(run, saved_model):
  """Signatures at two batch sizes within 1e-4 of inference.BigBiGAN, fresh noise without a
  seed, the official usage (tf.saved_model.load, tags=[]; hub.load and hub.KerasLayer where
  tensorflow_hub is installed), a sentence for each bad input. One test, so that pytest-xdist
  does not export twice."""
  workdir, config = run[:2]
  out, output = saved_model
  hub = importlib.util.find_spec('tensorflow_hub') is not None
  assert ('tensorflow_hub ok' if hub else 'tensorflow_hub not installed') in output
  _assert_portable(out, os.path.abspath(workdir))
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f) == json.loads(config.to_json_best_effort())
  with open(os.path.join(out, 'README.txt')) as f:
    readme = f.read()
  assert all(name in readme for name in ('generate', 'encode', 'encode_with_seed',
                                         'discriminate', 'serving_default', 'default'))


def test_onnx_encoder_and_generator_match_inference(run, reference, tmp_path):
  out = exporter.export(str(run[0]), 'onnx', out=str(tmp_path / 'onnx'))
  cases = {}
  for batch, ref in reference.items():
    encoded = ref['encoded']  # Without a key E's z_sample is z_mean; ONNX adds the noise given.
    z_sample = encoded['z_mean'] + encoded['z_stdev'] * ref['noise']
    cases[batch] = {
        'generator': ({'z': ref['z']}, {'default': ref['images']}),
        'encoder': ({'x': ref['x_e'], 'noise': ref['noise']}, {**encoded, 'z_sample': z_sample}),
    }
  _save_cases(tmp_path / 'reference.npz', cases)
  (tmp_path / 'bad.json').write_text(json.dumps(_bad_inputs(run[1], onnx=True)))
  _consume('onnxruntime_consumer.py', out, tmp_path / 'reference.npz', tmp_path / 'bad.json')
  _assert_portable(out, os.path.abspath(run[0]))
  assert os.path.isfile(os.path.join(out, 'bigbigan_onnx.py'))


def test_onnx_deterministic_encoder_has_one_latent_output(run):
  """A deterministic E's z_sample is z_mean: the ONNX encoder names that value once."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  from bigbigan_jax.export import networks, onnx_models  # pylint: disable=g-import-not-at-top
  config = run_dir.load_config(run[0])
  config.encoder.stochastic = False
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  encoder = networks.Functions(config).models.encoder
  variables = jax.device_get(encoder.init(jax.random.PRNGKey(0), x[:1], train=False))
  model = onnx_models.encoder_model(networks.Networks(config, 0, {}, variables, {}))
  session = onnxruntime.InferenceSession(model.SerializeToString())
  assert [i.name for i in session.get_inputs()] == ['x']
  assert [o.name for o in session.get_outputs()] == ['z_mean', 'avepool_feat', 'bn_crelu_feat']
  want = encoder.apply(variables, x, train=False)
  for output, got in zip(session.get_outputs(), session.run(None, {'x': x})):
    np.testing.assert_allclose(got, want[output.name], rtol=1e-4, atol=1e-4)


def test_safetensors_round_trip_is_exact_and_run_untouched(run, tmp_path):
  source, config, state, standing = run
  workdir = tmp_path / 'run'
  shutil.copytree(source, workdir)
  before = _snapshot(workdir)
  out = exporter.export(str(workdir), 'safetensors')
  assert out == os.path.join(str(workdir), 'export', '4', 'safetensors')
  assert _snapshot(workdir) == before
  _assert_portable(out, workdir, source)

  expected = {
      'generator': {'params': state.g_ema_params, **standing},
      'encoder': {'params': state.e_ema_params, 'batch_stats': state.e_ema_batch_stats},
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


def test_exported_config_cuts_machine_paths(run):
  from bigbigan_jax.export import networks  # pylint: disable=g-import-not-at-top
  config = run_dir.load_config(run[0])
  config.data.data_dir = '/home/someone/tensorflow_datasets/'
  config.data.dataset = 'folder:/data/images'
  config.eval.inception_weights = '~/weights/inception.npz'
  got = json.loads(networks.config_json(config))
  assert (got['data']['data_dir'], got['data']['dataset'], got['eval']['inception_weights']) == (
      'tensorflow_datasets', 'folder:images', 'inception.npz')
  assert got['model'] == config.model.to_dict()


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
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  # Earlier lines are TensorFlow's own import-time notices.
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: No config.json in {tmp_path}; point --workdir at a training run.')
