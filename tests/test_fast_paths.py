"""The faster and smaller paths compute what the reference paths compute: attention variants,
D split into F and the scores, rematerialised blocks, and the float32-residual switch."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from bigbigan_jax import default_config, image_views
from bigbigan_jax.models import bigbigan, layers

TOL = dict(rtol=2e-5, atol=2e-5)
# largest_errors measured natively (AVX-512), under XLA_FLAGS=--xla_cpu_max_isa=AVX2 and under
# SSE4_2, with the initialisation and inputs seeded 0-4 for remat and 0-1 for the attention
# paths: chunked and fused attention <= 2e-8; remat <= 2.7e-6 for the samples, <= 6e-7 for the
# scores and the loss, <= 3e-7 for the gradients except G's at seed 4 natively, 2.1e-4 (G's
# BatchNorm over 4 samples amplifies rounding that rematerialisation reorders). A wrong path is
# off by O(1).
REFERENCE_PATH_TOLERANCE = 1e-3


def assert_close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **(tol or TOL)), a, b)


def _qkv(seed=0, b=2, q=48, k=12, cq=3, cv=8):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(keys[0], (b, q, cq)), jax.random.normal(keys[1], (b, k, cq)),
          jax.random.normal(keys[2], (b, k, cv)))


@pytest.mark.parametrize('implementation,chunk', [('chunked', 16), ('chunked', 20), ('fused', 0)])
def test_attention_implementations_equal_dense(implementation, chunk):
  q, k, v = _qkv()
  loss = lambda impl, c: lambda *a: jnp.sum(jnp.sin(layers.attend(*a, implementation=impl,
                                                                   chunk=c)))
  dense = jax.value_and_grad(loss('dense', 0), argnums=(0, 1, 2))(q, k, v)
  other = jax.value_and_grad(loss(implementation, chunk), argnums=(0, 1, 2))(q, k, v)
  assert_close(dense, other)


def test_dense_attention_is_softmax_of_unscaled_logits():
  q, k, v = _qkv(b=1, q=4, k=3)
  weights = np.exp(np.einsum('bqc,bkc->bqk', q, k))
  expected = np.einsum('bqk,bkc->bqc', weights / weights.sum(-1, keepdims=True), v)
  assert_close(layers.attend(q, k, v, implementation='dense'), expected)


def test_unknown_attention_implementation():
  with pytest.raises(ValueError, match="'flash' is not one of"):
    layers.attend(*_qkv(), implementation='flash')


def _config(**overrides):
  return default_config.tiny_config(**overrides)


def _inputs(c, seed=0, n=4):
  rng = np.random.default_rng(seed)
  r = c.encoder.resolution
  x = image_views.to_float(rng.integers(0, 256, (n, r, r, 3), np.uint8))
  z = rng.standard_normal((n, c.model.z_dim)).astype(np.float32)
  return x, z


def _init(c):
  x, z = _inputs(c)
  g, e, d = bigbigan.build_models(c)
  key = jax.random.PRNGKey(0)
  return ({'g': g.init(key, z, train=True), 'e': e.init({'params': key, 'sample': key}, x, train=True),
           'd': d.init(key, x, z, train=True)})


def _outputs_and_grads(c, variables):
  """G's samples, E's z_mean, D's scores and their gradients w.r.t. every parameter."""
  x, z = _inputs(c, seed=1)
  g, e, d = bigbigan.build_models(c)

  def run(params):
    x_fake, _ = g.apply({**variables['g'], 'params': params['g']}, z, train=True,
                        mutable=['spectral', 'batch_stats'])
    enc, _ = e.apply({**variables['e'], 'params': params['e']}, x, train=True,
                     mutable=['batch_stats'], rngs={'sample': jax.random.PRNGKey(2)})
    scores = d.apply({**variables['d'], 'params': params['d']},
                     jnp.concatenate([x, x_fake]), jnp.concatenate([enc['z_sample'], z]),
                     train=False)
    total = sum(jnp.sum(s) for s in scores.values())
    return total, (x_fake, enc['z_mean'], scores)

  params = {k: v['params'] for k, v in variables.items()}
  return jax.jit(jax.value_and_grad(run, has_aux=True))(params)


