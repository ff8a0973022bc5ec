"""Two processes x two CPU devices on 127.0.0.1 through jax.distributed, as a pod slice runs.

A SIGTERM to one process (a preempted host) must make both save the same step and exit 0, and
the same command must then resume both to the end with identical states.
"""

import os
import socket
import subprocess
import sys

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_two_processes(workdir, steps, sigterm_at):
  """Exit codes and stderr of both processes, always cleaned up."""
  port = free_port()
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([TESTS, REPO]), 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  procs = [subprocess.Popen(
      [sys.executable, os.path.join(TESTS, 'multiprocess_worker.py'), str(workdir), str(steps),
       str(i), str(port), str(sigterm_at)], env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    errors = [p.communicate(timeout=420)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
  return [p.returncode for p in procs], errors


def final_states(workdir):
  states = [np.load(workdir / f'state_{i}.npz') for i in range(2)]
  return [int(s['step']) for s in states], [s['digest'] for s in states]


def checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())


def test_sigterm_to_one_process_saves_the_same_step_everywhere_and_resumes(tmp_path):
  codes, errors = run_two_processes(tmp_path, steps=6, sigterm_at=3)
  assert codes == [0, 0], errors[0][-3000:] + errors[1][-3000:]
  steps, digests = final_states(tmp_path)
  # Both processes stopped after the same step, past the signal, and saved it.
  assert steps[0] == steps[1] and 3 <= steps[0] < 6
  assert steps[0] in checkpoint_steps(tmp_path)
  np.testing.assert_array_equal(digests[0], digests[1])
  assert 'Stopping at step' in errors[0] and 'Process 0 of 2' in errors[0]

  codes, errors = run_two_processes(tmp_path, steps=6, sigterm_at=0)
  assert codes == [0, 0], errors[0][-3000:] + errors[1][-3000:]
  steps, digests = final_states(tmp_path)
  assert steps == [6, 6]
  np.testing.assert_array_equal(digests[0], digests[1])
  assert checkpoint_steps(tmp_path)[-1] == 6
