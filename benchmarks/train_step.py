"""Throughput of the real train step on synthetic data already on the devices (JAX only).

  python benchmarks/train_step.py --config=configs/imagenet128.py \
      --config.batch_size=128 --config.optim.d_steps=1 --model_tflop_per_step=49.44
  JAX_PLATFORMS=cpu python benchmarks/train_step.py --config=configs/imagenet128.py \
      --config.batch_size=128 --config.model.attention=dense --compile_only
                              # FLOPs (the model FLOPs when counted so) and memory, nothing run
  python benchmarks/train_step.py --config=configs/tiny.py --steps=3 --profile=/tmp/trace
  PYTHONPATH=<libtpu> python benchmarks/train_step.py --config=configs/imagenet128.py \
      --config.batch_size=128 --tpu_topology=v3:2x2 --num_devices=1   # TPU v3 core, no TPU

Prints images/s (E/G update images, i.e. the global batch, per step), s/step, MFU, peak device
memory (the allocator's peak where the device reports one, else the compiled memory analysis)
and the compile time. Warm-up steps are excluded from the timing; a profile (--profile) records
--profile_steps further steps after the timed ones. No TensorFlow is imported.

MFU is model FLOPs per second over the peak (--peak_tflops, else the chip's PEAK_TFLOPS entry).
The model FLOPs come from --model_tflop_per_step: XLA's cost analysis of the step compiled on
CPU with dense attention (the --compile_only command above; benchmarks/model_flops.json keeps
the paper config's counts, and `bash benchmarks/gpu_check.sh flops` makes them). XLA's count of
the program actually compiled here is printed beside it as "XLA cost analysis", and is no
model count: on GPU it takes each cuDNN convolution, cuBLAS matmul and cuDNN attention call as
-1 FLOP, and a loop (chunked attention) body once. --hardware_tflop_per_step (FLOPs including
remat's recomputation, counted the same way) adds HFU.
"""

import json
import time
from typing import Optional

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
flags.DEFINE_float('model_tflop_per_step', 0.0,
                   'Model TFLOP per step (all devices) for MFU: XLA\'s count on CPU with dense '
                   'attention. 0: no MFU.')
flags.DEFINE_string('model_flops_source', '', 'Where --model_tflop_per_step comes from (recorded).')
flags.DEFINE_float('hardware_tflop_per_step', 0.0,
                   'TFLOP per step including remat\'s recomputation, for HFU (0: none).')
flags.DEFINE_bool('compile_only', False, 'Compile and print the analyses; run nothing.')
flags.DEFINE_string('profile', '', 'Write a jax.profiler trace of --profile_steps steps, run '
                    'after the timed ones, to this folder.')
flags.DEFINE_integer('profile_steps', 3, 'Steps in the profile.')
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


def cost_flops(compiled) -> Optional[float]:
  """XLA's FLOPs of one device program (None where the backend gives no cost analysis)."""
  try:
    cost = compiled.cost_analysis()
  except Exception as e:  # pylint: disable=broad-except
    print(f'no XLA cost analysis: {type(e).__name__}: {e}')
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0)) if cost else None


def finite_or_none(x: float) -> Optional[float]:
  return x if np.isfinite(x) else None


