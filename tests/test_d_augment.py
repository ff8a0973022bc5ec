"""D's input augmentation: what each policy does to an image, its gradient, and its draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbigan_jax import d_augment

SIZE = 32


def test_parse():
  assert d_augment.parse('') == ()
  assert d_augment.parse(' translation, cutout ') == ('translation', 'cutout')
  with pytest.raises(ValueError, match="names 'color'"):
    d_augment.parse('translation,color')


def test_translation_moves_the_content_and_fills_with_zeros():
  x = np.full((3, SIZE, SIZE, 1), -1.0, np.float32)
  x[:, 10, 20, 0] = 1.0  # One bright pixel on a dark image.
  shift = jnp.array([[0, 0], [4, -4], [-3, 2]])
  out = np.asarray(d_augment.translate(jnp.asarray(x), shift))
  np.testing.assert_array_equal(out[0], x[0])
  for i, (dr, dc) in enumerate(np.asarray(shift)[1:], start=1):
    assert out[i, 10 + dr, 20 + dc, 0] == 1.0
    assert np.sum(out[i] == 1.0) == 1
  # Rows and columns shifted in from outside the image are zero, the rest keeps the -1s.
  assert np.all(out[1, :4] == 0.0) and np.all(out[1, :, -4:] == 0.0)
  assert np.sum(out[1] == -1.0) == (SIZE - 4) * (SIZE - 4) - 1


def test_cutout_zeroes_one_square_of_half_the_size():
  x = jnp.ones((2, SIZE, SIZE, 3))
  out = np.asarray(d_augment.cutout(x, jnp.array([[16, 16], [0, 31]])))
  half = SIZE // 4
  np.testing.assert_array_equal(out[0, 16 - half:16 + half, 16 - half:16 + half], 0.0)
  assert np.sum(out[0] == 0.0) == (SIZE // 2) ** 2 * 3
  # At a corner the square is clipped: rows 0..7 and columns 23..31.
  assert np.sum(out[1] == 0.0) == half * (half + 1) * 3
  assert np.all(out[1, :half, SIZE - half - 1:] == 0.0)


def test_the_gradient_flows_back_through_the_kept_pixels():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, SIZE, SIZE, 1))
  draws = d_augment.draw(jax.random.PRNGKey(1), 4, SIZE, d_augment.POLICIES)
  grad = jax.grad(lambda x: jnp.sum(d_augment.apply(x, draws)))(x)
  # Each pixel that lands in the output (not cut out, not shifted off) has gradient 1, others 0.
  landed = d_augment.apply(jnp.ones_like(x), draws) != 0
  assert np.asarray(grad).sum() == np.asarray(landed).sum()
  assert set(np.unique(np.asarray(grad))) == {0.0, 1.0}
  assert 0 < np.asarray(landed).mean() < 1


def test_draws_cover_their_range_and_differ_per_image():
  draws = d_augment.draw(jax.random.PRNGKey(2), 512, SIZE, d_augment.POLICIES)
  shift = np.asarray(draws['shift'])
  assert shift.min() == -SIZE // 8 and shift.max() == SIZE // 8
  centre = np.asarray(draws['cutout_centre'])
  assert centre.min() == 0 and centre.max() == SIZE - 1
  assert len({tuple(s) for s in shift}) > 50
  assert set(d_augment.draw(jax.random.PRNGKey(2), 8, SIZE, ('cutout',))) == {'cutout_centre'}
