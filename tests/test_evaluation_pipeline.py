"""Evaluation end to end on mock ImageNet: features, periodic evaluation and the evaluate CLI."""

import json
import logging
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from absl.testing import flagsaver
from conftest import assert_trees_differ, assert_trees_equal, initial_state

from bigbigan_jax import config_checks, default_config, evaluate, parallel, run_dir, train
from bigbigan_jax.evaluation import evaluator, features, run_evaluation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Per split (mock data ignores split slicing): at least 25 for 25-NN, and not a multiple of the
# eval batch (8) so that the last batch is padded.
MOCK_EXAMPLES = 30
PROBE_KEYS = {'probe/top1', 'probe/top5', 'probe/weight_decay', 'num_train_examples',
              'num_eval_examples'}
KNN_KEYS = {f'knn/{m}_k{k}' for m in ('cosine', 'euclidean') for k in (1, 25)}
FID_KEYS = {'fid', 'inception_score', 'inception_score_std'}


def tiny():
  c = default_config.tiny_config(num_train_steps=2, checkpoint_every_steps=2,
                                 image_every_steps=2, log_every_steps=1)
  c.data.shuffle_buffer = 16
  c.eval.every_steps = 2
  return c


@pytest.fixture(scope='module')
def mock_imagenet():
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    yield


@pytest.fixture(scope='module')
def trained(mock_imagenet, tmp_path_factory):
  """A 2-step run with periodic evaluation: (workdir, final state, metrics of the evaluation)."""
  del mock_imagenet
  workdir = tmp_path_factory.mktemp('run')
  with pytest.MonkeyPatch.context() as patch:
    patch.delenv(evaluator.INCEPTION_ENV, raising=False)
    evaluate_fn = evaluator.periodic_evaluator(tiny(), workdir)
  results = []
  state = train.train_and_evaluate(
      tiny(), str(workdir), lambda s, step, w, check: results.append(evaluate_fn(s, step, w, check)))
  return workdir, state, results


def run_cli(*args):
  argv = ['evaluate', *args]
  with flagsaver.flagsaver():
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    evaluate.main(argv[:1])


def test_periodic_evaluator_is_off_without_every_steps(tmp_path):
  assert evaluator.periodic_evaluator(default_config.tiny_config(), tmp_path) is None


def test_features_have_the_split_shape_and_are_deterministic(mock_imagenet, tmp_path):
  del mock_imagenet
  c = tiny()
  extractor = features.FeatureExtractor(c, parallel.make_mesh())
  state = initial_state(c)
  runs = [extractor.encoder(state.e_params, state.e_batch_stats, 'validation', tmp_path / str(i))
          for i in range(2)]
  (x0, y0), (x1, y1) = (next(r.store.batches(100)) for r in runs)
  assert x0.shape == (MOCK_EXAMPLES, 32 * c.encoder.base_width)
  np.testing.assert_array_equal(x0, x1)
  np.testing.assert_array_equal(y0, y1)
  assert np.isfinite(x0).all() and x0.std() > 0
  assert runs[0].num_classes == y0.max() + 1
  pixels = extractor.raw_pixels('validation', tmp_path / 'pixels')
  x, y = next(pixels.store.batches(100))
  assert x.shape == (MOCK_EXAMPLES, c.model.resolution ** 2 * 3)
  np.testing.assert_array_equal(y, y0)


def test_periodic_evaluation_gives_probe_and_knn_and_skips_fid(trained):
  workdir, _, results = trained
  assert len(results) == 1
  metrics = results[0]
  assert set(metrics) == PROBE_KEYS | KNN_KEYS
  assert metrics['num_train_examples'] == MOCK_EXAMPLES
  assert metrics['num_eval_examples'] == MOCK_EXAMPLES
  assert all(0.0 <= metrics[k] <= 1.0 for k in KNN_KEYS | {'probe/top1', 'probe/top5'})
  for name in ('samples', 'reconstructions', 'interpolations'):
    assert (workdir / 'images' / f'eval_{name}_0000002.png').exists()
  assert not (workdir / 'eval_features').exists()


def test_no_inception_weights_logs_how_to_enable_fid(tmp_path, monkeypatch, caplog):
  monkeypatch.delenv(evaluator.INCEPTION_ENV, raising=False)
  with caplog.at_level(logging.INFO, logger='absl'):  # absl flag parsing may set WARNING.
    assert evaluator.Evaluator(tiny(), tmp_path).inception is None
  assert 'FID/IS skipped: no Inception weights; set --config.eval.inception_weights' in caplog.text


def test_evaluator_ignores_the_training_batch_of_another_device_count(tmp_path):
  c = tiny()
  c.batch_size = 6  # Not a multiple of the 4 test devices: training would refuse it.
  with pytest.raises(config_checks.ConfigError):
    config_checks.validate(c, num_devices=4)
  assert evaluator.Evaluator(c, tmp_path).mesh.size == 4


class _TinyInception(nn.Module):
  """Stands in for Inception-v3: (pooled features [N, 4], logits [N, 10])."""

  @nn.compact
  def __call__(self, images):
    features = nn.Dense(4)(jnp.mean(images, axis=(1, 2)))
    return features, nn.Dense(10)(features)