def largest_errors(reference, other):
  """For each output and each network's gradients: the largest difference from the reference
  over the largest magnitude in the reference.

  Elementwise tolerances do not fit here: gradients that are 0 in exact arithmetic (a bias in
  front of BatchNorm) hold only rounding noise, which any change of operation order redraws.
  """
  (value, outputs), grads = reference
  (other_value, other_outputs), other_grads = other
  groups = {'loss': (value, other_value),
            **{name: pair for name, pair in zip(('samples', 'z_mean', 'scores'),
                                                 zip(outputs, other_outputs))},
            **{f'{net} gradients': (grads[net], other_grads[net]) for net in grads}}
  errors = {}
  for name, (a, b) in groups.items():
    a, b = ([np.asarray(leaf) for leaf in jax.tree.leaves(tree)] for tree in (a, b))
    scale = max(np.abs(leaf).max() for leaf in a)
    errors[name] = max(np.abs(x - y).max() for x, y in zip(a, b)) / scale
  return errors


@pytest.fixture(scope='module')
def reference_path():
  """(variables, outputs and gradients) of the dense, no-remat path, computed once."""
  reference = _config(model__attention='dense')
  variables = _init(reference)
  return variables, _outputs_and_grads(reference, variables)


@pytest.mark.parametrize('overrides', [dict(model__remat=True),
                                       dict(model__attention='chunked', model__attention_chunk=8),
                                       dict(model__attention='fused')])
def test_networks_equal_the_reference_paths(overrides, reference_path):
  variables, reference = reference_path
  errors = largest_errors(reference, _outputs_and_grads(_config(**overrides), variables))
  assert max(errors.values()) < REFERENCE_PATH_TOLERANCE, errors


def test_discriminator_split_into_features_and_scores():
  """The E/G update scores F(real) and F(fake) computed apart; F has no batch statistics."""
  c = _config()
  variables = _init(c)['d']
  d = bigbigan.build_models(c).discriminator
  x_real, z_real = _inputs(c, seed=3)
  x_fake, z_fake = _inputs(c, seed=4)
  z = jnp.concatenate([z_real, z_fake])

  def joint(x_fake):
    return d.apply(variables, jnp.concatenate([x_real, x_fake]), z, train=False)

  def split(x_fake):
    f_real = d.apply(variables, x_real, train=False, method='features')
    f_fake = d.apply(variables, x_fake, train=False, method='features')
    return d.apply(variables, jnp.concatenate([f_real, f_fake]), z, train=False, method='scores')

  total = lambda fn: lambda x: sum(jnp.sum(jnp.tanh(s)) for s in fn(x).values())
  assert_close(joint(x_fake), split(x_fake))
  assert_close(jax.grad(total(joint))(x_fake), jax.grad(total(split))(x_fake))


def _residual_dtypes(c):
  """dtypes of the outputs of G's, D's and E's residual blocks and attention layers."""
  x, z = _inputs(c)
  g, e, d = bigbigan.build_models(c)
  variables = _init(_config())
  calls = [lambda: g.apply(variables['g'], z, train=True, capture_intermediates=True,
                           mutable=['spectral', 'batch_stats', 'intermediates']),
           lambda: e.apply(variables['e'], x, train=True, capture_intermediates=True,
                           mutable=['batch_stats', 'intermediates']),
           lambda: d.apply(variables['d'], x, z, train=False, capture_intermediates=True,
                           mutable=['intermediates'])]
  dtypes = set()
  for call in calls:
    flat = traverse_util.flatten_dict(call()[1]['intermediates'])
    dtypes |= {out.dtype for path, (out,) in flat.items()
               if len(path) > 1 and re.fullmatch(r'block\d+|attention\d+|stage\d+_unit\d+', path[-2])}
  return dtypes


def test_float32_residuals():
  """Residual streams in float32 under bfloat16 with the switch; nothing changes in float32."""
  assert _residual_dtypes(_config(dtype='bfloat16')) == {jnp.dtype(jnp.bfloat16)}
  assert _residual_dtypes(_config(dtype='bfloat16', float32_residuals=True)) == {
      jnp.dtype(jnp.float32)}
  variables = _init(_config())
  reference = _outputs_and_grads(_config(), variables)
  jax.tree.map(np.testing.assert_array_equal, reference,
               _outputs_and_grads(_config(float32_residuals=True), variables))
