"""How well E inverts G in a run, at each checkpoint of a workdir.

  python benchmarks/latent_recovery.py --workdir=runs/fashion_mnist

Two measures of z against E(G(z)) (z_mean, EMA G with standing statistics), over 4096 latents;
row 0 is the freshly initialised networks of the same config:
- diag corr: the mean over dimensions i of corr(E(G(z))_i, z_i). BiGAN's optimum is E = G^-1,
  so it tends to 1; at init it is near 0, each dimension's sign being random.
- R^2: a linear least-squares map from E(G(z)) to z fitted on one half and scored on the other.
  It credits any linear trace of z, which random networks already keep.
"""

import jax
import numpy as np
from absl import app, flags
from etils import epath

from bigbigan_jax import inference, parallel, train, train_step

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A training run directory.', required=True)
flags.DEFINE_integer('num_latents', 4096, 'Latents drawn (half to fit, half to score).')


def heldout_r2(z: np.ndarray, z_hat: np.ndarray) -> float:
  half = len(z) // 2
  features = np.concatenate([z_hat, np.ones((len(z), 1))], axis=1)
  coef, *_ = np.linalg.lstsq(features[:half], z[:half], rcond=None)
  residual = z[half:] - features[half:] @ coef
  return float(1.0 - residual.var(axis=0).mean() / z[half:].var(axis=0).mean())


def diagonal_correlation(z: np.ndarray, z_hat: np.ndarray) -> np.ndarray:
  """corr(z_hat_i, z_i) for each latent dimension i."""
  zc = (z - z.mean(0)) / z.std(0)
  hc = (z_hat - z_hat.mean(0)) / np.maximum(z_hat.std(0), 1e-12)
  return (zc * hc).mean(0)


def latent_recovery(config, model: inference.BigBiGAN, state) -> str:
  z = jax.random.normal(jax.random.PRNGKey(123), (FLAGS.num_latents, config.model.z_dim))
  standing = model.sampling_variables(state, jax.random.PRNGKey(5),
                                      num_batches=config.standing_stats_batches, batch_size=256)
  z_hat = []
  for chunk in np.array_split(np.asarray(z), FLAGS.num_latents // 256):
    x = model.sample(state.g_ema_params, standing, chunk)
    if config.encoder.resolution != config.model.resolution:
      r = config.encoder.resolution
      x = jax.image.resize(x, (x.shape[0], r, r, x.shape[-1]), 'linear')
    z_hat.append(np.asarray(model.encode(state.e_params, state.e_batch_stats, x)['z_mean']))
  z, z_hat = np.asarray(z), np.concatenate(z_hat)
  diag = diagonal_correlation(z, z_hat)
  return (f'diag corr mean {diag.mean():.3f} (min {diag.min():.3f}, max {diag.max():.3f}), '
          f'R^2 {heldout_r2(z, z_hat):.3f}')


def main(argv):
  del argv
  config = train.load_config(FLAGS.workdir)
  model = inference.BigBiGAN(config)
  mesh = parallel.make_mesh()
  init = train_step.init_state(config, jax.random.PRNGKey(config.seed))
  print(f'step 0 (init): {latent_recovery(config, model, init)}')
  manager = train.checkpoint_manager(epath.Path(FLAGS.workdir).absolute(), config)
  for step in manager.all_steps():
    state = train.restore(manager, step, config, mesh)
    print(f'step {step}: {latent_recovery(config, model, state)}')


if __name__ == '__main__':
  app.run(main)
