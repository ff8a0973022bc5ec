"""Preflight of the GPU check: cuDNN fused attention against dense attention in bf16.

  python benchmarks/attention_check.py --config=configs/imagenet128.py --config.batch_size=128 \
      --json=/tmp/attention_check.json

At each self-attention shape of the config (G's at its batch; D's at twice the batch, the D
step's real + fake pair), with q, k, v drawn in bf16, it runs the output and the gradients of q,
k and v of sum(attention * cotangent) through the project's paths (`layers.attend`):

  fused    jax.nn.dot_product_attention, cuDNN flash attention (q, k zero-padded to v's width);
           only on a CUDA GPU: elsewhere it is recorded as unavailable
  dense    the [B, Q, K] weights materialised, logits in the model's logits dtype
  chunked  dense over blocks of `model.attention_chunk` query rows (the fallback)

and compares each with dense attention in float32 (highest matmul precision) on the same
inputs: the relative error is max |x - reference| / max |reference| per output. It times one
forward + backward call of each (median of --reps after a warm-up call).

The fused path passes when every output and gradient is finite and its relative error is at
most max(3 x the dense bf16 path's, 0.05); then `recommended_attention` is 'fused', else
'chunked' (the GPU check runs its benchmarks with that). The JSON holds every number.
"""

import json
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from bigbigan_jax.models import discriminator, generator, layers

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A config file (configs/*.py).', lock_config=True)
flags.DEFINE_integer('reps', 10, 'Timed forward + backward calls per path and shape.')
flags.DEFINE_string('json', '', 'Write the results as one JSON object to this file.')

# The fused path passes with errors at most max(ERROR_FACTOR x dense bf16's, ERROR_FLOOR).
ERROR_FACTOR = 3.0
ERROR_FLOOR = 0.05
OUTPUTS = ('out', 'dq', 'dk', 'dv')


def attention_shapes(config) -> list[dict]:
  """q, k, v shapes of every self-attention block of G and F (SelfAttention's layout)."""
  m = config.model
  found = []
  for net, channels, resolutions, attn_res, width, batch in (
      ('G', [out for _, out in generator.G_CHANNELS[m.resolution]],
       generator.block_resolutions(m.resolution), m.g_attn_res, m.g_ch, config.batch_size),
      ('D', [out for _, out, _ in discriminator.F_BLOCKS[m.resolution]],
       discriminator.block_resolutions(m.resolution), m.d_attn_res, m.d_ch,
       2 * config.batch_size)):
    for res in attn_res:
      c = channels[resolutions.index(res)] * width
      n = res * res
      found.append({'name': f'{net} attention at {res}x{res}, {c} channels, batch {batch}',
                    'q': [batch, n, c // 8], 'k': [batch, n // 4, c // 8],
                    'v': [batch, n // 4, c // 2]})
  return found


def loss_and_grads(implementation, logits_dtype, chunk):
  """jit of (q, k, v, ct) -> (attention output, (dq, dk, dv)) of sum(output * ct)."""
  def loss(q, k, v, ct):
    out = layers.attend(q, k, v, implementation=implementation, logits_dtype=logits_dtype,
                        chunk=chunk)
    return jnp.sum(out.astype(jnp.float32) * ct), out
  grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  return jax.jit(lambda q, k, v, ct: (lambda r: (r[0][1], r[1]))(grad(q, k, v, ct)))


@jax.jit
def reference_loss_and_grads(q, k, v, ct):
  """loss_and_grads of dense attention in float32 at the highest matmul precision."""
  def loss(q, k, v):
    logits = jnp.einsum('bqc,bkc->bqk', q, k, precision='highest')
    out = jnp.einsum('bqk,bkc->bqc', jax.nn.softmax(logits, axis=-1), v, precision='highest')
    return jnp.sum(out * ct), out
  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  return out, grads


def timed(fn, args, reps):
  """(first call's results, median seconds of `reps` further calls)."""
  result = jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return result, statistics.median(times)


def relative_errors(result, reference) -> dict[str, float]:
  (out, grads), (ref_out, ref_grads) = result, reference
  errors = {}
  for name, x, ref in zip(OUTPUTS, (out, *grads), (ref_out, *ref_grads)):
    x = x.astype(jnp.float32)  # On the device: no copies of the [B, Q, C] arrays to the host.
    scale = float(jnp.max(jnp.abs(ref))) or 1.0
    finite = bool(jnp.all(jnp.isfinite(x)))
    errors[name] = float(jnp.max(jnp.abs(x - ref))) / scale if finite else float('inf')
  return errors


def check_shape(shape, config, reps) -> dict:
  logits_dtype = layers.residual_dtype(config, jnp.bfloat16)
  chunk = config.model.attention_chunk
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q, k, v = (jax.random.normal(key, shape[name], jnp.bfloat16)
             for key, name in zip(keys, 'qkv'))
  ct = jax.random.normal(keys[3], shape['q'][:2] + shape['v'][2:], jnp.float32)
  reference = jax.block_until_ready(reference_loss_and_grads(
      *(t.astype(jnp.float32) for t in (q, k, v)), ct))
  entry = {'name': shape['name'], 'q': shape['q'], 'k': shape['k'], 'v': shape['v'],
           'logits_dtype': jnp.dtype(logits_dtype).name}

  for path in ('dense', 'chunked'):
    result, seconds = timed(loss_and_grads(path, logits_dtype, chunk), (q, k, v, ct), reps)
    entry[path] = {'relative_error': relative_errors(result, reference),
                   'forward_backward_ms': 1e3 * seconds}

  if jax.default_backend() != 'gpu':
    entry['fused'] = {'status': 'unavailable',
                      'reason': f'cuDNN attention needs a CUDA GPU; the backend is '
                                f'{jax.default_backend()}'}
    return entry
  fn = loss_and_grads('fused', logits_dtype, chunk)
  try:
    lowered = fn.lower(q, k, v, ct)
    if 'cudnn' not in lowered.as_text().lower() and 'cudnn' not in lowered.compile().as_text().lower():
      entry['fused'] = {'status': 'unavailable',
                        'reason': 'the fused path compiled without a cuDNN attention call'}
      return entry
    result, seconds = timed(fn, (q, k, v, ct), reps)
  except Exception as e:  # pylint: disable=broad-except
    entry['fused'] = {'status': 'failed', 'reason': f'{type(e).__name__}: {str(e)[:500]}',
                      'traceback': traceback.format_exc()}
    return entry
  errors = relative_errors(result, reference)
  limits = {name: max(ERROR_FACTOR * entry['dense']['relative_error'][name], ERROR_FLOOR)
            for name in OUTPUTS}
  too_large = [name for name in OUTPUTS if not errors[name] <= limits[name]]
  entry['fused'] = {
      'status': 'failed' if too_large else 'ok',
      'reason': (f'relative error above the limit for {", ".join(too_large)}'
                 if too_large else 'errors within the limits'),
      'relative_error': errors, 'error_limit': limits, 'forward_backward_ms': 1e3 * seconds}
  return entry


def fmt_errors(errors: dict) -> str:
  return ' '.join(f'{k} {v:.2e}' for k, v in errors.items())


def main(argv):
  del argv
  config = FLAGS.config
  device = jax.devices()[0]
  report = {'backend': jax.default_backend(), 'device_kind': device.device_kind,
            'jax_version': jax.__version__, 'dtype': 'bfloat16', 'shapes': []}
  print(f'attention preflight on {device.device_kind} (backend {report["backend"]}, '
        f'jax {jax.__version__}), bf16 inputs, reference: dense float32')
  for shape in attention_shapes(config):
    print(f'  {shape["name"]}: q {shape["q"]}, k {shape["k"]}, v {shape["v"]}')
    try:
      entry = check_shape(shape, config, FLAGS.reps)
    except Exception as e:  # pylint: disable=broad-except  (e.g. out of memory in the reference)
      traceback.print_exc()
      entry = {**shape, 'fused': {'status': 'failed', 'reason': f'the check itself failed: '
                                  f'{type(e).__name__}: {str(e)[:500]}'}}
    report['shapes'].append(entry)
    if 'traceback' in entry['fused']:
      print(entry['fused']['traceback'], file=sys.stderr)
    for path in ('fused', 'dense', 'chunked'):
      r = entry.get(path)
      if r is None:
        continue
      if 'forward_backward_ms' in r:
        print(f'    {path:8s} fwd+bwd {r["forward_backward_ms"]:9.3f} ms; relative error '
              f'{fmt_errors(r["relative_error"])}' + (f' ({r["status"]})' if 'status' in r else ''))
      else:
        print(f'    {path:8s} {r["status"]}: {r["reason"]}')
  statuses = [e['fused']['status'] for e in report['shapes']]
  if not statuses:
    report['status'], report['reason'] = 'unavailable', 'the config has no attention'
  elif all(s == 'ok' for s in statuses):
    report['status'], report['reason'] = 'ok', 'cuDNN attention matches at every shape'
  else:
    worst = next(e for e in report['shapes'] if e['fused']['status'] != 'ok')
    report['status'] = 'unavailable' if 'unavailable' in statuses else 'failed'
    report['reason'] = f'{worst["name"]}: {worst["fused"]["reason"]}'
  report['recommended_attention'] = 'fused' if report['status'] == 'ok' else 'chunked'
  print(f'fused attention: {report["status"]} ({report["reason"]}); '
        f'benchmarks use {report["recommended_attention"]} attention')
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(report, f, indent=1)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
