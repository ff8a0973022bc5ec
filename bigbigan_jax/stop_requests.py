"""Stop requests: SIGTERM and Ctrl-C recorded on each process from program start, combined
across processes so that every process stops at the same point of training or evaluation."""

import signal

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
