"""E's learning-rate schedule: parsing and the multiplier at each step."""

import jax.numpy as jnp
import pytest

from bigbigan_jax import e_lr_schedule


def test_parse():
  assert e_lr_schedule.parse('') == ()
  assert e_lr_schedule.parse(' 6000:2, 10000:0.5 ') == ((6000, 2.0), (10000, 0.5))
  for bad in ('6000', '6000:2:1', 'x:2', '6000:fast', '0:2', '6000:2,6000:1', '6000:2,10:1',
              '6000:-1', '6000:0'):
    with pytest.raises(ValueError, match='optim.e_lr_schedule'):
      e_lr_schedule.parse(bad)


def test_multiplier_changes_at_each_step_for_ints_and_traced_steps():
  schedule = e_lr_schedule.parse('6000:2,10000:0.5')
  expected = {0: 10.0, 5999: 10.0, 6000: 2.0, 9999: 2.0, 10000: 0.5, 50000: 0.5}
  for step, mult in expected.items():
    assert float(e_lr_schedule.multiplier(10.0, schedule, step)) == mult
  steps = jnp.asarray(list(expected), jnp.int32)
  assert list(e_lr_schedule.multiplier(10.0, schedule, steps)) == list(expected.values())
  assert e_lr_schedule.multiplier(10.0, (), 123) == 10.0
