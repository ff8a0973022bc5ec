"""TrainState and the BigBiGAN step: `optim.d_steps` D updates, then one joint E/G update.

The step is one per-device program run through `jax.shard_map` on the 1-D mesh axis `batch`:
gradients are averaged over the axis, BatchNorm statistics are cross-replica, and spectral-norm
vectors stay identical on every device. Latents and encoder noise are drawn for the whole
global batch from the shared key and sliced per device, so a step gives the same result on any
number of devices.

Each update trains only its own networks: the D update changes only D's parameters, optimizer
state and spectral vectors; the E/G update only those of E and G (and E's BatchNorm statistics
and the EMAs of G and E). The other networks run in training mode (batch statistics) but keep
their state. With `loss.d_augment`, D scores augmented real and generated images (d_augment.py);
with `optim.e_lr_schedule`, E's rate changes at the given steps (e_lr_schedule.py).
"""

import copy
import functools
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax

from bigbigan_jax import d_augment, e_lr_schedule, image_views, losses, parallel
from bigbigan_jax.models import bigbigan

AXIS = parallel.AXIS


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # E/G updates done.
  g_params: Any
  g_spectral: Any
  g_ema_params: Any
  e_params: Any
  e_batch_stats: Any
  e_ema_params: Any  # E evaluated and exported: an EMA of e_params (a copy at e_ema_decay 0).
  e_ema_batch_stats: Any  # The same EMA of e_batch_stats.
  d_params: Any
  d_spectral: Any
  d_opt_state: Any
  eg_opt_state: Any
  rng: jax.Array  # Fixed; each step folds in its step number.


def make_optimizers(config: ml_collections.ConfigDict):
  """Adam for D, and Adam for {generator, encoder} with E at e_lr_mult times G's rate (the step
  rescales E's update where optim.e_lr_schedule changes it)."""
  o = config.optim
  adam = lambda lr: optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)
  eg_labels = lambda params: {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}
  eg_tx = optax.multi_transform(
      {'generator': adam(o.g_lr), 'encoder': adam(o.g_lr * o.e_lr_mult)}, eg_labels)
  return adam(o.d_lr), eg_tx


def init_state(config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
  """Initialises every network (orthogonal G/D weights) and both optimizers."""
  models = bigbigan.build_models(config)
  k_g, k_e, k_d, k_noise, k_state = jax.random.split(rng, 5)
  c, res, eres = config.data.num_channels, config.model.resolution, config.encoder.resolution
  z = jnp.zeros((2, config.model.z_dim))
  g_vars = models.generator.init({'params': k_g}, z, train=True)
  e_vars = models.encoder.init({'params': k_e, 'sample': k_noise}, jnp.zeros((2, eres, eres, c)),
                               train=True)
  d_vars = models.discriminator.init({'params': k_d}, jnp.zeros((2, res, res, c)), z, train=True)
  d_tx, eg_tx = make_optimizers(config)
  eg_params = {'generator': g_vars['params'], 'encoder': e_vars['params']}
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_vars['params'],
      g_spectral=g_vars['spectral'],
      g_ema_params=jax.tree.map(jnp.copy, g_vars['params']),  # Its own buffers (donation).
      e_params=e_vars['params'],
      e_batch_stats=e_vars['batch_stats'],
      e_ema_params=jax.tree.map(jnp.copy, e_vars['params']),
      e_ema_batch_stats=jax.tree.map(jnp.copy, e_vars['batch_stats']),
      d_params=d_vars['params'],
      d_spectral=d_vars['spectral'],
      d_opt_state=d_tx.init(d_vars['params']),
      eg_opt_state=eg_tx.init(eg_params),
      rng=k_state,
  )


