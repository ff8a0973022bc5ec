"""Data parallelism: a 1-D mesh of all devices with axis `batch`, the shard_map wrapper, and
host batches to global arrays. The same code runs on 1 CPU, a GPU box or a TPU pod slice."""

import os
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


def initialize_distributed() -> None:
  """Joins the multi-host run when there is one (Cloud TPU pods, or SLURM/MPI-style env vars)."""
  on_tpu_pod = bool(os.environ.get('TPU_WORKER_HOSTNAMES', '').count(','))
  if on_tpu_pod or 'JAX_COORDINATOR_ADDRESS' in os.environ:
    jax.distributed.initialize()


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


def global_array(mesh: Mesh, local: Any, spec: P = STEP_BATCH) -> Any:
  """Assembles this process's part of a batch (a pytree of numpy arrays) into global arrays."""
  sharding = NamedSharding(mesh, spec)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


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
