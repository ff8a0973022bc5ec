"""parallel.initialize_distributed: which settings reach jax.distributed.initialize, and when
nothing is initialised. No distributed run is started: jax.distributed is replaced."""

import os

import jax
import pytest
from jax._src import cloud_tpu_init

from bigbigan_jax import parallel

_SLURM = {'SLURM_JOB_ID': '4242', 'SLURM_STEP_NODELIST': 'gpu[01-02]', 'SLURM_NTASKS': '16',
          'SLURM_PROCID': '9', 'SLURM_LOCALID': '1'}
_OMPI = {'OMPI_MCA_orte_hnp_uri': '1531576320.0;tcp://10.96.0.1:34911',
         'OMPI_COMM_WORLD_SIZE': '4', 'OMPI_COMM_WORLD_RANK': '3'}
_JAX = {'JAX_COORDINATOR_ADDRESS': '10.0.0.2:8476', 'JAX_NUM_PROCESSES': '4',
        'JAX_PROCESS_ID': '3'}


@pytest.fixture
def calls(monkeypatch):
  """A plain machine: no cluster variables, not a TPU VM; records initialize's arguments."""
  for name in list(os.environ):
    if name.startswith(('SLURM_', 'OMPI_', 'JAX_', 'TPU_WORKER')):
      monkeypatch.delenv(name)
  monkeypatch.setattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', False)
  recorded = []
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: bool(recorded))
  def initialize(*args, initialization_timeout, shutdown_timeout_seconds):
    timeout = int(os.environ.get('JAX_INITIALIZATION_TIMEOUT', 300))
    assert initialization_timeout == timeout, 'the wait for the other processes'
    assert shutdown_timeout_seconds == timeout, 'the wait for the others at exit'
    recorded.append(args)

  monkeypatch.setattr(jax.distributed, 'initialize', initialize)
  return recorded


def _set(monkeypatch, env):
  for name, value in env.items():
    monkeypatch.setenv(name, value)


def test_plain_machine_initialises_nothing(calls):
  assert parallel.initialize_distributed() is None
  assert calls == []


@pytest.mark.parametrize('env, expected, how', [
    (_SLURM, (None, None, None), 'SLURM'),
    (_OMPI, (None, None, None), 'Open MPI'),
    ({'TPU_WORKER_HOSTNAMES': 't1k-0,t1k-1'}, (None, None, None), 'Cloud TPU'),
    (_JAX, ('10.0.0.2:8476', 4, 3), 'coordinator 10.0.0.2:8476'),
    # Settings given by environment variables win over the cluster's own.
    ({**_SLURM, 'JAX_COORDINATOR_ADDRESS': 'gpu01:9999'}, ('gpu01:9999', None, None), 'SLURM'),
])
def test_environment_decides(calls, monkeypatch, env, expected, how):
  _set(monkeypatch, env)
  assert parallel.initialize_distributed() == how
  assert calls == [expected]


def test_cloud_tpu_vm_is_detected_as_jax_detects_it(calls, monkeypatch):
  monkeypatch.setattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', True)
  assert parallel.initialize_distributed() == 'Cloud TPU'
  assert calls == [(None, None, None)]


@pytest.mark.parametrize('env', [{**_SLURM, 'SLURM_NTASKS': '1'},
                                 {**_OMPI, 'OMPI_COMM_WORLD_SIZE': '1'},
                                 {'TPU_WORKER_HOSTNAMES': 'localhost'}])
def test_single_task_clusters_keep_every_local_device(calls, monkeypatch, env):
  _set(monkeypatch, env)
  assert parallel.initialize_distributed() is None
  assert calls == []


def test_arguments_win_over_environment_variables(calls, monkeypatch):
  _set(monkeypatch, _JAX)
  assert parallel.initialize_distributed('host-a:1234', 2, 0) == 'coordinator host-a:1234'
  assert calls == [('host-a:1234', 2, 0)]


def test_arguments_complete_a_cluster(calls, monkeypatch):
  _set(monkeypatch, _SLURM)
  assert parallel.initialize_distributed(process_id=3) == 'SLURM'
  assert calls == [(None, None, 3)]


def test_the_wait_for_the_other_processes_comes_from_the_environment(calls, monkeypatch):
  _set(monkeypatch, {**_SLURM, 'JAX_INITIALIZATION_TIMEOUT': '1800'})
  assert parallel.initialize_distributed() == 'SLURM'  # initialize checks the 1800 s.
  assert len(calls) == 1


def test_initialises_once(calls, monkeypatch):
  _set(monkeypatch, _SLURM)
  parallel.initialize_distributed()
  parallel.initialize_distributed()
  assert len(calls) == 1


@pytest.mark.parametrize('kwargs, env, message', [
    ({'coordinator_address': '10.0.0.2:8476'}, {}, 'process count unset, process id unset'),
    ({'num_processes': 2, 'process_id': 0}, {}, 'address unset, process count 2'),
    ({}, {'JAX_COORDINATOR_ADDRESS': '10.0.0.2:8476', 'JAX_PROCESS_ID': '1'},
     'process count unset'),
    ({}, {**_JAX, 'JAX_NUM_PROCESSES': 'four'}, "$JAX_NUM_PROCESSES='four' must be a whole"),
    ({'coordinator_address': '10.0.0.2', 'num_processes': 2, 'process_id': 0}, {},
     'must be host:port'),
    ({'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 2}, {},
     'process id must be in [0, process count), not 2'),
    ({'coordinator_address': 'h:1', 'num_processes': 0, 'process_id': 0}, {},
     'at least 1, not 0'),
])
def test_incomplete_or_bad_settings_fail_in_one_sentence(calls, monkeypatch, kwargs, env,
                                                         message):
  _set(monkeypatch, env)
  with pytest.raises(ValueError) as error:
    parallel.initialize_distributed(**kwargs)
  assert message in str(error.value)
  assert str(error.value).count('. ') == 0 and str(error.value).endswith('.')
  assert calls == []