def orthogonal_regularization(g_params: Any) -> jax.Array:
  """BigGAN's modified orthogonal penalty sum ||W^T W * (1 - I)||_F^2 over G's kernels."""
  total = jnp.zeros((), jnp.float32)
  for path, w in jax.tree_util.tree_flatten_with_path(g_params)[0]:
    if w.ndim < 2 or 'embedding' in jax.tree_util.keystr(path):
      continue
    w = w.reshape(-1, w.shape[-1])
    gram = w.T @ w
    total += jnp.sum(jnp.square(gram * (1.0 - jnp.eye(gram.shape[0]))))
  return total


def _ema(ema, new, decay, use_ema):
  return jax.tree.map(lambda e, p: jnp.where(use_ema, decay * e + (1.0 - decay) * p, p), ema, new)


def _split_scores(scores, n):
  return ({k: v[:n] for k, v in scores.items()}, {k: v[n:] for k, v in scores.items()})


def _score_means(real, fake):
  out = {f'real_{k}': jnp.mean(v) for k, v in real.items()}
  out.update({f'fake_{k}': jnp.mean(v) for k, v in fake.items()})
  return out


class StepFunctions(NamedTuple):
  """Per-device programs. `step(state, batch)` is the train step; `d_update` and `eg_update`
  `(state, x_e, x_d, key) -> (state, metrics)` (float E and D views) are its two kinds of
  update."""
  step: Callable
  d_update: Callable
  eg_update: Callable


