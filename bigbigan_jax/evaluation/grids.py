"""Image grids for samples, reconstructions and latent interpolations (numpy and PIL), and the
grids a training run draws as it goes (`GridWriter`)."""

import math

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from PIL import Image

from bigbigan_jax import image_views, inference


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Maps images in [-1, 1] to uint8 in [0, 255] (-1 -> 0, 1 -> 255), clipping; NaN (a diverged
  network's output) is drawn black."""
  images = np.clip(np.nan_to_num(np.asarray(images, np.float32), nan=-1.0), -1.0, 1.0)
  return np.rint((images + 1.0) * 127.5).astype(np.uint8)


def image_grid(images: np.ndarray, ncols: int | None = None) -> np.ndarray:
  """Tiles images [N, H, W, C] in [-1, 1] row by row into one uint8 image [rows*H, ncols*W, C].

  ncols defaults to ceil(sqrt(N)); cells past the last image are black.
  """
  images = to_uint8(images)
  n, height, width, channels = images.shape
  ncols = ncols or math.ceil(math.sqrt(n))
  nrows = math.ceil(n / ncols)
  cells = np.zeros((nrows * ncols, height, width, channels), np.uint8)
  cells[:n] = images
  cells = cells.reshape(nrows, ncols, height, width, channels)
  return cells.transpose(0, 2, 1, 3, 4).reshape(nrows * height, ncols * width, channels)


def save_png(path: str | epath.PathLike, grid: np.ndarray) -> None:
  """Writes a uint8 image [H, W, C] (C = 1 or 3) as PNG, creating the parent folder."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  with path.open('wb') as f:
    image.save(f, format='PNG')


def interpolation_grid(z0: np.ndarray, z1: np.ndarray, num_steps: int) -> np.ndarray:
  """Latents on the straight lines from z0 [R, Z] to z1 [R, Z], as [R * num_steps, Z].

  Row r of `image_grid(decode(latents), ncols=num_steps)` then runs from z0[r] to z1[r].
  """
  weights = np.linspace(0.0, 1.0, num_steps, dtype=np.float32)[None, :, None]
  z0, z1 = np.asarray(z0)[:, None], np.asarray(z1)[:, None]
  return ((1.0 - weights) * z0 + weights * z1).reshape(-1, z0.shape[-1])


def side_by_side(x: np.ndarray, recon: np.ndarray, ncols: int | None = None) -> np.ndarray:
  """Reconstruction grid: each column pairs a real image with its reconstruction below it.

  Rows alternate between `ncols` real images [N, H, W, C] in [-1, 1] and their
  reconstructions; returns the uint8 grid.
  """
  n = len(x)
  ncols = ncols or math.ceil(math.sqrt(2 * n))
  blank = np.full((-n % ncols,) + x.shape[1:], -1.0, np.float32)
  x = np.concatenate([x, blank]).reshape((-1, ncols) + x.shape[1:])
  recon = np.concatenate([recon, blank]).reshape((-1, ncols) + recon.shape[1:])
  paired = np.stack([x, recon], axis=1).reshape((-1,) + x.shape[2:])
  return image_grid(paired, ncols)


class GridWriter:
  """Sample grids of the EMA generator (fixed z) and reconstruction grids of fixed images, to the
  metric writer and as PNG files in `<workdir>/images`."""

  def __init__(self, config, workdir: epath.Path, writer, real_images: np.ndarray):
    self.config, self.writer = config, writer
    self.image_dir = workdir / 'images'
    self.model = inference.BigBiGAN(config)
    n = config.num_grid_images
    self.z = jax.random.normal(jax.random.PRNGKey(config.seed + 1), (n, config.model.z_dim))
    # Every process must feed the same images to the replicated computation.
    self.real = np.asarray(multihost_utils.broadcast_one_to_all(real_images[:n]))

  def __call__(self, state, step: int) -> None:
    standing = self.model.sampling_variables(state)
    samples = np.asarray(self.model.sample(state.g_ema_params, standing, self.z))
    recon = np.asarray(self.model.reconstruct(state.g_ema_params, standing, state.e_ema_params,
                                              state.e_ema_batch_stats, self.real))
    real_d = np.asarray(self.real_at_d_resolution())
    grid_s = image_grid(samples)
    grid_r = side_by_side(real_d, recon)
    self.writer.write_images(step, {'samples': grid_s[None], 'reconstructions': grid_r[None]})
    if jax.process_index() == 0:
      save_png(self.image_dir / f'samples_{step:07d}.png', grid_s)
      save_png(self.image_dir / f'reconstructions_{step:07d}.png', grid_r)

  def real_at_d_resolution(self):
    """The grid's real images as D sees them (2x2-pooled when E's resolution is twice D's)."""
    return image_views.d_view(self.real, self.config.model.resolution)
