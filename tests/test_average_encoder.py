"""benchmarks/average_encoder.py: E's weights averaged over checkpoints, its statistics measured."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from conftest import (assert_trees_differ, assert_trees_equal, initial_state, load_benchmark,
                      tiny_training_config)

from bigbigan_jax import parallel, run_dir
from bigbigan_jax.evaluation import evaluator

def two_checkpoints(workdir):
  """A run directory holding the tiny config's initial states of seeds 0 and 1 as steps 2 and 4."""
  config = tiny_training_config(4)
  workdir.mkdir()
  run_dir.save_config(workdir, config)
  manager = run_dir.checkpoint_manager(workdir, config)
  for step, seed in ((2, 0), (4, 1)):
    manager.save(step, args=ocp.args.StandardSave(initial_state(config, seed).replace(step=step)))
  manager.wait_until_finished()
  manager.close()


def test_the_evaluated_encoder_is_the_mean_of_the_checkpoints(tmp_path, monkeypatch):
  workdir = run_dir.path(str(tmp_path / 'run'))
  two_checkpoints(workdir)
  evaluated = {}

  def scores(self, state, step, *args, **kwargs):  # The probe itself is tested elsewhere.
    evaluated.update(state=jax.device_get(state), step=step)
    return {'probe/top1': 0.5, 'knn/cosine_k1': 0.4, 'knn/cosine_k25': 0.3}

  monkeypatch.setattr(evaluator.Evaluator, '__call__', scores)
  average_encoder = load_benchmark('average_encoder')
  with tfds.testing.mock_data(num_examples=64):
    path, metrics = average_encoder.average_and_evaluate(str(workdir), [2, 4], bn_batches=2)
    with pytest.raises(run_dir.MissingCheckpoint, match='No checkpoint for step 3'):
      average_encoder.average_and_evaluate(str(workdir), [3, 4], bn_batches=2)

  config, mesh = run_dir.load_config(workdir), parallel.make_mesh()
  two, four = (jax.device_get(run_dir.read_checkpoint(workdir, step, config, mesh))
               for step in (2, 4))
  state = evaluated['state']
  assert evaluated['step'] == 4
  jax.tree.map(lambda a, b, mean: np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-6,
                                                             atol=1e-8),
               two.e_params, four.e_params, state.e_ema_params)
  assert_trees_differ(two.e_params, four.e_params)
  assert_trees_equal(state.g_ema_params, four.g_ema_params)
  # The statistics are measured for the averaged weights, not step 4's running averages.
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.e_ema_batch_stats),
                                                   jax.tree.leaves(four.e_batch_stats)))
  written = json.loads(open(path).read())
  assert written == metrics and written['averaged_steps'] == [2, 4]