def make_step_functions(config: ml_collections.ConfigDict, num_devices: int) -> StepFunctions:
  """The per-device programs for `num_devices` devices.

  `batch` holds this device's `image` [d_steps + 1, local batch, H, W, C] at E's resolution,
  uint8 (or float in [-1, 1]); image_views makes E's and D's views of it.
  """
  parallel.check_global_batch(config.batch_size, num_devices)
  if config.optim.d_steps < 1:
    raise ValueError(f'optim.d_steps={config.optim.d_steps} must be at least 1.')
  g, e, d = bigbigan.build_models(config, axis_name=AXIS)
  d_tx, eg_tx = make_optimizers(config)
  terms = losses.active_terms(config.loss.use_sx, config.loss.use_sz)
  d_loss_fn = functools.partial(losses.discriminator_loss, terms=terms, reduction=config.loss.reduction)
  eg_loss_fn = functools.partial(losses.encoder_generator_loss, terms=terms,
                                 reduction=config.loss.reduction)
  global_batch, local_batch = config.batch_size, config.batch_size // num_devices
  z_dim, o = config.model.z_dim, config.optim
  augmentations = d_augment.parse(config.loss.d_augment)
  e_schedule = e_lr_schedule.parse(o.e_lr_schedule)

  def local_slice(draw):
    return lax.dynamic_slice_in_dim(draw, lax.axis_index(AXIS) * local_batch, local_batch)

  def local_normal(key):
    return local_slice(jax.random.normal(key, (global_batch, z_dim), jnp.float32))

  def augment_for_d(x, key):
    """D's view of x under `loss.d_augment`; drawn for the global batch, like the latents."""
    if not augmentations:
      return x
    draws = d_augment.draw(key, global_batch, config.model.resolution, augmentations)
    return d_augment.apply(x, jax.tree.map(local_slice, draws))

  def split_key(key):
    """(latents, E's noise, real images' augmentation, fake images'); the last two None when
    D's inputs are not augmented (so that turning it off leaves the other draws as they were)."""
    if not augmentations:
      return (*jax.random.split(key), None, None)
    return tuple(jax.random.split(key, 4))

  def encode(e_params, e_batch_stats, x, key):
    out, new_vars = e.apply({'params': e_params, 'batch_stats': e_batch_stats}, x, train=True,
                            noise=local_normal(key), mutable=['batch_stats'])
    return out, new_vars['batch_stats']

  def generate(g_params, g_spectral, z, update_sn):
    x, new_vars = g.apply({'params': g_params, 'spectral': g_spectral}, z, train=True,
                          update_sn=update_sn, mutable=['spectral', 'batch_stats'])
    return x, new_vars['spectral']

  def d_update(state, carry, inputs):
    d_params, d_spectral, d_opt_state = carry
    x_e, x_d, key = inputs
    k_z, k_noise, k_real, k_fake = split_key(key)
    z = local_normal(k_z)
    z_hat = encode(state.e_params, state.e_batch_stats, x_e, k_noise)[0]['z_sample']
    x_fake = generate(state.g_params, state.g_spectral, z, update_sn=False)[0]
    x_d, x_fake = augment_for_d(x_d, k_real), augment_for_d(x_fake, k_fake)
    x_pair, z_pair = jnp.concatenate([x_d, x_fake]), jnp.concatenate([z_hat, z])

    def loss(params):
      scores, new_vars = d.apply({'params': params, 'spectral': d_spectral}, x_pair, z_pair,
                                 train=True, mutable=['spectral'])
      real, fake = _split_scores(scores, local_batch)
      total, per_term = d_loss_fn(real, fake)
      metrics = {'d_loss': total, **{f'd_loss_{k}': v for k, v in per_term.items()},
                 **_score_means(real, fake)}
      return total, (new_vars['spectral'], metrics)

    grads, (d_spectral, metrics) = jax.grad(loss, has_aux=True)(d_params)
    grads = lax.pmean(grads, AXIS)
    updates, d_opt_state = d_tx.update(grads, d_opt_state, d_params)
    d_params = optax.apply_updates(d_params, updates)
    return (d_params, d_spectral, d_opt_state), metrics

  def eg_update(state, x_e, x_d, key):
    k_z, k_noise, k_real, k_fake = split_key(key)
    z = local_normal(k_z)
    x_d = augment_for_d(x_d, k_real)
    d_vars = {'params': state.d_params, 'spectral': state.d_spectral}
    # Nothing upstream of the real images is trained, so F(x_d) stays out of the backward pass.
    f_real = d.apply(d_vars, x_d, train=False, method='features')

    def loss(eg_params):
      enc, e_batch_stats = encode(eg_params['encoder'], state.e_batch_stats, x_e, k_noise)
      x_fake, g_spectral = generate(eg_params['generator'], state.g_spectral, z, update_sn=True)
      x_fake = augment_for_d(x_fake, k_fake)
      f_fake = d.apply(d_vars, x_fake, train=False, method='features')
      scores = d.apply(d_vars, jnp.concatenate([f_real, f_fake]),
                       jnp.concatenate([enc['z_sample'], z]), train=False, method='scores')
      real, fake = _split_scores(scores, local_batch)
      total, per_term = eg_loss_fn(real, fake)
      metrics = {'eg_loss': total, **{f'eg_loss_{k}': v for k, v in per_term.items()},
                 'encoder_stdev': jnp.mean(enc['z_stdev'])}
      if o.ortho_reg:
        metrics['ortho_reg'] = orthogonal_regularization(eg_params['generator'])
        total = total + o.ortho_reg * metrics['ortho_reg']
      return total, (e_batch_stats, g_spectral, metrics)

    eg_params = {'generator': state.g_params, 'encoder': state.e_params}
    grads, (e_batch_stats, g_spectral, metrics) = jax.grad(loss, has_aux=True)(eg_params)
    grads = lax.pmean(grads, AXIS)
    updates, eg_opt_state = eg_tx.update(grads, state.eg_opt_state, eg_params)
    if e_schedule:
      ratio = e_lr_schedule.multiplier(o.e_lr_mult, e_schedule, state.step) / o.e_lr_mult
      updates = {**updates, 'encoder': jax.tree.map(lambda u: u * ratio, updates['encoder'])}
    eg_params = optax.apply_updates(eg_params, updates)
    step = state.step + 1
    g_ema = _ema(state.g_ema_params, eg_params['generator'], o.ema_decay, step > o.ema_start)
    e_ema = _ema((state.e_ema_params, state.e_ema_batch_stats),
                 (eg_params['encoder'], e_batch_stats), o.e_ema_decay, step > o.e_ema_start)
    state = state.replace(
        step=step, g_params=eg_params['generator'], g_spectral=g_spectral, g_ema_params=g_ema,
        e_params=eg_params['encoder'], e_batch_stats=e_batch_stats, e_ema_params=e_ema[0],
        e_ema_batch_stats=e_ema[1], eg_opt_state=eg_opt_state)
    return state, metrics

  def step_fn(state: TrainState, batch: dict[str, jax.Array]):
    keys = jax.random.split(jax.random.fold_in(state.rng, state.step), o.d_steps + 1)
    views = lambda i: image_views.views(batch['image'][i], config.model.resolution)
    carry = (state.d_params, state.d_spectral, state.d_opt_state)
    d_metrics = []
    # A Python loop, not lax.scan: XLA:CPU runs convolutions inside loops ~100x slower.
    for i in range(o.d_steps):
      carry, metrics = d_update(state, carry, (*views(i), keys[i]))
      d_metrics.append(metrics)
    state = state.replace(d_params=carry[0], d_spectral=carry[1], d_opt_state=carry[2])
    state, eg_metrics = eg_update(state, *views(-1), keys[-1])
    metrics = {**jax.tree.map(lambda *m: jnp.mean(jnp.stack(m)), *d_metrics), **eg_metrics}
    return state, lax.pmean(metrics, AXIS)

  def single_d_update(state, x_e, x_d, key):
    carry = (state.d_params, state.d_spectral, state.d_opt_state)
    carry, metrics = d_update(state, carry, (x_e, x_d, key))
    state = state.replace(d_params=carry[0], d_spectral=carry[1], d_opt_state=carry[2])
    return state, lax.pmean(metrics, AXIS)

  def single_eg_update(state, x_e, x_d, key):
    state, metrics = eg_update(state, x_e, x_d, key)
    return state, lax.pmean(metrics, AXIS)

  return StepFunctions(step_fn, single_d_update, single_eg_update)


