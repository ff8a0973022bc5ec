"""The train step: gradient routing, update isolation, data parallelism and determinism."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_differ, assert_trees_equal, initial_state

from bigbigan_jax import default_config, image_views, losses, parallel, train_step
from bigbigan_jax.models import bigbigan

GLOBAL_BATCH = 16


def config(d_augment='', e_lr_schedule=''):
  """The tests' one step config, so that the suite compiles its step once (once more with D's
  input augmentation; the E-schedule test compiles its own two at a larger rate).

  Conv biases in front of BatchNorm have a true gradient of 0, so their computed gradient is
  rounding noise, which Adam's first step (b1 = 0) would turn into full +-lr steps. A larger eps
  keeps that noise out of the parameters (four devices against one); the optimizer states still
  compare gradients.
  """
  return default_config.tiny_config(batch_size=GLOBAL_BATCH, optim__d_steps=1,
                                    optim__ortho_reg=1e-4, optim__eps=1e-3,
                                    loss__d_augment=d_augment, optim__e_lr_schedule=e_lr_schedule)


def fake_batch(c, seed=0, updates=2):
  shape = (updates, c.batch_size, c.encoder.resolution, c.encoder.resolution, 3)
  return {'image': np.random.default_rng(seed).integers(0, 256, shape, np.uint8)}


def first_views(c, batch):
  """E's and D's float views of the first update's images."""
  return image_views.views(batch['image'][0], c.model.resolution)


@functools.lru_cache(maxsize=None)
def mesh(num_devices):
  return parallel.make_mesh(jax.devices()[:num_devices])


def run_step(c, state, batch, num_devices):
  m = mesh(num_devices)
  step = train_step.make_train_step(c, m)  # Traced once per config and mesh in a process.
  return step(parallel.replicate(m, state), parallel.global_array(m, batch))


def test_gradient_routing_through_the_scores():
  c = config()
  state = initial_state(c)
  g, e, d = bigbigan.build_models(c)
  batch = fake_batch(c)
  x_e, x_d = first_views(c, batch)
  z = jax.random.normal(jax.random.PRNGKey(1), (GLOBAL_BATCH, c.model.z_dim))

  def term_loss(eg_params, term):
    enc, _ = e.apply({'params': eg_params['encoder'], 'batch_stats': state.e_batch_stats}, x_e,
                     train=True, rngs={'sample': jax.random.PRNGKey(2)}, mutable=['batch_stats'])
    x_fake, _ = g.apply({'params': eg_params['generator'], 'spectral': state.g_spectral}, z,
                        train=True, mutable=['spectral', 'batch_stats'])
    scores = lambda x, zz: d.apply({'params': state.d_params, 'spectral': state.d_spectral}, x, zz,
                                   train=False)
    return losses.encoder_generator_loss(scores(x_d, enc['z_sample']), scores(x_fake, z),
                                         terms=(term,))[0]

  params = {'generator': state.g_params, 'encoder': state.e_params}
  norm = lambda tree: float(sum(jnp.sum(jnp.abs(t)) for t in jax.tree.leaves(tree)))
  grad_fn = jax.jit(jax.grad(term_loss), static_argnums=1)
  grads = {t: grad_fn(params, t) for t in losses.SCORE_TERMS}
  assert norm(grads['score_x']['encoder']) == 0.0  # s_x(x) of real data does not depend on E.
  assert norm(grads['score_z']['generator']) == 0.0  # s_z(z) of prior samples does not depend on G.
  assert norm(grads['score_x']['generator']) > 0.0
  assert norm(grads['score_z']['encoder']) > 0.0
  assert norm(grads['score_xz']['generator']) > 0.0 and norm(grads['score_xz']['encoder']) > 0.0


