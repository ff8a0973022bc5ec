"""One process of a 2-process x 2-CPU-device training run, for test_multiprocess.py (which
starts it with XLA_FLAGS giving it 2 CPU devices).

usage: multiprocess_worker.py WORKDIR STEPS PROCESS_ID PORT SIGTERM_AT FAIL_RESTORE_ONCE EVAL_EVERY

Runs training_command.run on mock ImageNet, evaluating every EVAL_EVERY steps (0: never); the
process whose id is 1 sends itself SIGTERM, as a preempted host would receive it, when its
input pipeline yields batch SIGTERM_AT (0: never), or with SIGTERM_AT=eval when it writes its
first batch of test-split features in an evaluation. prefetch_to_mesh pulls data.prefetch + 1
batches before the step is compiled: batch 1 arrives during start-up, before the first step.
A run not sent SIGTERM then takes EXTRA_STEPS more steps on global_batches. At the end each
process writes to WORKDIR/state_<id>.npz its final state's step, a digest of every array,
those steps' metrics, the rows and bytes of the features it wrote, and its evaluation metrics,
and exits with training_command's exit code. With FAIL_RESTORE_ONCE=1, process 1's first
checkpoint read raises OSError (a transient GCS error). Process 0 compiles the programs both
processes run and hands them to process 1 (share_compiled_programs).
"""

import json
import os
import signal
import sys

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from conftest import tiny_training_config
from jax._src import cache_key  # JAX internals, for share_compiled_programs only.

from bigbigan_jax import input_pipeline, parallel, run_dir, train, train_step, training_command
from bigbigan_jax.evaluation import evaluator, feature_store

EXTRA_STEPS = 2


def share_compiled_programs() -> None:
  """Process 0 compiles each program of both processes and hands it to process 1 (JAX's
  jax_share_binary_between_hosts), and in later launches both read the cache entries process 0
  wrote. On CPU, JAX's cache key hashes a topology fingerprint that differs between the
  processes of one run, so that neither could happen: process 1 compiled every program again
  in every launch. Here the devices' kinds stand in for that fingerprint; the program's device
  assignment, which names the devices of both processes, stays in the key. Left off where
  this JAX lacks those functions: process 1 would otherwise wait for a program under a key
  process 0 never writes."""
  if not all(hasattr(cache_key, f) for f in ('_hash_accelerator_config', '_hash_devices')):
    return
  cache_key._hash_accelerator_config = cache_key._hash_devices
  jax.config.update('jax_share_binary_between_hosts', True)
  jax.config.update('jax_share_binary_between_hosts_timeout_ms',
                    1000 * parallel.wait_limit_s())


def run(workdir: str, steps: int, process_id: int, port: int, sigterm_at: str,
        fail_restore_once: int, eval_every: int) -> None:
  final, written, evaluations = {}, {'rows': 0, 'bytes': 0}, []
  train_and_evaluate, train_iterator = train.train_and_evaluate, input_pipeline.train_iterator
  restore, reads = run_dir.restore, []

  def transient_failure(*args, **kwargs):
    reads.append(args[1])
    if process_id == 1 and fail_restore_once and len(reads) == 1:
      raise OSError('Connection reset by peer')
    return restore(*args, **kwargs)

  run_dir.restore, run_dir.RETRY_SECONDS = transient_failure, 0.1

  def keep_final_state(*args, **kwargs):
    try:
      final['state'] = train_and_evaluate(*args, **kwargs)
    except train.Stopped as e:
      final['state'] = e.state
      raise
    return final['state']

  def preempted_at(*args, **kwargs):
    for i, batch in enumerate(train_iterator(*args, **kwargs)):
      if process_id == 1 and str(i + 1) == sigterm_at:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  append, write_shard, evaluate = (feature_store.FeatureWriter.append,
                                   feature_store.FeatureWriter._write, evaluator.Evaluator.__call__)

  def append_or_preempt(self, features, labels):
    if process_id == 1 and sigterm_at == 'eval' and self._directory.name == 'test' and not (
        self._buffered or self._num_shards):
      os.kill(os.getpid(), signal.SIGTERM)
    written['rows'] += len(labels)
    return append(self, features, labels)

  def counted_write(self, count):
    write_shard(self, count)
    shard = self._num_shards - 1
    for name in ('features', 'labels'):
      written['bytes'] += os.path.getsize(self._directory / f'{name}_{shard:05d}.npy')

  def kept_metrics(*args, **kwargs):
    evaluations.append(evaluate(*args, **kwargs))
    return evaluations[-1]

  feature_store.FeatureWriter.append, feature_store.FeatureWriter._write = (append_or_preempt,
                                                                            counted_write)
  evaluator.Evaluator.__call__ = kept_metrics
  train.train_and_evaluate, input_pipeline.train_iterator = keep_final_state, preempted_at
  config = tiny_training_config(steps, image_every_steps=1000,  # Grids at the end only.
                                eval__every_steps=eval_every)
  code = 0
  with tfds.testing.mock_data(num_examples=64):
    try:
      training_command.run(config, workdir, (f'127.0.0.1:{port}', 2, process_id))
    except SystemExit as e:
      code = e.code
  state, metrics = final['state'], []
  if sigterm_at == '0':  # Then also the same global batches as a 1-process x 4-device run.
    state, metrics = extra_steps(state, config, process_id)
  state = jax.device_get(state)
  np.savez(os.path.join(workdir, f'state_{process_id}.npz'), step=int(state.step),
           digest=digest(state), metrics=np.asarray(metrics), rows=written['rows'],
           bytes=written['bytes'], evaluations=json.dumps(evaluations))
  sys.exit(code)


def digest(state) -> np.ndarray:
  return np.asarray([np.asarray(leaf, np.float64).sum() for leaf in jax.tree.leaves(state)])


def global_batches(config, count: int) -> list[np.ndarray]:
  """Train-step batches of the whole run (every process's rows), the same in every process."""
  shape = (config.optim.d_steps + 1, config.batch_size, 32, 32, 3)
  return [np.random.default_rng(k).integers(0, 256, shape, np.uint8) for k in range(count)]


def extra_steps(state, config, process_id: int):
  """EXTRA_STEPS train steps on global_batches, each process feeding its half of the rows."""
  mesh = parallel.make_mesh()
  rows = config.batch_size // jax.process_count()
  batches = [b[:, process_id * rows:(process_id + 1) * rows]
             for b in global_batches(config, EXTRA_STEPS)]
  local = lambda b: parallel.global_array(mesh, {'image': b})
  step = train.compile_on_every_process(train_step.make_train_step(config, mesh), state,
                                        local(batches[0]))
  metrics = []
  for batch in batches:
    state, out = step(state, local(batch))
    metrics.append([float(np.asarray(out[k].addressable_data(0))) for k in sorted(out)])
  return state, metrics


if __name__ == '__main__':
  logging.set_verbosity(logging.INFO)
  share_compiled_programs()
  workdir, steps, process_id, port, sigterm_at, fail_restore_once, eval_every = sys.argv[1:]
  run(workdir, int(steps), int(process_id), int(port), sigterm_at, int(fail_restore_once),
      int(eval_every))