# The config fields the step reads; the step is built from these alone.
STEP_SETTINGS = ('model', 'encoder', 'optim', 'loss', 'batch_size', 'dtype', 'float32_residuals',
                 'data.num_channels')
_STEPS: dict[tuple[Any, ...], Callable] = {}  # Jitted steps and inits, traced once per process.


def step_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` holding only STEP_SETTINGS: any other field read raises."""
  out = ml_collections.ConfigDict()
  for path in STEP_SETTINGS:
    *parents, leaf = path.split('.')
    source, target = config, out
    for name in parents:
      source = source[name]
      if name not in target:
        target[name] = ml_collections.ConfigDict()
      target = target[name]
    target[leaf] = copy.deepcopy(source[leaf])
  return out


def make_initial_state(config: ml_collections.ConfigDict, mesh) -> Callable[[jax.Array], TrainState]:
  """init_state jitted, replicated over `mesh`: rng -> state; one per step settings and mesh."""
  settings = step_settings(config)
  key = ('init', settings.to_json(sort_keys=True), mesh)
  if key not in _STEPS:
    _STEPS[key] = jax.jit(functools.partial(init_state, settings),
                          out_shardings=jax.sharding.NamedSharding(mesh, parallel.REPLICATED))
  return _STEPS[key]


def make_train_step(config: ml_collections.ConfigDict, mesh) -> Callable:
  """The jitted step over `mesh`: replicated state (donated) and a batch sharded on `batch`.

  One per step settings and mesh in a process, so that a second run there (a resumed or
  restarted run, a test) reuses the traced and compiled step instead of tracing it again.
  """
  settings = step_settings(config)
  key = ('step', settings.to_json(sort_keys=True), mesh)
  if key not in _STEPS:
    _STEPS[key] = parallel.shard_map_jit(
        make_step_functions(settings, mesh.size).step, mesh,
        in_specs=(parallel.REPLICATED, parallel.STEP_BATCH),
        out_specs=(parallel.REPLICATED, parallel.REPLICATED), donate_argnums=0)
  return _STEPS[key]
