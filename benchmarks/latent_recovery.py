"""How well E inverts G in a run: held-out R^2 of z from E(G(z)) at each checkpoint.

  python benchmarks/latent_recovery.py --workdir=runs/fashion_mnist

A linear least-squares map from E(G(z)) (z_mean) to z is fitted on 2048 latents and scored on
2048 others; row 0 is the freshly initialised networks of the same config.
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


def latent_r2(config, model: inference.BigBiGAN, state) -> float:
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
  return heldout_r2(np.asarray(z), np.concatenate(z_hat))


def main(argv):
  del argv
  config = train.load_config(FLAGS.workdir)
  model = inference.BigBiGAN(config)
  mesh = parallel.make_mesh()
  print(f'step 0 (init): R^2 = {latent_r2(config, model, train_step.init_state(config, jax.random.PRNGKey(config.seed))):.3f}')
  manager = train.checkpoint_manager(epath.Path(FLAGS.workdir).absolute(), config)
  for step in manager.all_steps():
    state = train.restore(manager, step, config, mesh)
    print(f'step {step}: R^2 = {latent_r2(config, model, state):.3f}')


if __name__ == '__main__':
  app.run(main)
