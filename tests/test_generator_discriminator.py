"""Shapes, parameter counts, spectral norm and config errors of G and D."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbigan_jax import default_config
from bigbigan_jax.models import discriminator, generator, layers


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def paper_param_shapes():
  c = default_config.base_config()
  z = jnp.zeros((2, c.model.z_dim))
  g = jax.eval_shape(lambda: generator.Generator(c).init(jax.random.PRNGKey(0), z, train=True))
  d = jax.eval_shape(lambda: discriminator.Discriminator(c).init(
      jax.random.PRNGKey(0), jnp.zeros((2, 128, 128, 3)), z, train=True))
  return g['params'], d['params']


@pytest.mark.parametrize('resolution', [32, 64, 128])
def test_shapes_at_each_resolution(resolution):
  attn = {32: (16,), 64: (32,), 128: (64,)}[resolution]
  c = default_config.tiny_config(model__resolution=resolution, model__g_attn_res=attn,
                                 model__d_attn_res=attn, model__z_dim=60,
                                 model__g_ch=8, model__d_ch=8)
  g, d = generator.Generator(c), discriminator.Discriminator(c)

  def run(z):
    g_vars = g.init(jax.random.PRNGKey(1), z, train=True)
    x, _ = g.apply(g_vars, z, train=True, mutable=['spectral', 'batch_stats'])
    d_vars = d.init(jax.random.PRNGKey(2), x, z, train=True)
    return x, d.apply(d_vars, x, z, train=False)

  # Runs at 32 px; at 64 and 128 px only traces (compiling those on 2 CPU cores takes minutes).
  run = jax.jit(run) if resolution == 32 else functools.partial(jax.eval_shape, run)
  x, scores = run(jax.random.normal(jax.random.PRNGKey(0), (2, 60)))
  assert x.shape == (2, resolution, resolution, 3)
  if resolution == 32:
    assert 0.0 < float(jnp.max(jnp.abs(x))) <= 1.0
  assert set(scores) == {'score_x', 'score_z', 'score_xz'}
  assert all(s.shape == (2,) and s.dtype == jnp.float32 for s in scores.values())


def test_hierarchical_z_and_attention_placement():
  c = default_config.base_config()
  assert generator.num_z_chunks(128) == 6 and 120 // 6 == 20
  assert generator.block_resolutions(128) == [8, 16, 32, 64, 128]
  assert discriminator.block_resolutions(128) == [64, 32, 16, 8, 4, 4]
  g_params, d_params = paper_param_shapes()
  assert g_params['stem']['kernel'].shape == (20, 4 * 4 * 16 * 96)
  assert g_params['block0']['bn1']['gain']['kernel'].shape == (20 + 128, 16 * 96)
  assert 'attention64' in g_params and 'attention64' in d_params['F']
  assert g_params['embedding'].shape == (1, c.model.embed_dim)
  assert d_params['J']['proj']['kernel'].shape == (16 * 96 + 2048, 2048)


def test_paper_parameter_counts():
  g_params, d_params = paper_param_shapes()
  n_g, n_f = count(g_params), count(d_params['F'])
  n_h, n_j = count(d_params['H']), count(d_params['J'])
  print(f'G {n_g:,} F {n_f:,} H {n_h:,} J {n_j:,} D {count(d_params):,}')
  assert abs(n_g - 70.3e6) / 70.3e6 < 0.02  # SPEC 2.1 (compare_gan minus the class embedding).
  assert abs(n_f - 86.4e6) / 86.4e6 < 0.02  # SPEC 2.2 (compare_gan D minus its projection).
  assert abs(count(d_params) - 161_183_524) / 161_183_524 < 0.02  # SPEC 8 PyTorch reference.


def test_generator_output_dtype_with_bfloat16_activations():
  c = default_config.tiny_config(dtype='bfloat16')
  g = generator.Generator(c, jnp.bfloat16)
  z = jnp.ones((2, c.model.z_dim))
  variables = g.init(jax.random.PRNGKey(0), z, train=True)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables['params']))
  x, _ = g.apply(variables, z, train=True, mutable=['spectral', 'batch_stats'])
  assert x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x)))


def test_spectral_norm_converges_to_unit_top_singular_value():
  c = default_config.tiny_config()
  g = generator.Generator(c)
  z = jax.random.normal(jax.random.PRNGKey(0), (4, c.model.z_dim))
  variables = g.init(jax.random.PRNGKey(1), z, train=True)
  params = variables['params']
  # Random non-orthogonal kernels, so the test does not pass merely because init is orthogonal.
  keys = iter(jax.random.split(jax.random.PRNGKey(2), 1000))
  params = jax.tree.map(lambda p: 3.0 * jax.random.normal(next(keys), p.shape), params)
  spectral = variables['spectral']
  step = jax.jit(lambda s: g.apply({'params': params, 'spectral': s}, z, train=True,
                                   mutable=['spectral', 'batch_stats'])[1]['spectral'])
  for _ in range(100):
    spectral = step(spectral)

  checked = 0
  for path, u in jax.tree_util.tree_flatten_with_path(spectral)[0]:
    owner = params
    for key in path[:-1]:
      owner = owner[key.key]
    kernel = owner['kernel']

    class Probe(layers.nn.Module):
      @layers.nn.compact
      def __call__(self):
        return layers.spectral_normalize(self, kernel, update=False, eps=c.model.sn_eps)

    normalized = Probe().apply({'spectral': {'u': u}})
    sigma = float(layers.top_singular_value(normalized))
    assert abs(sigma - 1.0) < 0.05, (jax.tree_util.keystr(path), sigma)
    checked += 1
  assert checked > 20


@pytest.mark.parametrize('field,value,match', [
    ('model__resolution', 48, 'resolution 48 is not supported; use one of 32, 64, 128, 256'),
    ('model__g_attn_res', (12,), 'g_attn_res'),
    ('model__z_dim', 17, 'z_dim=17'),
])
def test_bad_generator_config(field, value, match):
  with pytest.raises(ValueError, match=match):
    generator.check_generator_config(default_config.tiny_config(**{field: value}))


def test_bad_discriminator_config():
  with pytest.raises(ValueError, match='resolution 100 is not supported'):
    discriminator.check_discriminator_config(default_config.tiny_config(model__resolution=100))
  with pytest.raises(ValueError, match='hj_depth=3'):
    discriminator.check_discriminator_config(default_config.tiny_config(model__hj_depth=3))
