"""Learning sanity: D learns which latent goes with which image, then E learns to invert G.

The synthetic problem: real images are drawn from the initial generator itself, and the
encoder starts out emitting pure prior noise (the prior-collapse state a stochastic E falls
into early in training). Real pairs (x, E(x)) and generated pairs (G(z), z) then have the same
image marginal and the same latent marginal, so s_x and s_z have nothing to learn; only the
pairing differs. First the D updates of the train step alone must find the pairing through
s_xz = J(F(x), H(z)) (a J that ignored z, or pairs misaligned inside the step, stays at
chance). Then the full train step must pull E out of the collapse towards G's inverse, so that
E(G(z)) correlates with z. G's parameters are put back after each step of that phase, so that
E chases a fixed inverse: with G moving too, the game amplified float rounding (which differs
between CPUs) until the outcome was a coin toss on some machines.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bigbigan_jax import default_config, inference, parallel, train_step
from bigbigan_jax.evaluation import latent_metrics
from bigbigan_jax.models import bigbigan

BATCH = 16
Z_DIM = 4
D_UPDATES = 400
TRAIN_STEPS = 300
MEASURED_STEPS = (200, 250, 300)  # Phase-2 steps where E's inversion of G is measured.


def prior_noise_encoder(e_params, z_dim):
  """E's output layer set so that z_mean = 0 and z_stdev = softplus(b) = 1: E(x) ~ N(0, I)."""
  head = e_params['head_out']
  bias = jnp.concatenate([jnp.zeros(z_dim), jnp.full(z_dim, np.log(np.expm1(1.0)))])
  return {**e_params, 'head_out': {'kernel': jnp.zeros_like(head['kernel']), 'bias': bias}}


def latent_correlation(generate_fn, model, state, z_dim):
  """corr(E(G(z))_i, z_i) for each latent dimension i, over 1024 prior samples."""
  z = jax.random.normal(jax.random.PRNGKey(123), (1024, z_dim))
  x = jnp.concatenate([generate_fn(state.g_params, state.g_spectral, chunk)
                       for chunk in z.reshape(-1, 64, z_dim)])
  z_hat = model.encode(state.e_params, state.e_batch_stats, x)['z_mean']
  return latent_metrics.diagonal_correlation(np.asarray(z), np.asarray(z_hat))


def generate(generator, g_params, g_spectral, z):
  """G as the train step runs it for its fakes: train-mode BatchNorm over the batch."""
  return generator.apply({'params': g_params, 'spectral': g_spectral}, z, train=True,
                         update_sn=False, mutable=['spectral', 'batch_stats'])[0]


