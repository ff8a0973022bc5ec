"""One process of a 2-process x 2-CPU-device training run, for test_multiprocess.py.

usage: multiprocess_worker.py WORKDIR STEPS PROCESS_ID PORT SIGTERM_AT_STEP

Runs main.run on mock ImageNet; the process whose id is 1 sends itself SIGTERM before the step
SIGTERM_AT_STEP (0: never), as a preempted host would receive it. At the end each process writes
its final state's step and a digest of every array to WORKDIR/state_<id>.npz.
"""

import os
import signal
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import logging  # noqa: E402

jax.config.update('jax_platforms', 'cpu')

from conftest import tiny_training_config  # noqa: E402
from bigbigan_jax import main, train  # noqa: E402


def run(workdir: str, steps: int, process_id: int, port: int, sigterm_at: int) -> None:
  final = {}
  train_and_evaluate, make_train_step = train.train_and_evaluate, train.train_step.make_train_step

  def keep_final_state(*args, **kwargs):
    final['state'] = train_and_evaluate(*args, **kwargs)
    return final['state']

  def preempted_before(config, mesh):
    step_fn = make_train_step(config, mesh)

    def step(state, batch):
      if process_id == 1 and int(state.step) + 1 == sigterm_at:
        os.kill(os.getpid(), signal.SIGTERM)
      return step_fn(state, batch)
    return step

  train.train_and_evaluate, train.train_step.make_train_step = keep_final_state, preempted_before
  with tfds.testing.mock_data(num_examples=64):
    main.run(tiny_training_config(steps), workdir, (f'127.0.0.1:{port}', 2, process_id))
  state = jax.device_get(final['state'])
  digest = [np.asarray(leaf, np.float64).sum() for leaf in jax.tree.leaves(state)]
  np.savez(os.path.join(workdir, f'state_{process_id}.npz'), step=int(state.step),
           digest=np.asarray(digest))


if __name__ == '__main__':
  logging.set_verbosity(logging.INFO)
  run(sys.argv[1], *map(int, sys.argv[2:]))
