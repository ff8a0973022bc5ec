"""Stop requests: SIGTERM and Ctrl-C recorded on each process from program start, combined
across processes so that every process stops at the same point of training or evaluation."""

import itertools
import json
import signal
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from bigbigan_jax import parallel


class StopRequests:
  """SIGTERM and the first Ctrl-C, recorded from the moment `install` runs (program start).

  A second Ctrl-C interrupts at once. Processes combine their requests (`Agreement`), so every
  process stops after the same step. XLA's preemption notifier is not used: it misses a signal
  that arrives before the first step of a resumed run.
  """
  PREEMPTED, USER = 1, 2

  def __init__(self):
    self.local = 0
    self.previous = {}

  def install(self) -> None:
    """Takes SIGTERM and SIGINT; again after jax.distributed.initialize, which takes SIGTERM."""
    for signum in (signal.SIGTERM, signal.SIGINT):
      if signum == signal.SIGINT and self.local == self.USER:
        continue  # The next Ctrl-C interrupts at once.
      previous = signal.signal(signum, self)
      if previous is not self:
        self.previous.setdefault(signum, previous)

  def __call__(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      self.local = self.USER
      signal.signal(signal.SIGINT, signal.default_int_handler)
    else:
      self.local = max(self.local, self.PREEMPTED)

  def uninstall(self) -> None:
    for signum, handler in self.previous.items():
      signal.signal(signum, handler)
    self.previous = {}
    self.local = 0


STOP = StopRequests()


class Agreement:
  """The stop requests of all processes, combined by a small all-reduce each step.

  `lagged()` dispatches the combination of this step's requests and returns the previous
  step's, so every process reads the same value at the same step and the steps never wait on it.
  """

  def __init__(self, mesh):
    self.multi = jax.process_count() > 1
    self.pending = None
    if self.multi:
      self.size = mesh.size
      self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(parallel.AXIS))
      self.combine = jax.jit(jax.numpy.max, out_shardings=jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec()))

  def _dispatch(self):
    flags = np.full((self.size,), STOP.local, np.int32)
    return self.combine(jax.make_array_from_callback((self.size,), self.sharding,
                                                     lambda index: flags[index]))

  def now(self) -> int:
    """Waits for every process's request (start-up, before compiling the step)."""
    if not self.multi:
      return STOP.local
    parallel.barrier('stop requests at start-up')
    return int(np.asarray(self._dispatch().addressable_data(0)))

  def lagged(self) -> int:
    if not self.multi:
      return STOP.local
    previous, self.pending = self.pending, self._dispatch()
    return 0 if previous is None else int(np.asarray(previous.addressable_data(0)))


class _EvaluationStopped(Exception):

  def __init__(self, kind: int):
    super().__init__(kind)
    self.kind = kind


def evaluate_unless_stopped(evaluate_fn, state, step: int, writer, agreement: Agreement) -> int:
  """Runs the evaluation; a stop requested meanwhile ends it between two of its batches, at the
  same batch on every process, and is returned (0: it ran to the end)."""

  def between_batches():
    kind = agreement.lagged()
    if kind:
      raise _EvaluationStopped(kind)

  try:
    evaluate_fn(state, step, writer, between_batches)
  except _EvaluationStopped as e:
    logging.warning('Evaluation at step %d cut short by a stop request.', step)
    return e.kind
  return 0


_TURNS = itertools.count()
POLL_MS = 1000  # How often a waiting process looks for process 0's result.


def on_process_zero(fn: Callable[[Callable[[], None]], Any], check: Callable[[], None]) -> Any:
  """`fn(between)` on process 0 only, its JSON-able result returned on every process.

  `fn` calls `between()` between units of its work; on one process that is `check`. With
  several, the others wait on the coordination service's key-value store (a device collective
  would give up after 30 s on CPU) and post a stop requested on them meanwhile; process 0 reads
  the posts at each `between()` and a stop ends `fn` there, on every process as an evaluation
  stop. An error in `fn` is raised on every process.
  """
  if jax.process_count() == 1:
    return fn(check)
  from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
  client = multihost.get_jax_distributed_client()
  prefix = f'bigbigan_jax/process_zero/{next(_TURNS)}'
  if jax.process_index() == 0:
    return _lead(fn, client, prefix)
  posted = False
  while True:
    try:
      outcome = json.loads(client.blocking_key_value_get(f'{prefix}/outcome', POLL_MS))
      break
    except jax.errors.JaxRuntimeError as e:
      if 'DEADLINE_EXCEEDED' not in str(e):
        raise
    if STOP.local and not posted:
      client.key_value_set(f'{prefix}/stop/{jax.process_index()}', str(STOP.local))
      posted = True
  if 'stopped' in outcome:
    raise _EvaluationStopped(outcome['stopped'])
  if 'failed' in outcome:
    raise RuntimeError(f'Process 0 failed while the others waited for it: {outcome["failed"]}')
  return outcome['result']


def _lead(fn, client, prefix: str) -> Any:
  def between():
    kind = max([STOP.local] + [int(v) for _, v in client.key_value_dir_get(f'{prefix}/stop/')])
    if kind:
      raise _EvaluationStopped(kind)

  try:
    result = fn(between)
  except _EvaluationStopped as e:
    client.key_value_set(f'{prefix}/outcome', json.dumps({'stopped': e.kind}))
    raise
  except BaseException as e:
    client.key_value_set(f'{prefix}/outcome', json.dumps({'failed': f'{type(e).__name__}: {e}'}))
    raise
  client.key_value_set(f'{prefix}/outcome', json.dumps({'result': result}))
  return result
