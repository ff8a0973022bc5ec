"""Tests for the encoder E: backbones, feature sizes, the z head, BatchNorm and sizes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbigan_jax import default_config
from bigbigan_jax.models import encoder

RNGS = {'params': jax.random.key(0), 'sample': jax.random.key(1)}
# SPEC section 8: torchvision ResNet-50 without fc plus a 4096-wide two-block residual MLP head.
REFERENCE_E_PARAMS = 100_009_264


def _config(**fields):
  c = default_config.tiny_config()
  for key, value in fields.items():
    c.encoder[key] = value
  return c


def _images(n=4, res=32, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, res, res, 3), minval=-1.0, maxval=1.0)


def _num_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _init_shapes(config, res, **kwargs):
  model = encoder.Encoder(config, **kwargs)
  x = jnp.zeros((2, res, res, 3))
  return jax.eval_shape(lambda: model.init_with_output(RNGS, x, train=False))


@pytest.fixture(scope='module')
def tiny():
  """A ResNet-26 at base width 4 (128-D feature), initialised at 32 px."""
  config = _config()
  model = encoder.Encoder(config)
  return config, model, model.init(RNGS, _images(), train=False)


@pytest.mark.parametrize('name, expected', [
    ('resnet26', ('resnet', 26, 1)),
    ('resnet50', ('resnet', 50, 1)),
    ('resnet101x2', ('resnet', 101, 2)),
    ('revnet50x4', ('revnet', 50, 4)),
    ('revnet26x1', ('revnet', 26, 1)),
])
def test_parse_encoder_name(name, expected):
  assert encoder.parse_encoder_name(name) == expected


@pytest.mark.parametrize('name', ['resnet18', 'resnet50x3', 'vgg16', 'ResNet50', 'resnet050', ''])
def test_unknown_encoder_name_raises(name):
  with pytest.raises(ValueError, match=r"use one of resnet26, .*revnet101, .*x1, x2, x4\.$"):
    encoder.parse_encoder_name(name)
  with pytest.raises(ValueError, match='is not supported'):
    _init_shapes(_config(name=name), 32)


@pytest.mark.parametrize('shape', [(2, 32, 32, 1), (2, 16, 16, 3), (32, 32, 3)])
def test_bad_input_shape_raises(shape):
  model = encoder.Encoder(_config())
  with pytest.raises(ValueError, match='Encoder input must be'):
    jax.eval_shape(lambda: model.init(RNGS, jnp.zeros(shape), train=False))


@pytest.mark.parametrize('name', ['resnet26', 'revnet26', 'resnet26x2', 'revnet50x2'])
@pytest.mark.parametrize('res', [32, 64, 128])
def test_output_shapes(name, res):
  config = _config(name=name, resolution=res)
  out, variables = _init_shapes(config, res)
  d = 32 * config.encoder.base_width * encoder.parse_encoder_name(name)[2]
  z_dim = config.model.z_dim
  assert {k: v.shape for k, v in out.items()} == {
      'z_mean': (2, z_dim), 'z_stdev': (2, z_dim), 'z_sample': (2, z_dim),
      'avepool_feat': (2, d), 'bn_crelu_feat': (2, 2 * d)}
  assert all(v.dtype == jnp.float32 for v in out.values())
  # Parameter shapes do not depend on the input size.
  _, variables_32 = _init_shapes(config, 32)
  assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(lambda a: a.shape, variables_32)


def test_same_params_work_at_other_resolution(tiny):
  _, model, variables = tiny
  model_64 = encoder.Encoder(_config(resolution=64))
  out_32 = model.apply(variables, _images(res=32), train=False, rngs={'sample': jax.random.key(2)})
  out_64 = model_64.apply(variables, _images(res=64), train=False,
                          rngs={'sample': jax.random.key(2)})
  for out in (out_32, out_64):
    assert out['avepool_feat'].shape == (4, 128)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())
  assert not np.allclose(out_32['z_mean'], out_64['z_mean'])


def test_revnet_trains_and_evaluates():
  model = encoder.Encoder(_config(name='revnet26'))

  @jax.jit
  def run(x):
    variables = model.init(RNGS, x, train=False)
    train_out, updated = model.apply(variables, x, train=True, rngs={'sample': jax.random.key(2)},
                                     mutable=['batch_stats'])
    eval_out = model.apply({**variables, **updated}, x, train=False,
                           rngs={'sample': jax.random.key(2)})
    return train_out, eval_out

  for out in run(_images()):
    assert out['bn_crelu_feat'].shape == (4, 256)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())


def test_stochastic_sample_is_reparameterised(tiny):
  _, model, variables = tiny
  apply = lambda x, seed: model.apply(variables, x, train=False,
                                      rngs={'sample': jax.random.key(seed)})
  x, y = _images(seed=0), _images(seed=1)
  a, b, c = apply(x, 7), apply(x, 8), apply(y, 7)
  np.testing.assert_array_equal(a['z_mean'], b['z_mean'])
  assert bool(jnp.all(a['z_stdev'] > 0))
  assert not np.allclose(a['z_sample'], b['z_sample'])
  # The noise comes from the key alone: the same key gives the same eps for other images.
  eps = (a['z_sample'] - a['z_mean']) / a['z_stdev']
  np.testing.assert_allclose(c['z_sample'], c['z_mean'] + c['z_stdev'] * eps, rtol=1e-5, atol=1e-5)
  assert abs(float(eps.mean())) < 0.5 and 0.6 < float(eps.std()) < 1.4
  floored = encoder.Encoder(_config(min_stdev=0.5)).apply(
      variables, x, train=False, rngs={'sample': jax.random.key(7)})
  np.testing.assert_allclose(floored['z_stdev'], a['z_stdev'] + 0.5, rtol=1e-6)


def test_deterministic_encoder():
  config = _config(stochastic=False)
  model = encoder.Encoder(config)
  variables = model.init({'params': jax.random.key(0)}, _images(), train=False)
  assert variables['params']['head_out']['kernel'].shape == (16, config.model.z_dim)
  out = model.apply(variables, _images(), train=False)
  assert bool(jnp.all(out['z_stdev'] == 0))
  np.testing.assert_array_equal(out['z_sample'], out['z_mean'])


def test_batch_stats_update_only_in_training(tiny):
  _, model, variables = tiny
  x = _images(seed=3)
  _, updated = model.apply(variables, x, train=True, rngs={'sample': jax.random.key(0)},
                           mutable=['batch_stats'])
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables['batch_stats'],
                         updated['batch_stats'])
  assert all(jax.tree.leaves(changed))
  assert 'feat_bn' in updated['batch_stats']
  _, same = model.apply(variables, x, train=False, rngs={'sample': jax.random.key(0)},
                        mutable=['batch_stats'])
  jax.tree.map(np.testing.assert_array_equal, variables['batch_stats'], same['batch_stats'])
  # With running statistics an example's features do not depend on the rest of the batch.
  full = model.apply(variables, x, train=False, rngs={'sample': jax.random.key(0)})
  one = model.apply(variables, x[:1], train=False, rngs={'sample': jax.random.key(0)})
  np.testing.assert_allclose(one['bn_crelu_feat'], full['bn_crelu_feat'][:1], rtol=1e-4, atol=1e-5)


def test_bn_crelu_feat(tiny):
  config, model, variables = tiny
  out = model.apply(variables, _images(), train=False, rngs={'sample': jax.random.key(0)})
  d = out['avepool_feat'].shape[-1]
  pos, neg = out['bn_crelu_feat'][:, :d], out['bn_crelu_feat'][:, d:]
  assert bool(jnp.all(pos >= 0)) and bool(jnp.all(neg >= 0))
  assert bool(jnp.all(pos * neg == 0))
  stats = variables['batch_stats']['feat_bn']
  h = (out['avepool_feat'] - stats['mean']) / jnp.sqrt(stats['var'] + config.model.bn_eps)
  np.testing.assert_allclose(pos - neg, h, rtol=1e-5, atol=1e-5)
  assert 'feat_bn' not in variables['params']


def test_bfloat16_activations_keep_float32_params(tiny):
  config, _, variables = tiny
  model = encoder.Encoder(config, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(lambda: model.init(RNGS, _images(), train=False))
  assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  apply = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))
  out, updated = apply(variables, _images(), rngs={'sample': jax.random.key(2)})
  assert {a.dtype for a in jax.tree.leaves(updated)} == {jnp.dtype(jnp.float32)}
  for v in out.values():
    assert v.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(v)))


def test_reversible_unit_is_invertible():
  norm = functools.partial(nn.BatchNorm, use_running_average=True)
  conv = functools.partial(nn.Conv, use_bias=False, kernel_init=encoder.he_normal)
  unit = encoder.ReversibleUnit(conv, norm)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  variables = unit.init(jax.random.key(1), x)
  y = unit.apply(variables, x)
  f = encoder.BottleneckV2(8, conv, norm, shortcut=False)
  bottleneck = lambda h: f.apply({k: v['f'] for k, v in variables.items()}, h)
  y2, y1 = jnp.split(y, 2, axis=-1)
  np.testing.assert_allclose(jnp.concatenate([y1 - bottleneck(y2), y2], -1), x, atol=1e-5)


def test_cross_replica_batch_norm_matches_full_batch(tiny):
  _, model, variables = tiny
  x = _images(seed=4)
  sharded = encoder.Encoder(model.config, axis_name='batch')
  apply = lambda m, x: m.apply(variables, x, train=True, rngs={'sample': jax.random.key(0)},
                               mutable=['batch_stats'])
  full, full_stats = apply(model, x)
  split_apply = jax.jit(jax.vmap(lambda x: apply(sharded, x), axis_name='batch'))
  split, split_stats = split_apply(x.reshape(2, 2, *x.shape[1:]))
  np.testing.assert_allclose(split['avepool_feat'].reshape(4, -1), full['avepool_feat'],
                             rtol=1e-3, atol=1e-3)
  jax.tree.map(lambda s, f: np.testing.assert_allclose(s[0], f, rtol=1e-3, atol=1e-5),
               split_stats, full_stats)


def _paper_params(name, res=256):
  config = default_config.base_config()
  config.encoder.name = name
  model = encoder.Encoder(config)
  variables = jax.eval_shape(
      lambda: model.init(RNGS, jnp.zeros((1, res, res, config.data.num_channels)), train=False))
  return variables['params']


def test_paper_parameter_counts():
  params = _paper_params('resnet50')
  total = _num_params(params)
  backbone = _num_params(params['backbone'])
  # Measured: 100,001,584 = backbone 23,500,352 + head 76,501,232 (SPEC 8 reference 100,009,264;
  # ResNet-v2 drops the BNs after the root conv and on the projection shortcuts).
  assert abs(total - REFERENCE_E_PARAMS) / REFERENCE_E_PARAMS < 0.02, total
  assert abs(backbone - 23_508_032) / 23_508_032 < 0.01, backbone  # torchvision ResNet-50 - fc.
  resnet101 = _num_params(_paper_params('resnet101', res=64)['backbone'])
  assert abs(resnet101 - 42_500_160) / 42_500_160 < 0.01, resnet101  # torchvision ResNet-101 - fc.
  # RevNet-50 x4: each unit is a bottleneck on half of C channels, 2 * (C/2)(C/8) + 9 (C/8)^2
  # weights, with C = 1024, 2048, 4096, 8192 over 3, 4, 6, 3 units, giving 85.8M; SPEC cites ~86M.
  revnet = _num_params(_paper_params('revnet50x4', res=64)['backbone'])
  assert 84e6 < revnet < 88e6, revnet
