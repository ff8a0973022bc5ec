"""Throughput of the real train step on synthetic data already on the devices (JAX only).

  python benchmarks/train_step.py --config=configs/imagenet128.py \
      --config.batch_size=128 --config.optim.d_steps=1
  python benchmarks/train_step.py --config=configs/imagenet128.py --config.batch_size=128 \
      --compile_only          # FLOPs and the memory analysis, nothing run
  python benchmarks/train_step.py --config=configs/tiny.py --steps=3 --profile=/tmp/trace
  PYTHONPATH=<libtpu> python benchmarks/train_step.py --config=configs/imagenet128.py \
      --config.batch_size=128 --tpu_topology=v3:2x2 --num_devices=1   # TPU v3 core, no TPU

Prints images/s (E/G update images, i.e. the global batch, per step), s/step, TFLOP/step from
XLA's cost analysis, MFU against --peak_tflops or the chip's entry in PEAK_TFLOPS, peak device
memory (the allocator's peak where the device reports one, else the compiled memory analysis)
and the compile time. Warm-up steps are excluded from the timing. No TensorFlow is imported.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding
from ml_collections import config_flags

from bigbigan_jax import parallel, train_step

# Dense bf16 peak TFLOP/s per JAX device (a TPU v2/v3 device is one core, later TPUs one chip).
PEAK_TFLOPS = {
    'NVIDIA H100 80GB HBM3': 989.0,
    'NVIDIA H100': 989.0,
    'NVIDIA H200': 989.0,
    'NVIDIA A100-SXM4-80GB': 312.0,
    'NVIDIA A100-SXM4-40GB': 312.0,
    'TPU v2': 22.5,
    'TPU v3': 61.5,
    'TPU v4': 275.0,
    'TPU v5 lite': 197.0,
    'TPU v5e': 197.0,
    'TPU v5p': 459.0,
    'TPU v6 lite': 918.0,
    'TPU v6e': 918.0,
}
GIB = 2.0**30

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A config file (configs/*.py).', lock_config=True)
flags.DEFINE_integer('steps', 10, 'Timed steps.')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
flags.DEFINE_float('peak_tflops', 0.0, 'Peak TFLOP/s per device for MFU (0: the PEAK_TFLOPS entry).')
flags.DEFINE_bool('compile_only', False, 'Compile and print the analyses; run nothing.')
flags.DEFINE_string('profile', '', 'Write a jax.profiler trace of the timed steps to this folder.')
flags.DEFINE_string('json', '', 'Also append the results as one JSON line to this file.')
flags.DEFINE_string('tpu_topology', '', 'Compile only, for this TPU topology (e.g. v3:2x2) '
                    'through libtpu, on a machine without TPUs.')
flags.DEFINE_integer('num_devices', 0, 'Devices of the mesh (0: all).')


def synthetic_batch(config, mesh):
  """uint8 images [d_steps + 1, global batch, E_res, E_res, C], made on and sharded over `mesh`."""
  r = config.encoder.resolution
  shape = (config.optim.d_steps + 1, config.batch_size, r, r, config.data.num_channels)
  make = jax.jit(lambda key: jax.random.randint(key, shape, 0, 256, jnp.int32).astype(jnp.uint8),
                 out_shardings=NamedSharding(mesh, parallel.STEP_BATCH))
  return make(jax.random.PRNGKey(1))


def initial_state(config, mesh):
  init = jax.jit(lambda key: train_step.init_state(config, key),
                 out_shardings=NamedSharding(mesh, parallel.REPLICATED))
  return init(jax.random.PRNGKey(config.seed))


def abstract(tree, mesh, spec):
  sharding = NamedSharding(mesh, spec)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def cost_flops(compiled) -> float:
  """Total FLOPs of one call over all devices (XLA's count is per device program)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


def memory_analysis(compiled) -> dict[str, float]:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  fields = ('argument', 'output', 'alias', 'temp', 'generated_code')
  out = {f'{f}_gib': getattr(m, f'{f}_size_in_bytes', 0) / GIB for f in fields}
  out['total_gib'] = (out['argument_gib'] + out['output_gib'] - out['alias_gib'] + out['temp_gib']
                      + out['generated_code_gib'])
  return out


def mesh_devices():
  if FLAGS.tpu_topology:
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    devices = topologies.get_topology_desc(platform='tpu',
                                           topology_name=FLAGS.tpu_topology).devices
  else:
    devices = jax.devices()
  return devices[:FLAGS.num_devices or len(devices)]


def peak_tflops(device) -> float:
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops
  return PEAK_TFLOPS.get(device.device_kind, 0.0)


def main(argv):
  del argv
  config = FLAGS.config
  mesh = parallel.make_mesh(mesh_devices())
  devices, device = mesh.size, mesh.devices.flat[0]
  step = train_step.make_train_step(config, mesh)
  shapes = jax.eval_shape(lambda: train_step.init_state(config, jax.random.PRNGKey(0)))
  r = config.encoder.resolution
  batch_shape = jax.ShapeDtypeStruct(
      (config.optim.d_steps + 1, config.batch_size, r, r, config.data.num_channels), jnp.uint8)

  start = time.perf_counter()
  lowered = step.lower(abstract(shapes, mesh, parallel.REPLICATED),
                       {'image': abstract(batch_shape, mesh, parallel.STEP_BATCH)})
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start

  flops = cost_flops(compiled) * devices
  memory = memory_analysis(compiled)
  result = {
      'config': config.name, 'device': device.device_kind, 'devices': devices,
      'batch_size': config.batch_size, 'd_steps': config.optim.d_steps, 'dtype': config.dtype,
      'attention': config.model.attention, 'remat': config.model.remat,
      'float32_residuals': config.float32_residuals,
      'compile_s': round(compile_s, 1), 'tflop_per_step': flops / 1e12,
      'gflop_per_image': flops / 1e9 / config.batch_size,
      'memory_analysis_gib_per_device': {k: round(v, 3) for k, v in memory.items()},
  }
  print(f'{config.name} on {devices} x {device.device_kind}: batch {config.batch_size}, '
        f'd_steps {config.optim.d_steps}, dtype {config.dtype}')
  print(f'compile {compile_s:.1f} s; {flops / 1e12:.4g} TFLOP/step '
        f'({flops / 1e9 / config.batch_size:.4g} GFLOP per image)')
  if memory:
    print('memory analysis per device (GiB): ' +
          ', '.join(f'{k[:-4]} {v:.2f}' for k, v in memory.items()))

  if not (FLAGS.compile_only or FLAGS.tpu_topology):
    state, batch = initial_state(config, mesh), {'image': synthetic_batch(config, mesh)}
    for _ in range(FLAGS.warmup):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    if FLAGS.profile:
      jax.profiler.start_trace(FLAGS.profile)
    start = time.perf_counter()
    for i in range(FLAGS.steps):
      with jax.profiler.StepTraceAnnotation('train', step_num=i):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / FLAGS.steps
    if FLAGS.profile:
      jax.profiler.stop_trace()
    if not np.isfinite(float(metrics['eg_loss'])):
      raise SystemExit('The step produced a non-finite loss.')
    peak = peak_tflops(device)
    achieved = flops / step_s / devices / 1e12
    stats = device.memory_stats() or {}
    result.update({
        'timed_steps': FLAGS.steps, 'profiled': bool(FLAGS.profile),
        's_per_step': step_s, 'images_per_s': config.batch_size / step_s,
        'tflops_per_device': achieved, 'peak_tflops_per_device': peak,
        'mfu': achieved / peak if peak else None,
        'peak_memory_gib': stats['peak_bytes_in_use'] / GIB if 'peak_bytes_in_use' in stats else None,
    })
    print(f'{step_s:.4f} s/step, {config.batch_size / step_s:.1f} images/s, '
          f'{achieved:.1f} TFLOP/s per device' +
          (f', MFU {100 * achieved / peak:.1f}% of {peak:g}' if peak else
           ' (no peak known for this device: pass --peak_tflops for MFU)'))
    if result['peak_memory_gib'] is not None:
      print(f'peak device memory {result["peak_memory_gib"]:.2f} GiB')
  if FLAGS.json:
    with open(FLAGS.json, 'a') as f:
      f.write(json.dumps(result) + '\n')


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
