"""on_process_zero's protocol, with two threads standing in for two processes and a dict for
the coordination service's key-value store: process 0 works alone while the other waits; a
stop requested on the waiting process ends process 0's work at its next check and the
evaluation on both; an error on process 0 reaches both. test_multiprocess.py runs it for real
(two processes, the success path)."""

import threading
import time

import jax
import pytest
from orbax.checkpoint import multihost

from bigbigan_jax import stop_requests

EPOCHS = 40
EPOCH_S = 0.05


class KeyValueStore:
  """The coordination service's key-value calls that on_process_zero makes."""

  def __init__(self):
    self.values = {}
    self.changed = threading.Condition()

  def key_value_set(self, key, value):
    with self.changed:
      assert key not in self.values, key
      self.values[key] = value
      self.changed.notify_all()

  def key_value_dir_get(self, prefix):
    with self.changed:
      return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]

  def blocking_key_value_get(self, key, timeout_ms):
    with self.changed:
      if not self.changed.wait_for(lambda: key in self.values, timeout_ms / 1000):
        raise jax.errors.JaxRuntimeError(f'DEADLINE_EXCEEDED: {key}')
      return self.values[key]


class PerThread(threading.local):
  """What each process has of its own: its index, its stop request and its turn counter."""
  index = 0
  local = 0
  turns = 0

  def __next__(self):
    self.turns += 1
    return self.turns


@pytest.fixture
def two_processes(monkeypatch):
  store, me = KeyValueStore(), PerThread()
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: me.index)
  monkeypatch.setattr(multihost, 'get_jax_distributed_client', lambda: store)
  monkeypatch.setattr(stop_requests, 'STOP', me)
  monkeypatch.setattr(stop_requests, '_TURNS', me)
  monkeypatch.setattr(stop_requests, 'POLL_MS', 10)

  def run(work, stop_on_1=0):
    """Each process's evaluate_unless_stopped outcome (0 or the stop kind, or the exception),
    and the epochs process 0 ran."""
    outcomes, epochs = [None, None], []

    def evaluate(state, step, writer, between_batches):
      del state, step, writer
      return stop_requests.on_process_zero(lambda between: work(between, epochs), between_batches)

    def process(index):
      me.index, me.local = index, stop_on_1 if index == 1 else 0
      never = type('Agreement', (), {'lagged': lambda self: 0})()
      try:
        outcomes[index] = stop_requests.evaluate_unless_stopped(evaluate, None, 1, None, never)
      except Exception as e:  # pylint: disable=broad-except
        outcomes[index] = e

    threads = [threading.Thread(target=process, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
      t.start()
    for t in threads:
      t.join(timeout=60)
    return outcomes, len(epochs)

  return run


def epochs_of_work(between, epochs):
  for _ in range(EPOCHS):
    time.sleep(EPOCH_S)
    epochs.append(1)
    between()
  return {'top1': 0.5}


def test_the_others_wait_for_process_zero(two_processes):
  outcomes, epochs = two_processes(epochs_of_work)
  assert outcomes == [0, 0] and epochs == EPOCHS


def test_a_stop_on_a_waiting_process_ends_the_work_at_the_next_check(two_processes):
  outcomes, epochs = two_processes(epochs_of_work, stop_on_1=stop_requests.StopRequests.PREEMPTED)
  assert outcomes == [stop_requests.StopRequests.PREEMPTED] * 2
  # Process 1 posts within one poll (10 ms) of starting to wait; process 0 reads the post at
  # the end of its epoch then, or of the next one.
  assert epochs <= 2


def test_an_error_on_process_zero_reaches_the_others(two_processes):
  def broken(between, epochs):
    del between, epochs
    raise ValueError('no shards')

  outcomes, _ = two_processes(broken)
  assert isinstance(outcomes[0], ValueError)
  assert isinstance(outcomes[1], RuntimeError) and 'ValueError: no shards' in str(outcomes[1])