def test_each_update_changes_only_its_own_networks():
  c = config()
  state = initial_state(c)
  m = mesh(1)
  fns = train_step.make_step_functions(c, 1)
  specs = (parallel.REPLICATED,) * 4
  batch = fake_batch(c)
  args = (*first_views(c, batch), jax.random.PRNGKey(3))
  d_update = parallel.shard_map_jit(fns.d_update, m, specs, (parallel.REPLICATED,) * 2)
  eg_update = parallel.shard_map_jit(fns.eg_update, m, specs, (parallel.REPLICATED,) * 2)

  after_d, _ = d_update(state, *args)
  for field in ('g_params', 'g_spectral', 'g_ema_params', 'e_params', 'e_batch_stats',
                'e_ema_params', 'e_ema_batch_stats', 'eg_opt_state', 'step'):
    assert_trees_equal(getattr(after_d, field), getattr(state, field))
  for field in ('d_params', 'd_spectral', 'd_opt_state'):
    assert_trees_differ(getattr(after_d, field), getattr(state, field))

  after_eg, _ = eg_update(state, *args)
  for field in ('d_params', 'd_spectral', 'd_opt_state'):
    assert_trees_equal(getattr(after_eg, field), getattr(state, field))
  for field in ('g_params', 'g_spectral', 'g_ema_params', 'e_params', 'e_batch_stats',
                'e_ema_params', 'e_ema_batch_stats', 'eg_opt_state'):
    assert_trees_differ(getattr(after_eg, field), getattr(state, field))
  assert int(after_eg.step) == 1


@pytest.mark.parametrize('d_augment', ['', 'translation,cutout'])
def test_four_devices_match_one_device(d_augment):
  assert jax.device_count() >= 4, 'tests/conftest.py asks for 4 CPU devices'
  c = config(d_augment)
  batch = fake_batch(c)
  init = lambda: initial_state(c)
  one, metrics_one = run_step(c, init(), batch, 1)
  four, metrics_four = run_step(c, init(), batch, 4)
  tol = dict(rtol=2e-4, atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), one, four)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), metrics_one, metrics_four)
  # E's BatchNorm running statistics moved towards the statistics of the whole global batch.
  assert_trees_differ(one.e_batch_stats, init().e_batch_stats)
  if d_augment:  # D scored other images than without augmentation; E saw the same ones.
    plain, metrics_plain = run_step(config(), init(), batch, 4)
    assert_trees_differ(four.d_params, plain.d_params)
    assert metrics_four['real_score_x'] != metrics_plain['real_score_x']
    # Another program, so equal up to rounding (other fusions), not bit for bit.
    np.testing.assert_allclose(metrics_four['encoder_stdev'], metrics_plain['encoder_stdev'],
                               rtol=1e-6)


def test_e_lr_schedule_scales_only_the_encoder_update_from_its_step():
  """Adam's update is proportional to its rate (b1 = 0 here, so the update of one step is
  lr * g / (sqrt(v) + eps)): from the schedule's step on, E's update is MULT / e_lr_mult times
  the plain step's, as a run resumed there with e_lr_mult = MULT trains; before it, and for D
  and G throughout, the step is the plain one. A large rate keeps the updates far above the
  rounding of the parameters they are added to."""
  plain, scheduled = config(), config(e_lr_schedule='5:0.25,9:3')
  for c in (plain, scheduled):
    c.optim.g_lr = 0.05
  assert plain.optim.e_lr_mult == 1.0 and plain.optim.b1 == 0.0  # The tiny config's.
  batch = fake_batch(plain)
  start = jax.device_get(initial_state(plain))
  at = lambda step: initial_state(plain).replace(step=jnp.asarray(step, jnp.int32))
  e_update = lambda state: jax.tree.map(lambda new, old: new - old, state.e_params,
                                        start.e_params)
  # Updates are ~1e-2 (bias updates held back by eps ~1e-3); adding one to a parameter rounds
  # it by up to 6e-8, so an update read back as new - old is that far off.
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for step, mult in [(4, 1.0), (5, 0.25), (9, 3.0)]:
    reference, _ = run_step(plain, at(step), batch, 1)
    new, _ = run_step(scheduled, at(step), batch, 1)
    jax.tree.map(lambda a, b: close(a, mult * b), e_update(new), e_update(reference))
    assert_trees_differ(new.e_params, start.e_params)
    for field in ('g_params', 'd_params', 'e_batch_stats', 'eg_opt_state', 'd_opt_state'):
      jax.tree.map(close, getattr(new, field), getattr(reference, field))


