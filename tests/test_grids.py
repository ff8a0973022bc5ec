"""Tests for image grids."""

import warnings

import numpy as np
from PIL import Image

from bigbigan_jax.evaluation import grids


def test_to_uint8_end_points():
  np.testing.assert_array_equal(grids.to_uint8(np.array([-1.0, 0.0, 1.0, -3.0, 2.0])),
                                [0, 128, 255, 0, 255])


def test_to_uint8_draws_non_finite_values_without_a_warning():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    drawn = grids.to_uint8(np.array([np.nan, np.inf, -np.inf], np.float32))
  np.testing.assert_array_equal(drawn, [0, 255, 0])


def test_image_grid_layout():
  images = np.stack([np.full((2, 3, 3), v) for v in (-1.0, 1.0, 0.0)])
  grid = grids.image_grid(images, ncols=2)
  assert grid.shape == (4, 6, 3) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[:2, :3], 0)
  np.testing.assert_array_equal(grid[:2, 3:], 255)
  np.testing.assert_array_equal(grid[2:, :3], 128)
  np.testing.assert_array_equal(grid[2:, 3:], 0)  # Empty cell.


def test_image_grid_default_columns_and_grayscale():
  assert grids.image_grid(np.zeros((5, 4, 4, 1))).shape == (8, 12, 1)  # 2 rows x 3 columns.


def test_save_png_round_trip(tmp_path):
  for channels in (1, 3):
    grid = grids.image_grid(np.random.default_rng(0).uniform(-1, 1, (4, 5, 5, channels)))
    path = tmp_path / 'sub' / f'grid{channels}.png'
    grids.save_png(path, grid)
    loaded = np.asarray(Image.open(path))
    np.testing.assert_array_equal(loaded.reshape(grid.shape), grid)


def test_interpolation_grid():
  z0, z1 = np.zeros((2, 3)), np.array([[4.0, 4.0, 4.0], [-4.0, 0.0, 8.0]])
  latents = grids.interpolation_grid(z0, z1, num_steps=5)
  assert latents.shape == (10, 3)
  np.testing.assert_allclose(latents[:5, 0], [0, 1, 2, 3, 4])
  np.testing.assert_allclose(latents[5:, 2], [0, 2, 4, 6, 8])
  np.testing.assert_allclose(latents[9], z1[1])


def test_side_by_side_pairs_columns():
  values = np.array([-1.0, -0.5, 0.0])
  x = values[:, None, None, None] * np.ones((3, 2, 2, 1))
  recon = x + 0.2
  grid = grids.side_by_side(x, recon, ncols=2)
  assert grid.shape == (8, 4, 1)
  cells = grid[::2, ::2, 0]  # One pixel per 2x2 cell: [4 rows, 2 columns].
  expected = [[values[0], values[1]], [values[0] + 0.2, values[1] + 0.2],
              [values[2], -1.0], [values[2] + 0.2, -1.0]]
  np.testing.assert_array_equal(cells, grids.to_uint8(np.array(expected)))
