"""Data parallelism: a 1-D mesh of all devices with axis `batch`, the shard_map wrapper, and
host batches to global arrays. The same code runs on 1 CPU, a GPU box or a TPU pod slice."""

import itertools
import os
import re
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'batch'
REPLICATED = P()
# Train batches are [updates per step, batch, ...]: shard the batch axis.
STEP_BATCH = P(None, AXIS)
# Evaluation batches are [batch, ...].
EVAL_BATCH = P(AXIS)


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> Optional[str]:
  """Joins the multi-process run when there is one; returns how, or None on a single process.

  Each setting comes from its argument, else from $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES
  or $JAX_PROCESS_ID, else from the cluster JAX detects (Cloud TPU VM, or SLURM or Open MPI
  with more than one task). wait_limit_s() bounds the wait for the other processes, here and
  at exit. Without a cluster, an address needs the other two and vice versa.
  Must run before anything touches a device.
  """
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS') or None
  if num_processes is None:
    num_processes = _int_from_env('JAX_NUM_PROCESSES')
  if process_id is None:
    process_id = _int_from_env('JAX_PROCESS_ID')
  given = (coordinator_address, num_processes, process_id)
  cluster = detect_cluster()
  if cluster is None and all(value is None for value in given):
    return None
  if cluster is None and any(value is None for value in given):
    raise ValueError(
        'A multi-process run outside SLURM, Open MPI or a Cloud TPU VM needs all three of the '
        'coordinator address, the process count and the process id (--coordinator_address, '
        '--num_processes, --process_id or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, '
        f'$JAX_PROCESS_ID); got {_describe(given)}.')
  _check_settings(*given)
  if not jax.distributed.is_initialized():
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=wait_limit_s(),
                               shutdown_timeout_seconds=wait_limit_s())
  return cluster or f'coordinator {coordinator_address}'


def wait_limit_s() -> int:
  """How long a process waits for the others to join, reach a barrier or shut down:
  $JAX_INITIALIZATION_TIMEOUT seconds, default 300."""
  return _int_from_env('JAX_INITIALIZATION_TIMEOUT') or 300


_BARRIERS = itertools.count()


def barrier(name: str, timeout_s: Optional[int] = None) -> None:
  """Waits until every process gets here (nothing on one process), up to `timeout_s` (default
  wait_limit_s()).

  A barrier of the coordination service, not a collective on the devices: put one before a
  collective that follows work whose length differs between processes (start-up, restore):
  on CPU the first collective gives up after 30 s of waiting for the others (Gloo).
  """
  if jax.process_count() > 1:
    from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
    multihost.get_barrier_sync_fn()(key=f'{name} #{next(_BARRIERS)}',
                                    timeout_ms=(timeout_s or wait_limit_s()) * 1000)


def detect_cluster() -> Optional[str]:
  """The multi-process environment JAX's cluster detection would use here, or None.

  SLURM and Open MPI count only with more than one task: a single task keeps every local
  device (JAX would give a SLURM task only the GPU numbered $SLURM_LOCALID).
  """
  slurm = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID')
  if all(name in os.environ for name in slurm) and _int_from_env('SLURM_NTASKS') > 1:
    return 'SLURM'
  if 'OMPI_MCA_orte_hnp_uri' in os.environ and (_int_from_env('OMPI_COMM_WORLD_SIZE') or 1) > 1:
    return 'Open MPI'
  if _on_cloud_tpu_vm():
    return 'Cloud TPU'
  return None


def _on_cloud_tpu_vm() -> bool:
  """True on a Cloud TPU VM (JAX's own check at import: TPU chips and libtpu) or GKE TPU pod."""
  from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  return (bool(getattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', False)) or
          bool(os.environ.get('TPU_WORKER_HOSTNAMES', '').count(',')))


def _int_from_env(name: str) -> Optional[int]:
  value = os.environ.get(name, '').strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'${name}={value!r} must be a whole number.') from None