def test_global_batch_statistics_in_generator_batchnorm():
  c = config()
  state = initial_state(c)
  g = bigbigan.build_models(c, axis_name=parallel.AXIS).generator
  z = jax.random.normal(jax.random.PRNGKey(5), (GLOBAL_BATCH, c.model.z_dim))

  def recorded_stats(z_local):
    _, new = g.apply({'params': state.g_params, 'spectral': state.g_spectral}, z_local, train=True,
                     mutable=['spectral', 'batch_stats'])
    return new['batch_stats']

  sharded = parallel.shard_map_jit(recorded_stats, mesh(4), parallel.EVAL_BATCH,
                                   parallel.REPLICATED)(z)
  single = bigbigan.build_models(c).generator.apply(
      {'params': state.g_params, 'spectral': state.g_spectral}, z, train=True,
      mutable=['spectral', 'batch_stats'])[1]['batch_stats']
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), sharded, single)


def test_step_is_deterministic():
  c = config()
  batch = fake_batch(c)
  init = lambda: initial_state(c)
  first, m1 = run_step(c, init(), batch, 4)
  second, m2 = run_step(c, init(), batch, 4)
  assert_trees_equal(first, second)
  assert_trees_equal(m1, m2)
  assert {'d_loss', 'eg_loss', 'real_score_x', 'real_score_z', 'real_score_xz', 'fake_score_x',
          'fake_score_z', 'fake_score_xz'} <= set(m1)
  third, _ = run_step(c, initial_state(c, 7), batch, 4)
  assert_trees_differ(first.d_params, third.d_params)


def test_emas_follow_generator_and_encoder():
  c = config()
  assert c.optim.ema_start == 0 and c.optim.ema_decay == 0.9  # The tiny config's.
  assert c.optim.e_ema_start == 0 and c.optim.e_ema_decay == 0.9
  state = initial_state(c)
  before = jax.device_get(state)  # The step donates the state's buffers.
  new, _ = run_step(c, state, fake_batch(c, updates=c.optim.d_steps + 1), 4)
  ema = lambda old, now: jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, old, now)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  jax.tree.map(close, new.g_ema_params, ema(before.g_params, new.g_params))
  jax.tree.map(close, new.e_ema_params, ema(before.e_params, new.e_params))
  jax.tree.map(close, new.e_ema_batch_stats, ema(before.e_batch_stats, new.e_batch_stats))


def test_orthogonal_regularization_is_zero_for_orthogonal_columns():
  q = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (8, 4)))[0]
  assert float(train_step.orthogonal_regularization({'w': q, 'embedding': 5 * q})) < 1e-10
  w = jnp.ones((3, 2))  # Columns overlap: W^T W = [[3, 3], [3, 3]], off-diagonal sum 2 * 9.
  np.testing.assert_allclose(train_step.orthogonal_regularization({'w': w}), 18.0)


def test_batch_not_divisible_by_devices():
  with pytest.raises(ValueError, match=r'batch_size=10 must be a positive multiple of the device count \(4\)'):
    train_step.make_step_functions(default_config.tiny_config(batch_size=10), 4)


def test_one_step_per_step_settings_and_mesh():
  c = config()
  step = train_step.make_train_step(c, mesh(4))
  c.num_train_steps, c.log_every_steps = 99, 7  # Bookkeeping: the same step.
  assert train_step.make_train_step(c, mesh(4)) is step
  assert train_step.make_train_step(c, mesh(1)) is not step
  c.optim.d_lr *= 2  # Compiled into the step as a constant: another step.
  assert train_step.make_train_step(c, mesh(4)) is not step
  with pytest.raises(AttributeError):  # The step is built from its settings alone.
    train_step.step_settings(c).num_train_steps  # pylint: disable=expression-not-assigned