def test_discriminator_learns_the_pairing_then_encoder_inverts_generator():
  c = default_config.tiny_config(batch_size=BATCH, model__z_dim=Z_DIM, model__hj_width=128)
  c.optim.d_lr, c.optim.g_lr, c.optim.e_lr_mult = 1e-3, 1e-4, 10.0
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = train_step.make_initial_state(c, mesh)(jax.random.PRNGKey(0))  # As training does.
  state = state.replace(e_params=prior_noise_encoder(state.e_params, Z_DIM))
  generator = bigbigan.build_models(c)[0]
  model = inference.BigBiGAN(c)
  teacher_vars = jax.tree.map(jnp.copy, (state.g_params, state.g_spectral))
  teacher = jax.jit(lambda z: generate(generator, *teacher_vars, z))
  generate_fn = jax.jit(functools.partial(generate, generator))
  rng = np.random.default_rng(0)
  draw = lambda: teacher(rng.standard_normal((BATCH, Z_DIM)).astype(np.float32))

  # Phase 1: D updates alone (E and G fixed).
  d_update = parallel.shard_map_jit(
      train_step.make_step_functions(c, 1).d_update, mesh, (parallel.REPLICATED,) * 4,
      (parallel.REPLICATED,) * 2)
  history = []
  for i in range(D_UPDATES):
    x = draw()
    state, metrics = d_update(state, x, x, jax.random.PRNGKey(100 + i))
    history.append(jax.device_get(metrics))
  last = lambda key: float(np.mean([m[key] for m in history[-30:]]))
  print(f"last 30 D updates: hinge s_xz {last('d_loss_score_xz'):.2f}, "
        f"s_x {last('d_loss_score_x'):.2f}, s_z {last('d_loss_score_z'):.2f} (2.0 = chance)")
  # Each term's hinge is 2 at chance. With matching marginals s_x and s_z stayed within 0.02
  # of it over the 15 runs measured below, while s_xz reached 0.85-1.44 from the pairing alone;
  # the margin of 0.4 is several times the chance-level wobble.
  chance_level = min(last('d_loss_score_x'), last('d_loss_score_z'))
  assert chance_level > 1.8
  assert last('d_loss_score_xz') < chance_level - 0.4

  # Phase 2: the full train step (D, then E and G together) on the same data, G put back after
  # each step.
  step = train_step.make_train_step(c, mesh)
  corr, pairing_hinge = [], []
  frozen_g = lambda: jax.tree.map(jnp.copy, teacher_vars)  # The step donates its state.
  for i in range(1, TRAIN_STEPS + 1):
    batch = np.stack([draw(), draw()])
    state, metrics = step(state, parallel.global_array(mesh, {'image': batch}))
    g_params, g_spectral = frozen_g()
    state = state.replace(g_params=g_params, g_spectral=g_spectral)
    pairing_hinge.append(metrics['d_loss_score_xz'])
    if i in MEASURED_STEPS:
      corr.append(latent_correlation(generate_fn, model, state, Z_DIM))
  corr, pairing_hinge = np.array(corr), float(np.mean(jax.device_get(pairing_hinge[-50:])))
  print(f'corr(E(G(z))_i, z_i) at steps {MEASURED_STEPS}:\n{np.round(corr, 2)}\n'
        f"D's s_xz hinge over the last 50 steps: {pairing_hinge:.2f}")
  assert np.isfinite(float(metrics['eg_loss']))
  # Two statistics, each averaged over steps and dimensions. Measured as the test runs (conftest's
  # four fake CPU devices and quick-compile flags) natively (AVX-512 Xeon), under
  # XLA_FLAGS=--xla_cpu_max_isa=AVX2 and under SSE4_2, seeds 0-4 (PRNGKey(seed) for the
  # networks, default_rng(seed) for the latents; the test runs seed 0), one run each:
  # - E moves towards G's inverse: corr(E(G(z))_i, z_i) averaged over the 4 dimensions and the
  #   3 measured steps, seeds 0-4: native and AVX2 (the same bits) 0.43 0.30 0.33 0.56 0.29;
  #   SSE4_2 0.38 0.31 0.37 0.51 0.30 (0.29-0.56). Broken (seed 0, native): with E's updates
  #   cut (e_lr_mult 0) it is 0.00, with the E/G loss sign flipped -0.07; the bound fails both.
  # - E keeps D from telling the pairs apart: D's s_xz hinge over the last 50 steps was 1.47-1.88
  #   over these 10 runs; with the sign flipped E helps D and it falls to 0.00 (0.74 with E cut).
  # Phase 1's s_xz hinge was 0.86-1.44 in the same runs, s_x and s_z 1.98-2.03. Halving both
  # phases was measured too and rejected: seed 1's phase-1 hinge was still 1.81-1.91 after 200
  # D updates; measuring at steps 100-200 instead of 200-300 would give 0.23-0.45 natively.
  # (Before --xla_cpu_use_fusion_emitters=false: native 0.44 0.34 0.36 0.50 0.26; SSE4_2 bits
  # unchanged by it.)
  assert corr.mean() > 0.15, corr
  assert pairing_hinge > 0.8  # The bounds sit far from every measured run.
