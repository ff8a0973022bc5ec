"""How well E inverts G in a run, at each checkpoint of a workdir.

  python benchmarks/latent_recovery.py --workdir=runs/fashion_mnist

Two measures (bigbigan_jax/evaluation/latent_metrics.py) of z against E(G(z)) (z_mean, EMA G
with standing statistics), over 4096 latents; row 0 is the freshly initialised networks of the
same config, E's BatchNorm statistics measured on train images as `evaluate --init` does:
- diag corr: the mean over dimensions i of corr(E(G(z))_i, z_i), 1 at BiGAN's optimum E = G^-1;
- R^2: a linear map from E(G(z)) to z fitted on one half of the latents, scored on the other.
"""

import jax
import numpy as np
from absl import app, flags
from etils import epath

from bigbigan_jax import inference, parallel, run_dir
from bigbigan_jax.evaluation import encoder_statistics
from bigbigan_jax.evaluation.latent_metrics import diagonal_correlation, heldout_r2

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A training run directory.', required=True)
flags.DEFINE_integer('num_latents', 4096, 'Latents drawn (half to fit, half to score).')


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
    encoded = model.encode(state.e_ema_params, state.e_ema_batch_stats, x)
    z_hat.append(np.asarray(encoded['z_mean']))
  z, z_hat = np.asarray(z), np.concatenate(z_hat)
  diag = diagonal_correlation(z, z_hat)
  return (f'diag corr mean {diag.mean():.3f} (min {diag.min():.3f}, max {diag.max():.3f}), '
          f'R^2 {heldout_r2(z, z_hat):.3f}')


def main(argv):
  del argv
  config = run_dir.load_config(FLAGS.workdir)
  model = inference.BigBiGAN(config)
  mesh = parallel.make_mesh()
  initial = encoder_statistics.with_measured_statistics(config, mesh,
                                                        run_dir.initial_state(config, mesh))
  print(f'step 0 (init): {latent_recovery(config, model, initial)}')
  manager = run_dir.checkpoint_manager(epath.Path(FLAGS.workdir).absolute(), config)
  for step in manager.all_steps():
    state = run_dir.restore(manager, step, config, mesh)
    print(f'step {step}: {latent_recovery(config, model, state)}')


if __name__ == '__main__':
  app.run(main)