def memory_analysis(compiled) -> dict[str, float]:
  try:
    m = compiled.memory_analysis()
  except Exception as e:  # pylint: disable=broad-except
    print(f'no memory analysis: {type(e).__name__}: {e}')
    return {}
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

  xla_flops = cost_flops(compiled)
  xla_flops = xla_flops * devices if xla_flops is not None else float('nan')
  memory = memory_analysis(compiled)
  result = {
      'config': config.name, 'device': device.device_kind, 'devices': devices,
      'backend': jax.default_backend(), 'jax_version': jax.__version__,
      'batch_size': config.batch_size, 'd_steps': config.optim.d_steps, 'dtype': config.dtype,
      'attention': config.model.attention, 'remat': config.model.remat,
      'float32_residuals': config.float32_residuals, 'compile_s': round(compile_s, 1),
      # XLA's count of this program (not the model's FLOPs on GPU: see the docstring).
      'xla_cost_analysis_tflop_per_step': finite_or_none(xla_flops / 1e12),
      'xla_cost_analysis_gflop_per_image': finite_or_none(xla_flops / 1e9 / config.batch_size),
      'memory_analysis_gib_per_device': {k: round(v, 3) for k, v in memory.items()},
  }
  print(f'{config.name} on {devices} x {device.device_kind}: batch {config.batch_size}, '
        f'd_steps {config.optim.d_steps}, dtype {config.dtype}, attention '
        f'{config.model.attention}, remat {config.model.remat}, float32 residuals '
        f'{config.float32_residuals}')
  print(f'compile {compile_s:.1f} s; XLA cost analysis of this program: {xla_flops / 1e12:.4g} '
        f'TFLOP/step ({xla_flops / 1e9 / config.batch_size:.4g} GFLOP per image)')
  if memory:
    print('memory analysis per device (GiB): ' +
          ', '.join(f'{k[:-4]} {v:.2f}' for k, v in memory.items()))

  if not (FLAGS.compile_only or FLAGS.tpu_topology):
    state, batch = initial_state(config, mesh), {'image': synthetic_batch(config, mesh)}
    for _ in range(FLAGS.warmup):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / FLAGS.steps
    if not np.isfinite(float(metrics['eg_loss'])):
      raise SystemExit('The step produced a non-finite loss.')
    profile_error = None
    if FLAGS.profile:
      try:  # A profiler failure loses the profile, not the timing.
        jax.profiler.start_trace(FLAGS.profile)
        for i in range(FLAGS.profile_steps):
          with jax.profiler.StepTraceAnnotation('train', step_num=i):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        jax.profiler.stop_trace()
      except Exception as e:  # pylint: disable=broad-except
        profile_error = f'{type(e).__name__}: {e}'
        print(f'profile failed: {profile_error}')
    peak = peak_tflops(device)
    model_tflop = FLAGS.model_tflop_per_step or None
    hardware_tflop = FLAGS.hardware_tflop_per_step or model_tflop
    per_device = lambda tflop: tflop / step_s / devices if tflop else None
    ratio = lambda tflop: per_device(tflop) / peak if tflop and peak else None
    stats = device.memory_stats() or {}
    result.update({
        'timed_steps': FLAGS.steps, 'warmup_steps': FLAGS.warmup,
        'profiled_steps': FLAGS.profile_steps if FLAGS.profile else 0,
        'profile_error': profile_error,
        's_per_step': step_s, 'images_per_s': config.batch_size / step_s,
        'peak_tflops_per_device': peak or None,
        'model_tflop_per_step': model_tflop, 'model_flops_source': FLAGS.model_flops_source,
        'model_tflops_per_device': per_device(model_tflop), 'mfu': ratio(model_tflop),
        'hardware_tflop_per_step': hardware_tflop, 'hfu': ratio(hardware_tflop),
        'xla_cost_analysis_tflops_per_device': finite_or_none(xla_flops / 1e12 / step_s / devices),
        'peak_memory_gib': stats['peak_bytes_in_use'] / GIB if 'peak_bytes_in_use' in stats else None,
    })
    print(f'{step_s:.4f} s/step over {FLAGS.steps} steps, {config.batch_size / step_s:.1f} images/s')
    if result['mfu'] is not None:
      print(f'MFU {100 * result["mfu"]:.3g}%: {model_tflop:.4g} model TFLOP/step '
            f'({FLAGS.model_flops_source or "given"}) = {per_device(model_tflop):.4g} TFLOP/s per '
            f'device of {peak:g}' + (f'; HFU {100 * result["hfu"]:.3g}% ({hardware_tflop:.4g} '
                                     'TFLOP/step with recomputation)'
                                     if hardware_tflop != model_tflop else ''))
    else:
      print('no MFU: ' + ('pass --model_tflop_per_step' if not model_tflop else
                          'no peak known for this device: pass --peak_tflops'))
    print(f'XLA cost analysis of this program: {xla_flops / 1e12 / step_s / devices:.4g} TFLOP/s per '
          'device (not the model FLOPs on GPU)')
    if result['peak_memory_gib'] is not None:
      print(f'peak device memory {result["peak_memory_gib"]:.2f} GiB')
  if FLAGS.json:
    with open(FLAGS.json, 'a') as f:
      f.write(json.dumps(result) + '\n')


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