def test_cli_writes_eval_json_with_fid_and_cached_reference(trained, monkeypatch):
  workdir, state, _ = trained
  variables = _TinyInception().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  monkeypatch.setattr(evaluator.inception, 'InceptionV3', _TinyInception)
  monkeypatch.setattr(evaluator.inception, 'load_params', lambda path: variables)
  monkeypatch.setenv(evaluator.INCEPTION_ENV, 'weights.npz')
  run_cli(f'--workdir={workdir}')
  metrics = json.loads((workdir / f'eval_{int(state.step)}.json').read_text())
  assert set(metrics) == PROBE_KEYS | KNN_KEYS | FID_KEYS
  assert np.isfinite(metrics['fid']) and metrics['inception_score'] >= 1.0
  assert (workdir / 'fid_reference_train.npz').exists()


@pytest.mark.parametrize('flag,output', [('--raw_pixels', 'eval_raw_pixels.json'),
                                         ('--init', 'eval_0.json')])
def test_cli_baseline_rows(trained, flag, output):
  workdir, _, _ = trained
  run_cli(f'--workdir={workdir}', flag)
  metrics = json.loads((workdir / output).read_text())
  assert set(metrics) == PROBE_KEYS | KNN_KEYS


def test_cli_set_changes_one_eval_setting_and_keeps_other_results(trained):
  workdir, state, _ = trained
  default_result = workdir / f'eval_{int(state.step)}.json'
  default_result.write_text('{"kept": true}')
  run_cli(f'--workdir={workdir}', '--set=feature=bn_crelu_feat', '--set=probe_epochs=1')
  metrics = json.loads(
      (workdir / f'eval_{int(state.step)}_feature-bn_crelu_feat_probe_epochs-1.json').read_text())
  assert set(metrics) == PROBE_KEYS | KNN_KEYS
  assert json.loads(default_result.read_text()) == {'kept': True}
  assert run_dir.load_config(workdir).eval.feature == 'avepool_feat'  # config.json is untouched.


def test_cli_live_encoder_evaluates_e_itself_instead_of_its_ema(trained, monkeypatch):
  workdir, state, _ = trained
  seen = {}

  def scores(self, evaluated, step, *args, **kwargs):  # What is evaluated, not how.
    seen.update(state=jax.device_get(evaluated), step=step)
    return {'probe/top1': 0.5}

  monkeypatch.setattr(evaluator.Evaluator, '__call__', scores)
  run_cli(f'--workdir={workdir}', '--live_encoder')
  step, host = int(state.step), jax.device_get(state)
  assert json.loads((workdir / f'eval_{step}_live_encoder.json').read_text()) == {'probe/top1': 0.5}
  assert seen['step'] == step
  assert_trees_equal(seen['state'].e_ema_params, host.e_params)
  assert_trees_equal(seen['state'].e_ema_batch_stats, host.e_batch_stats)
  assert_trees_differ(host.e_ema_params, host.e_params)
  run_cli(f'--workdir={workdir}')  # By default the EMA.
  assert_trees_equal(seen['state'].e_ema_params, host.e_ema_params)


@pytest.mark.parametrize('args,message', [
    (['--step=3'], 'No checkpoint for step 3 in '),
    (['--init', '--live_encoder'], "--live_encoder evaluates a checkpoint's E; pass it without "),
    (['--init', '--raw_pixels'], 'Pass at most one of --step, --init and --raw_pixels.'),
    (['--set=epochs=3'], '--set=epochs=3 must be KEY=VALUE with KEY one of batch_size, '),
    (['--set=probe_epochs=many'], "--set=probe_epochs=many: 'many' is not a valid int for probe_epochs."),
    (['--set=feature=pixels'], "eval.feature='pixels' is not supported; "),
])
def test_cli_usage_errors(trained, args, message):
  workdir, _, _ = trained
  with pytest.raises(SystemExit) as info:
    run_cli(f'--workdir={workdir}', *args)
  assert str(info.value).startswith(f'error: {message}')


def test_cli_bad_workdir_is_one_sentence(tmp_path):
  cmd = [sys.executable, '-m', 'bigbigan_jax.evaluate', f'--workdir={tmp_path}/missing']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
  assert out.returncode == 1
  assert 'Traceback' not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: No config.json in ') and last.count('. ') == 0


def test_demo_summary_compares_e_with_both_baselines_and_names_its_images(trained):
  workdir, _, _ = trained
  lines = run_evaluation.quick_summary(str(workdir), 2).splitlines()
  assert len(lines) == 3
  suffix = f'_num_train_examples-{run_evaluation.QUICK_PROBE_EXAMPLES}'
  for name, line in (('2', 0), ('raw_pixels', 1), ('0', 1)):
    metrics = json.loads((workdir / f'eval_{name}{suffix}.json').read_text())
    assert f'{100 * metrics["probe/top1"]:.1f}% (1-NN {100 * metrics["knn/cosine_k1"]:.1f}%)' in lines[line]
  assert lines[0].startswith('E after 2 steps') and 'raw pixels' in lines[1]
  images = [word.rstrip('.') for word in lines[2].split() if word.endswith(('.png', '.png.'))]
  assert len(images) == 2 and all(os.path.exists(path) for path in images)