def _check_settings(coordinator_address: Optional[str], num_processes: Optional[int],
                    process_id: Optional[int]) -> None:
  if coordinator_address is not None and not re.fullmatch(r'.+:\d+', coordinator_address):
    raise ValueError(f'The coordinator address {coordinator_address!r} must be host:port, '
                     'such as 10.0.0.2:8476.')
  if num_processes is not None and num_processes < 1:
    raise ValueError(f'The process count must be at least 1, not {num_processes}.')
  if process_id is not None and not (
      0 <= process_id < (num_processes if num_processes is not None else process_id + 1)):
    raise ValueError(f'The process id must be in [0, process count), not {process_id}.')


def _describe(given: tuple[Optional[str], Optional[int], Optional[int]]) -> str:
  names = ('address', 'process count', 'process id')
  return ', '.join(f'{name} {"unset" if value is None else value}'
                   for name, value in zip(names, given))


def make_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (AXIS,))


def check_global_batch(global_batch: int, num_devices: int, what: str = 'batch_size') -> None:
  if global_batch <= 0 or global_batch % num_devices:
    raise ValueError(f'{what}={global_batch} must be a positive multiple of the device count '
                     f'({num_devices}), such as {max(1, global_batch // num_devices) * num_devices}.')


def shard_map_jit(fn: Callable, mesh: Mesh, in_specs, out_specs, donate_argnums=()) -> Callable:
  """Runs `fn` as the per-device program on every device of `mesh`, compiled once.

  Without varying-value checks, differentiation inside `fn` has pmap's semantics: the gradient
  of a device's local loss is local, so averaging it with `lax.pmean` (cross-replica BatchNorm
  included) gives the gradient of the global mean loss. With the checks on, JAX would already
  sum it over devices when the parameters are replicated.
  """
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
  return jax.jit(mapped, donate_argnums=donate_argnums)


def from_every_process(value: int) -> list[int]:
  """Every process's `value` (an int or bool), in process order, on every process."""
  if jax.process_count() == 1:
    return [int(value)]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  barrier('values from every process')  # What came before may take longer on some processes.
  return [int(x) for x in multihost_utils.process_allgather(np.asarray(value, np.int32))]


def processes(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
  """(process index, process count), each JAX's own where None."""
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  return process_index, process_count


def per_process(batch_size: int, process_count: int) -> int:
  """Each process's share of a global batch."""
  if batch_size % process_count:
    raise ValueError(
        f'Batch size {batch_size} is not divisible by the process count {process_count}.')
  return batch_size // process_count


def eval_batches_per_process(num_examples: int, process_count: int, per_process_batch: int) -> int:
  """Batches every process yields in one padded pass over `num_examples` split evenly."""
  ceil_div = lambda a, b: -(-a // b)
  return ceil_div(ceil_div(num_examples, process_count), per_process_batch)


def global_array(mesh: Mesh, local: Any, spec: P = STEP_BATCH) -> Any:
  """Assembles this process's part of a batch (a pytree of numpy arrays) into global arrays."""
  sharding = NamedSharding(mesh, spec)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of an array sharded on its first axis, in order, each row once: the
  rows its part of the batch held (global_array)."""
  shards = {shard.index[0].start or 0: shard.data for shard in x.addressable_shards}
  return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])


def replicate(mesh: Mesh, tree: Any) -> Any:
  return jax.device_put(tree, NamedSharding(mesh, REPLICATED))


def prefetch_to_mesh(mesh: Mesh, batches: Iterator[Any], size: int = 2,
                     spec: P = STEP_BATCH) -> Iterator[Any]:
  """Keeps `size` batches transferred ahead of the one being consumed."""
  queue = []
  for batch in batches:
    queue.append(global_array(mesh, batch, spec))
    if len(queue) > size:
      yield queue.pop(0)
  yield from queue
